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
import re
import threading
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
# faulthandler's line for the thread that took the signal (absent for a thread Python does
# not know, e.g. a runtime's own worker thread)
_CURRENT_THREAD = re.compile(r"^Current thread (0x[0-9a-fA-F]+)", re.MULTILINE)


def runtimes_fingerprint() -> str:
    """The installed runtimes' versions, as one string (``name==version`` joined by ``,``)."""
    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name}=={metadata.version(name)}")
    return ",".join(found)


def enable_crash_log(folder: Path) -> Path:
    """Have a fatal signal (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) write its reason and the
    threads' stacks to ``folder/crash.log`` (the process's own; call once, from ``serve``).
    The log is appended to; :meth:`CrashGuard.settle` cuts it when it grows long."""
    global _log_file
    path = Path(folder) / CRASH_LOG
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
        self._settled: dict[str, Any] = {}  # what settle() found, held even if not written

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
        record = {
            "key": key,
            "what": what,
            "crash_log_size": log_size,
            "thread": threading.get_ident(),
            "runtimes": self.fingerprint,
            "at": time.time(),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # not fsynced: a crashed process's writes stay in the page cache, and after a
            # power cut a lost record is what an interrupted load gives anyway
            atomic_write_text(busy, json.dumps(record) + "\n", sync=False)
            written = True
        except OSError as exc:  # a full or read-only disk must not stop the load itself
            log.warning("cannot record the load of %s in %s: %s", what, busy, exc)
            written = False  # and a record left from before stays for the next start
        try:
            yield
        finally:
            if written:
                with contextlib.suppress(OSError):
                    busy.unlink()

    def remembered(self) -> list[dict[str, Any]]:
        """The crashes remembered, oldest first: ``key``, ``what``, ``reason``, ``runtimes``
        (the versions they crashed with), ``at`` (seconds since the epoch) and ``held``
        (whether they still hold with the runtimes installed now)."""
        return [
            {
                "key": key,
                "what": entry.get("what"),
                "reason": entry.get("reason"),
                "runtimes": entry.get("runtimes"),
                "at": entry.get("at"),
                "held": entry.get("runtimes") == self.fingerprint,
            }
            for key, entry in self._crashes().items()
            if isinstance(entry, dict)
        ]

    def forget(self) -> int:
        """Forget every remembered crash (with the data folder's lock held: a running agent
        holds what it found at its start); how many there were."""
        count = len(self._crashes())
        with contextlib.suppress(FileNotFoundError):
            (self.folder / CRASHES_FILE).unlink()
        self._settled.clear()
        return count

    def crashed(self, key: str) -> str | None:
        """The reason ``key`` crashed the agent with these runtimes, or None."""
        entry = self._settled.get(key) or self._crashes().get(key)
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
            self._forget(busy)
            return None
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            self._forget(busy)
            return None
        what = str(record.get("what") or record["key"])
        offset = record.get("crash_log_size")
        text = self._crash_text(offset if isinstance(offset, int) else 0)
        reason = next((line.strip()[:200] for line in text.splitlines() if line.strip()), None)
        if reason is None:
            self._forget(busy)
            return (
                f"the agent stopped while it loaded {what} (killed, out of memory or a power "
                "cut); it will be tried again"
            )
        current = _CURRENT_THREAD.search(text)
        if current is not None and int(current.group(1), 16) != record.get("thread"):
            self._forget(busy)
            return (
                f"the agent crashed ({reason}) in another thread than the one loading {what} "
                "(an inference?); the load will be tried again"
            )
        crashes = self._crashes()
        crashes.pop(record["key"], None)
        crashes[record["key"]] = self._settled[record["key"]] = {
            "reason": reason,
            "what": what,
            # the runtimes it crashed with, not those of this start (an upgrade in between
            # is what may mend it)
            "runtimes": record.get("runtimes", self.fingerprint),
            "at": record.get("at"),
        }
        while len(crashes) > MAX_CRASHES:
            crashes.pop(next(iter(crashes)))
        try:  # remembered before the record goes: a failure here leaves both for next time
            atomic_write_text(self.folder / CRASHES_FILE, json.dumps(crashes, indent=2) + "\n")
        except OSError as exc:
            log.warning("cannot remember the crash in %s: %s", CRASHES_FILE, exc)
        else:
            self._forget(busy)
        return f"the runtime crashed the agent while it loaded {what} ({reason})"

    def _forget(self, busy: Path) -> None:
        """Remove the busy record, and cut ``crash.log`` once it is long (it was read)."""
        with contextlib.suppress(OSError):
            busy.unlink()
        path = self.folder / CRASH_LOG
        with contextlib.suppress(OSError):
            if path.stat().st_size > MAX_CRASH_LOG_BYTES:
                os.truncate(path, 0)  # faulthandler appends: it goes on at the new end

    def _crash_text(self, offset: int) -> str:
        """What faulthandler wrote past ``offset`` (``Fatal Python error: ...``, then the
        threads' stacks); empty when nothing was."""
        try:
            with open(self.folder / CRASH_LOG, "rb") as fh:
                fh.seek(offset if 0 <= offset <= os.fstat(fh.fileno()).st_size else 0)
                return fh.read(16384).decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _crashes(self) -> dict[str, Any]:
        try:
            crashes = json.loads((self.folder / CRASHES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return crashes if isinstance(crashes, dict) else {}
