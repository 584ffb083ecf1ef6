"""What the agent was doing when its process died, so a crash is not repeated at every start.

A runtime can take the whole process down while it loads a model (a segfault in a native
library, an abort on a model it does not like). Before the agent loads a model, at an install
or at its start, it writes what it is about to load to ``busy.json``; it removes the file once
the model has loaded or raised. ``outpost-agent serve`` points Python's :mod:`faulthandler` at
``crash.log`` in the same folder, so a fatal signal leaves its reason there.

At the next start a ``busy.json`` still there means the process died during that load:

* with new text in ``crash.log`` the runtime crashed: the version is remembered as one that
  crashes (``crashes.json``), so the agent starts on the previous version instead of dying
  again, and the same package sent again is refused with the crash's own words instead of
  being loaded again;
* without (SIGKILL, the OOM killer, a power cut) the load was only interrupted: nothing is
  remembered and it may be tried again.

A remembered crash holds while the runtimes' versions stay the same: after an upgrade of the
runtime the version is tried again.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from runtimes.fileio import atomic_write_text

log = logging.getLogger(__name__)

BUSY_FILE = "busy.json"
CRASH_LOG = "crash.log"
CRASHES_FILE = "crashes.json"
MAX_CRASHES = 32  # remembered crashes, newest kept
MAX_CRASH_LOG_BYTES = 1 << 20  # a longer log is cut at the start
# The distributions whose native code loads models: a crash is remembered for their versions.
RUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "openvino",
    "tensorrt",
    "ai-edge-litert",
    "tflite-runtime",
    "tensorflow",
    "coremltools",
    "torch",
)

_log_file: TextIO | None = None


def runtimes_fingerprint() -> str:
    """The installed runtimes' versions, as one string (``name==version`` joined by ``,``)."""
    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name}=={metadata.version(name)}")
    return ",".join(found)


def enable_crash_log(folder: Path) -> Path:
    """Have a fatal signal (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) write its reason and the
    threads' stacks to ``folder/crash.log`` (the process's own; call once, from ``serve``)."""
    global _log_file
    path = Path(folder) / CRASH_LOG
    with contextlib.suppress(OSError):  # cut, unless the last process may have died in a load
        if path.stat().st_size > MAX_CRASH_LOG_BYTES and not (path.parent / BUSY_FILE).exists():
            path.unlink()
    if _log_file is not None:
        _log_file.close()
    _log_file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
    faulthandler.enable(file=_log_file, all_threads=True)
    return path


class CrashGuard:
    """The busy record and the remembered crashes of one data folder."""

    def __init__(self, folder: Path, fingerprint: str | None = None) -> None:
        self.folder = Path(folder)
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = runtimes_fingerprint()
        return self._fingerprint

    # -- while loading ----------------------------------------------------------------

    @contextlib.contextmanager
    def loading(self, key: str, what: str) -> Iterator[None]:
        """Record that ``what`` (e.g. ``detector 3 (install)``), known by ``key``, is being
        loaded, for as long as the block runs."""
        busy = self.folder / BUSY_FILE
        try:
            log_size = (self.folder / CRASH_LOG).stat().st_size
        except OSError:
            log_size = 0
        record = {"key": key, "what": what, "crash_log_size": log_size, "at": time.time()}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(busy, json.dumps(record) + "\n")
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                busy.unlink()

    def crashed(self, key: str) -> str | None:
        """The reason ``key`` crashed the agent with these runtimes, or None."""
        entry = self._crashes().get(key)
        if entry is None or entry.get("runtimes") != self.fingerprint:
            return None
        return str(entry.get("reason") or "the process died")

    # -- at the start -----------------------------------------------------------------

    def settle(self) -> str | None:
        """Look at what the last process left (call once, before loading anything): the line
        to log when it died loading a model, else None."""
        busy = self.folder / BUSY_FILE
        try:
            record = json.loads(busy.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            record = None
        with contextlib.suppress(OSError):
            busy.unlink()
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            return None
        what = str(record.get("what") or record["key"])
        offset = record.get("crash_log_size")
        reason = self._crash_text(offset if isinstance(offset, int) else 0)
        if reason is None:
            return (
                f"the agent stopped while it loaded {what} (killed, out of memory or a power "
                "cut); it will be tried again"
            )
        crashes = self._crashes()
        crashes.pop(record["key"], None)
        crashes[record["key"]] = {
            "reason": reason,
            "what": what,
            "runtimes": self.fingerprint,
            "at": record.get("at"),
        }
        while len(crashes) > MAX_CRASHES:
            crashes.pop(next(iter(crashes)))
        atomic_write_text(self.folder / CRASHES_FILE, json.dumps(crashes, indent=2) + "\n")
        return f"the runtime crashed the agent while it loaded {what} ({reason})"

    def _crash_text(self, offset: int) -> str | None:
        """The first line faulthandler wrote past ``offset`` (``Fatal Python error: ...``)."""
        try:
            with open(self.folder / CRASH_LOG, "rb") as fh:
                fh.seek(offset if 0 <= offset <= os.fstat(fh.fileno()).st_size else 0)
                text = fh.read(4096).decode("utf-8", errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            line = line.strip()
            if line:
                return line[:200]
        return None

    def _crashes(self) -> dict[str, Any]:
        try:
            crashes = json.loads((self.folder / CRASHES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return crashes if isinstance(crashes, dict) else {}
