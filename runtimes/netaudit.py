"""A network audit: an audit hook that records (and refuses) connections off this machine.

Enabled in any Outpost process by ``OUTPOST_NETWORK_AUDIT=/path/to/log``; each attempt to
resolve or connect to a non-local address appends one line to the log and raises
``ConnectionRefusedError``. Tests use it to prove a code path is offline.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from typing import Any

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}
_installed = False


def _is_local(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in _LOCAL_HOSTS:
        return True
    if isinstance(host, str):
        return host.startswith("127.") or host.endswith(".localhost") or host.startswith("/")
    return False


def install(log_path: str) -> None:
    """Install the hook once per process."""
    global _installed
    if _installed:
        return
    _installed = True

    def hook(event: str, args: tuple[Any, ...]) -> None:
        host = None
        if event == "socket.getaddrinfo":
            host = args[0]
        elif event == "socket.connect":
            sock, address = args[0], args[1]
            if getattr(sock, "family", None) == socket.AF_UNIX:
                return
            host = address[0] if isinstance(address, tuple) else address
        else:
            return
        if _is_local(host):
            return
        stack = "".join(traceback.format_stack(limit=8)).replace("\n", " | ")
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {event} {host!r} :: {stack}\n")
        raise ConnectionRefusedError(f"network audit: blocked {event} to {host!r}")

    sys.addaudithook(hook)


def install_from_env() -> None:
    path = os.environ.get("OUTPOST_NETWORK_AUDIT")
    if path:
        install(path)
