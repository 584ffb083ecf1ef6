"""One process at a time on a data folder: ``serve`` and ``install-package`` hold its lock.

Two agents on one folder would each load the models, delete the other's half-received
uploads at start and rename the same model folders under each other; an offline install
beside a running agent would be reported installed while the agent keeps serving what it
loaded. So both take an exclusive lock on ``agent.lock`` in the folder (``flock`` on POSIX,
``msvcrt.locking`` on Windows) and refuse with a message that names the holder when it is
taken. The kernel drops the lock with the process, so a killed agent leaves nothing stale.

Commands that only write files the running agent re-reads (``pair``, ``unpair``, ``keys``,
``info``) do not take it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from device_agent.errors import AgentError, cannot_write, one_line

LOCK_FILE = "agent.lock"
log = logging.getLogger(__name__)


class DataDirBusyError(AgentError):
    """Another process holds the data folder (an agent serving from it, or an install)."""


class DataDirLock:
    """An exclusive, non-blocking lock on ``data_dir/agent.lock``.

    ``what`` is written into the file once held (with the pid), so a refused process can say
    who holds it: ``"serve"`` or ``"install-package"``.
    """

    def __init__(self, data_dir: Path, what: str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, url: str | None = None) -> None:
        """Take the lock, or raise DataDirBusyError naming its holder (AgentError when the
        folder cannot be written; a file system without locks is a warning)."""
        if self._fd is not None:
            return
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AgentError(
                cannot_write(self.path, exc, "check the --data-dir permissions")
            ) from None
        try:
            locked = _try_lock(fd)
            holder = {} if locked else _read_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            raise DataDirBusyError(self._busy_message(holder))
        self._fd = fd
        self.describe(url)

    def describe(self, url: str | None) -> None:
        """Record who holds the lock (and, once known, the URL it answers at)."""
        if self._fd is None:
            return
        record: dict[str, Any] = {"pid": os.getpid(), "command": self.what}
        if url:
            record["url"] = url
        data = (json.dumps(record) + "\n").encode()
        with contextlib.suppress(OSError):  # only a courtesy to the next process refused
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.ftruncate(self._fd, 0)
            os.write(self._fd, data)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _busy_message(self, holder: dict[str, Any]) -> str:
        pid = holder.get("pid")
        who = f" (pid {pid})" if isinstance(pid, int) else ""
        folder = self.data_dir
        if holder.get("command") == "install-package":
            return (
                f"outpost-agent install-package{who} is installing into {folder}; "
                "run this again when it has finished"
            )
        url = holder.get("url")
        at = f" at {url}" if isinstance(url, str) else ""
        if self.what == "install-package":
            return (
                f"an agent{who} is serving from {folder}{at}; deploy the package to it from "
                "the desktop (outpost deploy EXPORT --device ID), or stop the agent (a "
                "service: sudo systemctl stop outpost-agent, or systemctl --user stop "
                "outpost-agent), run this again and start it"
            )
        if self.what == "crashes":
            return (
                f"an agent{who} is serving from {folder}{at}; stop it (a service: sudo "
                "systemctl stop outpost-agent), run this again and start it"
            )
        return (
            f"another agent{who} is serving from {folder}{at}; stop it first, or give this "
            "one its own --data-dir"
        )


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    # Windows locks are mandatory: the byte locked lies past the holder record, which the
    # refused process still reads.
    _LOCKED_BYTE = 1 << 30

    def _try_lock(fd: int) -> bool:
        try:
            os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:  # a file system without locks (some network mounts)
            log.warning(
                "cannot lock %s in the data folder (%s); a second agent on it would not be "
                "refused: keep --data-dir on a local disk",
                LOCK_FILE,
                one_line(exc.strerror or exc),
            )
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
