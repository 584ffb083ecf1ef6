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

A runtime can also crash on a frame, in an inference, long after the version passed its
self-test. ``serve`` marks each runtime call in ``inference.marks``, a small file mapped into
memory: which thread runs which version. Marking is a few stores into memory, no system call,
and the kernel keeps the pages when the process dies. At the next start a crash in a marked
thread (or, when the fault was in a runtime's own thread, while one version alone was running)
is counted against that version (by its package's sha256, and the ``--provider`` its install
asked for); a second such crash within an hour holds it like a crash in its load: the agent starts on the previous version instead of dying at every frame, and the
models beside it keep serving. One crash alone does not hold it: a version that served for
weeks is not dropped for one fault.

A remembered crash holds while the runtimes' versions stay the same: after an upgrade of the
runtime the version is tried again.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import mmap
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from runtimes.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

BUSY_FILE = "busy.json"
CRASH_LOG = "crash.log"
CRASHES_FILE = "crashes.json"
MAX_CRASHES = 32  # remembered crashes, newest kept
MAX_CRASH_LOG_BYTES = 1 << 20  # a longer log is cut at the start
MARKS_FILE = "inference.marks"
# Crashes in inferences of one version that hold it (with these runtimes), and how close
# together they must come.
INFERENCE_CRASHES_HELD = 2
INFERENCE_CRASH_WINDOW_S = 3600.0
KEPT_CRASH_TIMES = 8
# inference.marks: a header (magic, the crash log's size at the start, the pid, the runtimes'
# fingerprint), then one slot per thread that runs inferences: running (0/1), the thread's
# ident, when the call began, and the version's key and name.
MARKS_MAGIC = b"OUTPOSTIM1"
MARKS_HEADER = struct.Struct("<10s6xQQH")
MARKS_HEADER_BYTES = 512
MARKS_SLOT = struct.Struct("<B7xQdHH")
MARKS_SLOT_BYTES = 256
MARKS_KEY_BYTES = 128
MARKS_WHAT_BYTES = MARKS_SLOT_BYTES - MARKS_SLOT.size - MARKS_KEY_BYTES
MARKS_SLOTS = 64  # threads beyond these run unmarked
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


class InferenceMarks:
    """Which version is in a runtime call, on which thread, in ``inference.marks`` mapped into
    memory (see the module's notes). Made new at each start of ``serve``.

    One slot per version: a version's calls run one at a time (under its lock), so its slot
    says which thread runs it now. A slot whose version is not in a call is given to another
    once all are taken, so the slots bound the versions in calls at once, not the threads."""

    def __init__(self, path: Path, crash_log_size: int, fingerprint: str) -> None:
        size = MARKS_HEADER_BYTES + MARKS_SLOTS * MARKS_SLOT_BYTES
        runtimes = fingerprint.encode("utf-8")[: MARKS_HEADER_BYTES - MARKS_HEADER.size]
        header = MARKS_HEADER.pack(MARKS_MAGIC, crash_log_size, os.getpid(), len(runtimes))
        blank = bytearray(size)
        blank[: MARKS_HEADER.size + len(runtimes)] = header + runtimes
        atomic_write_bytes(path, bytes(blank), sync=False)
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        # key → (slot offset, key bytes, name bytes), the longest-held slot first
        self._slots: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def _claim(self, key: str, what: str) -> tuple[int, int, int] | None:
        """``key``'s slot (with the lengths of its names), written on first use; None when
        every slot's version is in a call. Called with the lock held."""
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        if len(self._slots) < MARKS_SLOTS:
            offset = MARKS_HEADER_BYTES + len(self._slots) * MARKS_SLOT_BYTES
        else:
            idle = next((k for k, (o, _, _) in self._slots.items() if self._map[o] == 0), None)
            if idle is None:
                return None
            offset = self._slots.pop(idle)[0]
        raw_key = key.encode("utf-8")[:MARKS_KEY_BYTES]
        raw_what = what.encode("utf-8")[:MARKS_WHAT_BYTES]
        names = offset + MARKS_SLOT.size
        self._map[names : names + MARKS_KEY_BYTES + MARKS_WHAT_BYTES] = raw_key.ljust(
            MARKS_KEY_BYTES, b"\0"
        ) + raw_what.ljust(MARKS_WHAT_BYTES, b"\0")
        slot = self._slots[key] = (offset, len(raw_key), len(raw_what))
        return slot

    @contextlib.contextmanager
    def running(self, key: str, what: str) -> Iterator[None]:
        """Mark ``what`` (known by ``key``) as in a runtime call on this thread."""
        with self._lock:
            slot = self._claim(key, what)
            if slot is not None:
                offset, key_len, what_len = slot
                # one store of the flag, the thread, the time and the names' lengths
                MARKS_SLOT.pack_into(
                    self._map, offset, 1, threading.get_ident(), time.time(), key_len, what_len
                )
        if slot is None:
            yield
            return
        try:
            yield
        finally:
            self._map[offset] = 0


# what inference.marks holds: the crash log's size at the start, the runtimes, the calls in flight
Marks = tuple[int, str, list[dict[str, Any]]]


def _read_marks(path: Path) -> Marks | None:
    """What a process left in its ``inference.marks``: the crash log's size at its start, its
    runtimes and the runtime calls it was in; None without a (readable) file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < MARKS_HEADER_BYTES or not data.startswith(MARKS_MAGIC):
        return None
    _, log_size, _, runtimes_len = MARKS_HEADER.unpack_from(data)
    runtimes = data[MARKS_HEADER.size : MARKS_HEADER.size + runtimes_len].decode("utf-8", "replace")
    running = []
    for offset in range(MARKS_HEADER_BYTES, len(data) - MARKS_SLOT_BYTES + 1, MARKS_SLOT_BYTES):
        flag, thread, at, key_len, what_len = MARKS_SLOT.unpack_from(data, offset)
        if flag != 1:
            continue
        start = offset + MARKS_SLOT.size
        key = data[start : start + min(key_len, MARKS_KEY_BYTES)].decode("utf-8", "replace")
        start += MARKS_KEY_BYTES
        what = data[start : start + min(what_len, MARKS_WHAT_BYTES)].decode("utf-8", "replace")
        if key:
            running.append({"key": key, "what": what or key, "thread": thread, "at": at})
    return log_size, runtimes, running


def crash_line(crash: dict[str, Any]) -> str:
    """One remembered crash (from :meth:`CrashGuard.remembered`) as a line: ``2026-11-29
    03:40:12 UTC  shapes 2 (install): Fatal Python error: Segmentation fault (held)``."""
    at = crash.get("at")
    when = "?"
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        with contextlib.suppress(OverflowError, ValueError, OSError):  # NaN, out of range
            when = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    what, reason, state = (crash.get(k) or "?" for k in ("what", "reason", "state"))
    return f"{when}  {what}: {reason} ({state})"


def _first_line(text: str) -> str | None:
    """The first line of a crash's text (``Fatal Python error: ...``), cut at 200 characters."""
    return next((line.strip()[:200] for line in text.splitlines() if line.strip()), None)


def _crash_times(entry: dict[str, Any]) -> list[float]:
    """The times an inference crash entry lists (none from a damaged file)."""
    times = entry.get("times")
    if not isinstance(times, list):
        return []
    return [t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)]


