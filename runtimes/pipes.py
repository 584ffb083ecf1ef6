"""Command-line output into a pipe whose reader went away (``outpost devices list | head -1``)."""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell's own tools end with there


def stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if not hasattr(select, "poll"):  # Windows: a broken pipe there can only be stdout's
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def quiet_on_closed_pipe(command: Callable[[], int]) -> int:
    """Run ``command`` (and flush what it printed); when the reader of standard output went
    away, end quietly with :data:`SIGPIPE_EXIT` instead of a traceback. A broken pipe of
    anything else (a socket) is raised as it was."""
    try:
        code = command()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not stdout_gone():
            raise
        # Python flushes stdout again at exit, which would raise once more: point it at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_EXIT
