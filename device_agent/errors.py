"""Typed errors of the agent and of its client. Each message is one line that says what to do."""

from __future__ import annotations

import errno
from typing import Any

from runtimes.errors import OutpostError

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# What the device's storage did, and what to do, for the failures that are the storage's own
_FREE_SPACE = "free some space (or roll back and remove old models)"
_STORAGE_FAILURES = {
    errno.ENOSPC: ("ran out of disk space", _FREE_SPACE),
    errno.EDQUOT: ("ran out of disk quota", _FREE_SPACE),
    errno.EROFS: (
        "found its storage read-only",
        "check the disk (a failing SD card or disk is remounted read-only), restart the agent",
    ),
    errno.EIO: ("got an I/O error from its storage", "check the disk"),
}


def storage_failure(exc: BaseException) -> tuple[str, str] | None:
    """``(what happened, what to do)`` when ``exc`` is a failure of the storage itself (full,
    read-only, an I/O error), else None."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    return _STORAGE_FAILURES.get(exc.errno)


def cannot_write(path: object, exc: OSError, advice: str) -> str:
    """The one-line message for a write to ``path`` that failed: what to do about the storage
    when it failed (full, read-only, an I/O error), else ``advice`` (permissions, the user)."""
    failure = storage_failure(exc)
    return (
        f"cannot write {path}: {one_line(exc.strerror or exc)}; {failure[1] if failure else advice}"
    )


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is a whole number in ASCII digits (``str.isdigit`` also takes "²" and
    other digits ``int`` refuses; headers arrive as Latin-1, which has some)."""
    return text.isascii() and text.isdigit()


def one_line(text: object, limit: int = 300) -> str:
    """Collapse a (possibly multi-line, third-party) message to one bounded line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class AgentError(OutpostError):
    """Base of the errors the agent reports."""


class IdentityError(AgentError):
    """The agent's identity file cannot be read or written."""


class InstallError(AgentError):
    """A verified package could not be installed (it does not load, or the disk refused it)."""


class StorageFullError(InstallError):
    """An install, activation or removal the device's storage refused: full, read-only or an
    I/O error (HTTP 507)."""


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def storage_message(exc: OSError, folder: object, free: int | None, dropped: str = "") -> str:
    """``the device ran out of disk space in DIR (N MiB free now)[dropped]; what to do, and
    retry``: what the storage did, for a write it refused (see :func:`storage_failure`)."""
    what, todo = storage_failure(exc) or ("could not write to its storage", "check the disk")
    room = f"{mib(free)} free now" if free is not None else "free space unknown"
    return f"the device {what} in {folder} ({room}){dropped}; {todo}, and retry"


def store_write_failed(action: str, exc: OSError, folder: object, free: int | None) -> InstallError:
    """The error for a write to the model store that failed: StorageFullError (507) with what
    to do when the storage itself failed, else InstallError naming the data folder."""
    if storage_failure(exc) is None:
        return InstallError(f"cannot {action}: {one_line(exc)}; check the data folder {folder}")
    return StorageFullError(f"cannot {action}: {storage_message(exc, folder, free)}")


class NoModelError(AgentError):
    """Inference was asked of an agent that has no model installed."""


class ModelNotFoundError(AgentError):
    """The requested model is not installed on this agent."""


class AmbiguousModelError(AgentError):
    """Several models are installed and the request did not name one."""


class RollbackError(AgentError):
    """There is no previous version to roll back to."""


class AgentUnreachableError(OutpostError):
    """The client could not talk to the agent at all (refused, timed out, bad address)."""


class AgentRejectedError(OutpostError):
    """The agent answered with an error; ``message`` is the agent's own one-line reason and
    ``fields`` the other fields of its answer (e.g. ``offset``)."""

    def __init__(self, status: int, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(f"agent refused the request (HTTP {status}): {message}")
        self.status = status
        self.message = message
        self.fields = fields or {}


class AgentAnswerError(OutpostError):
    """The answer is not one an agent gives (larger than any of its answers): another program
    may be listening at the address."""


class AdvertiseError(AgentError):
    """The mDNS advertisement could not be started."""


class DiscoveryError(OutpostError):
    """Browsing the LAN for agents could not start (no usable interface, port 5353 refused)."""