def _inference_held(entry: dict[str, Any]) -> bool:
    """Whether an inference crash entry has :data:`INFERENCE_CRASHES_HELD` crashes within
    :data:`INFERENCE_CRASH_WINDOW_S` of each other."""
    times = sorted(_crash_times(entry))
    need = INFERENCE_CRASHES_HELD - 1
    return any(
        times[i] - times[i - need] <= INFERENCE_CRASH_WINDOW_S for i in range(need, len(times))
    )


class CrashGuard:
    """The busy record and the remembered crashes of one data folder."""

    def __init__(self, folder: Path, fingerprint: str | None = None) -> None:
        self.folder = Path(folder)
        self._fingerprint = fingerprint
        self._settled: dict[str, Any] = {}  # what settle() found, held even if not written
        self._marks: InferenceMarks | None = None

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

    # -- while serving ---------------------------------------------------------------

    def watch_inferences(self) -> None:
        """Start marking inferences in ``inference.marks`` (``serve``, after :meth:`settle`
        read what the last process left there)."""
        try:
            log_size = (self.folder / CRASH_LOG).stat().st_size
        except OSError:
            log_size = 0
        try:
            self._marks = InferenceMarks(self.folder / MARKS_FILE, log_size, self.fingerprint)
        except (OSError, ValueError) as exc:  # inferences then run unmarked
            log.warning("cannot mark inferences in %s: %s", self.folder / MARKS_FILE, exc)

    def running(self, key: str, what: str) -> contextlib.AbstractContextManager[None]:
        """Mark one runtime call of ``what`` (known by ``key``) for as long as the block runs
        (nothing before :meth:`watch_inferences`)."""
        marks = self._marks
        return contextlib.nullcontext() if marks is None or not key else marks.running(key, what)

    def remembered(self) -> list[dict[str, Any]]:
        """The crashes remembered, oldest first: ``key``, ``what``, ``reason``, ``runtimes``
        (the versions they crashed with), ``at`` (seconds since the epoch), ``held``
        (whether they hold with the runtimes installed now), ``kind`` (``load`` or
        ``inference``), ``count`` (the crashes remembered: an inference crash holds from
        the second within an hour) and ``state`` (held or not, and why, in words)."""
        out = []
        for key, entry in self._crashes().items():
            if not isinstance(entry, dict):
                continue
            crash = {
                "key": key,
                "what": entry.get("what"),
                "reason": entry.get("reason"),
                "runtimes": entry.get("runtimes"),
                "at": entry.get("at"),
                "held": self._holds(self._settled.get(key) or entry) is not None,
                "kind": entry.get("kind", "load"),
                "count": len(_crash_times(entry)) or 1,
            }
            crash["state"] = self._state(crash)
            out.append(crash)
        return out

    def _state(self, crash: dict[str, Any]) -> str:
        """Whether a remembered crash holds its version, and why not."""
        count = crash["count"]
        if crash["held"]:
            return "held" if crash["kind"] != "inference" else f"held: {count} crashes"
        if crash["runtimes"] != self.fingerprint:
            return "not held: the runtimes changed since"
        return (
            f"not held: {count} crash{'es' if count != 1 else ''} in inferences; "
            f"{INFERENCE_CRASHES_HELD} within an hour hold it"
        )

    def forget(self) -> int:
        """Forget every remembered crash (with the data folder's lock held: a running agent
        holds what it found at its start); how many there were."""
        count = len(self._crashes())
        with contextlib.suppress(FileNotFoundError):
            (self.folder / CRASHES_FILE).unlink()
        self._settled.clear()
        return count

    def crashed(self, key: str) -> str | None:
        """How ``key`` crashed the agent with these runtimes, when that holds it (e.g. ``when
        it was last loaded (Fatal Python error: Segmentation fault)``), else None."""
        return self._holds(self._settled.get(key) or self._crashes().get(key))

    def _holds(self, entry: object) -> str | None:
        """:meth:`crashed` for one remembered entry."""
        if not isinstance(entry, dict) or entry.get("runtimes") != self.fingerprint:
            return None
        reason = str(entry.get("reason") or "the process died")
        if entry.get("kind") != "inference":
            return f"when it was last loaded ({reason})"
        if not _inference_held(entry):
            return None
        return f"in {INFERENCE_CRASHES_HELD} inferences within an hour ({reason})"

    # -- at the start -----------------------------------------------------------------

    def settle(self) -> str | None:
        """Look at what the last process left (call once, before loading anything): the line
        to log when it died loading a model or in a runtime call, else None. The marks are
        removed once read, or kept for the next start when the crash cannot be written down."""
        line, keep_marks = self._settle(_read_marks(self.folder / MARKS_FILE))
        if not keep_marks:
            with contextlib.suppress(OSError):
                (self.folder / MARKS_FILE).unlink()
        return line

    def _settle(self, marks: Marks | None) -> tuple[str | None, bool]:
        """:meth:`settle`'s line, and whether to keep the marks."""
        busy = self.folder / BUSY_FILE
        try:
            record = json.loads(busy.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            settled = self._settle_inference(marks)  # the log is read before it may be cut
            self._forget(busy)
            return settled
        what = str(record.get("what") or record["key"])
        offset = record.get("crash_log_size")
        text = self._crash_text(offset if isinstance(offset, int) else 0)
        reason = _first_line(text)
        if reason is None:
            self._forget(busy)
            return (
                f"the agent stopped while it loaded {what} (killed, out of memory or a power "
                "cut); it will be tried again"
            ), False
        current = _CURRENT_THREAD.search(text)
        if current is not None and int(current.group(1), 16) != record.get("thread"):
            line, keep_marks = self._settle_inference(marks)
            self._forget(busy)
            return line or (
                f"the agent crashed ({reason}) in another thread than the one loading {what}; "
                "the load will be tried again"
            ), keep_marks
        in_calls = sorted({mark["what"] for mark in marks[2]}) if marks is not None else []
        if current is None and in_calls:  # a runtime's own thread, in a load and in calls
            self._forget(busy)
            return (
                f"the agent crashed ({reason}) in a runtime's own thread while it loaded {what} "
                f"and ran {', '.join(in_calls)}; which one did it is not known, so neither is "
                "held"
            ), False
        entry = {
            "reason": reason,
            "what": what,
            # the runtimes it crashed with, not those of this start (an upgrade in between
            # is what may mend it)
            "runtimes": record.get("runtimes", self.fingerprint),
            "at": record.get("at"),
        }
        if self._remember(record["key"], entry):  # else the record is left for next time
            self._forget(busy)
        return f"the runtime crashed the agent while it loaded {what} ({reason})", False

    def _settle_inference(self, marks: Marks | None) -> tuple[str | None, bool]:
        """:meth:`settle` for the runtime calls the last process was in: the line to log when
        one of them crashed it, else None; and whether to keep the marks (the crash could not
        be written down)."""
        culprit = self._culprit(marks)
        if culprit is None:
            return None, False
        mark, reason, runtimes = culprit
        what = f"{mark['what']} (inference)"
        before = self._settled.get(mark["key"]) or self._crashes().get(mark["key"])
        times = [mark["at"]]
        if (
            isinstance(before, dict)
            and before.get("kind") == "inference"
            and before.get("runtimes") == runtimes
        ):
            times = [*_crash_times(before), mark["at"]][-KEPT_CRASH_TIMES:]
        entry = {
            "reason": reason,
            "what": what,
            "runtimes": runtimes,
            "at": mark["at"],
            "kind": "inference",
            "times": times,
        }
        written = self._remember(mark["key"], entry)
        if _inference_held(entry):
            return (
                f"the runtime crashed the agent again while it ran {what} ({reason}): it is "
                "not loaded again with these runtimes"
            ), not written
        return (
            f"the runtime crashed the agent while it ran {what} ({reason}); a second crash "
            "within an hour stops it from being loaded"
        ), not written

    def _culprit(self, marks: Marks | None) -> tuple[dict[str, Any], str, str] | None:
        """The runtime call that took the last process down (its mark), the fault's first
        line and the runtimes it ran with; None when no call did (or which is not known)."""
        if marks is None or not marks[2]:
            return None
        log_size, runtimes, running = marks
        text = self._crash_text(log_size)
        reason = _first_line(text)
        if reason is None:
            return None  # killed, out of memory or a power cut: not the version's doing
        current = _CURRENT_THREAD.search(text)
        if current is not None:
            culprits = [mark for mark in running if mark["thread"] == int(current.group(1), 16)]
        else:  # a runtime's own thread: known only when one version alone was in a call
            culprits = running if len({mark["key"] for mark in running}) == 1 else []
        return (culprits[0], reason, runtimes) if culprits else None

    def _remember(self, key: str, entry: dict[str, Any]) -> bool:
        """Remember ``entry`` as ``key``'s crash (in memory at once, in ``crashes.json`` when
        the disk allows: whether it did)."""
        crashes = self._crashes()
        crashes.pop(key, None)
        crashes[key] = self._settled[key] = entry
        while len(crashes) > MAX_CRASHES:
            crashes.pop(next(iter(crashes)))
        try:
            atomic_write_text(self.folder / CRASHES_FILE, json.dumps(crashes, indent=2) + "\n")
        except OSError as exc:
            log.warning("cannot remember the crash in %s: %s", CRASHES_FILE, exc)
            return False
        return True

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
