"""A helper process that reads, checks, hashes and stages an import's images while the
importing process parses the annotations, then stores the blobs while it builds the rows.

An import's two big costs are independent: parsing the annotation file into records (Python
work that holds the GIL) and reading every image once (open, read, check the PNG chunks or
JPEG segments, hash, write the blob's temp file). Threads cannot overlap them (the file work
would wait for the GIL the parser holds), so a second process does the file work.

A reader calls :func:`desktop_app.core.dataset_records.announce_images` as soon as it knows
the image files (a COCO file's ``images`` list, a YOLO folder's listing); inside
:func:`desktop_app.core.dataset_records.prefetching` that hands them to :class:`ImagePrefetch`,
which starts ``python -m desktop_app.core.image_prefetch`` once (for
:data:`PREFETCH_MIN_IMAGES` images or more, on a machine with two cores or more; a reader
about to parse a large annotation file starts it early with
:func:`desktop_app.core.dataset_records.expect_images`).

Requests go to the helper's stdin as NUL-terminated records: a JSON header line first, then
``pPATH`` (an image to read), ``lN`` (the importer reads images N and later itself: skip
runs not started), ``cTEMP<TAB>SHA256`` ... ``s`` (store these staged blobs). The helper
answers on stdout, one line each: ``+N SHA256 SIZE WIDTH HEIGHT`` when image N is a whole
PNG or JPEG within the pixel limit (its content then lies in the blob store under a temp name
only this import uses) or ``-N`` for anything else; for a store request ``M FOLDER`` per
shard folder it made, ``! ERRNO MESSAGE`` on a failure, then ``R FLAGS`` (``1`` stored, ``0``
found stored already, ``e`` failed, one per blob).

:func:`inspect_images` takes each answer and adopts the temp file into the import's
:class:`desktop_app.core.blobs.BlobBatch`; an image answered ``-`` (missing, unreadable,
damaged, a link, another format, too large) or never answered (the helper failed) is read in
the importing process as before, which names the problem. So every message, every check and
every decision stays with the importer, and a helper that fails only makes the import slower.
:meth:`desktop_app.core.blobs.BlobBatch.start_commit` hands the sync and the renames to the
helper (:meth:`ImagePrefetch.rename`) and finishes them itself if the helper is gone.

The helper reads only regular files that are not links and whose folder resolves inside the
dataset folder (the importer checks each path again), writes only temp files named with this
import's prefix in the store's folder and the blobs it is asked to store, and removes its temp
files itself when the importer goes away; :meth:`ImagePrefetch.close` removes every one the
import did not adopt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from desktop_app.core.image_check import ImageStructureError, check_structure
from desktop_app.core.pacing import Pace, paced_map
from runtimes.fileio import fsync_dir, fsync_file, read_open_file, syncfs

if TYPE_CHECKING:
    from desktop_app.core.blobs import BlobBatch, RenameOutcome
    from desktop_app.core.dataset_records import SourceImage

_R = TypeVar("_R")

PREFETCH_MIN_IMAGES = 1000  # fewer: the helper's start costs more than it saves
# An annotation file this large describes about PREFETCH_MIN_IMAGES images or more: the
# helper is started before it is parsed, so that it is ready when the image list is known.
PREFETCH_EARLY_BYTES = 1 << 20
MODULE = "desktop_app.core.image_prefetch"
RUN = 64  # images per run in the helper (the unit it hands to its threads)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
# rename and stat relative to a folder's descriptor (POSIX; not Windows)
_DIR_FDS = hasattr(os, "O_DIRECTORY") and {os.rename, os.stat} <= os.supports_dir_fd
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

ImageFacts = tuple[str, int, int, int]  # sha256, size in bytes, width, height


class ImagePrefetch:
    """The importer's side of the helper process (see the module docstring).

    Args:
        batch: The import's blob batch; adopted images become its staged blobs.
        min_images: Start the helper for this many announced images or more (default
            :data:`PREFETCH_MIN_IMAGES`).
        cpus: The machine's CPU count (default ``os.cpu_count()``); one CPU: no helper.
    """

    def __init__(
        self,
        batch: BlobBatch,
        *,
        min_images: int | None = None,
        cpus: int | None = None,
    ) -> None:
        self.batch = batch
        self.min_images = PREFETCH_MIN_IMAGES if min_images is None else min_images
        self.cpus = cpus if cpus is not None else os.cpu_count() or 1
        self.store = os.fspath(batch.store.root)
        self.prefix = batch.new_temp_prefix()
        self._temp_base = os.path.join(self.store, self.prefix)  # + the image's number
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._root: str | None = None
        self._index: dict[str, int] = {}  # path → its number in the helper's list
        self._paths: list[str] = []  # by number
        self._answers: dict[int, bytes] = {}
        self._answered_all = False
        self._taken: set[int] = set()
        self._cond = threading.Condition()
        self._finished = False
        self._closed = False
        self._renaming = False
        self._renamed: RenameOutcome | None = None

    @property
    def running(self) -> bool:
        """True once the helper was started (it may have finished since)."""
        return self._proc is not None

    def expect(self, root: Path, annotation_bytes: int) -> None:
        """A reader is about to parse ``annotation_bytes`` of annotations for images of the
        dataset folder ``root``: from :data:`PREFETCH_EARLY_BYTES` on, start the helper now
        (its start takes as long as parsing a few MB), so that it reads the images as soon as
        they are announced, however many they turn out to be."""
        if (
            self._proc is None
            and not (self._closed or self._finished)
            and self.cpus >= 2
            and annotation_bytes >= PREFETCH_EARLY_BYTES
        ):
            self._start(os.fspath(root))

    def announce(self, root: Path, paths: Iterable[Path]) -> None:
        """Hand image files of the dataset folder ``root`` to the helper (started on first use)."""
        if self._closed or self._finished:
            return
        names = [os.fspath(p) for p in paths]
        if self._proc is None:
            if len(names) < self.min_images or self.cpus < 2:
                return
            if not self._start(os.fspath(root)):
                return
        elif os.fspath(root) != self._root:
            return  # one dataset folder per helper: these are read by the importer
        data = bytearray()
        for name in names:
            if "\0" in name or name in self._index:
                continue
            self._index[name] = len(self._index)
            self._paths.append(name)
            data += b"p" + os.fsencode(name) + b"\0"
        self._send(bytes(data))

    def opened(self) -> frozenset[str]:
        """The paths the helper has staged so far: each one it opened as a regular file, not
        following a link, in a folder that resolves inside the dataset folder."""
        with self._cond:
            numbers = [n for n, answer in self._answers.items() if answer[:1] == b"+"]
        return frozenset(self._paths[n] for n in numbers)

    def finish(self) -> None:
        """No more images will be announced."""
        self._finished = True

    def rename(self, moves: list[tuple[str, str]]) -> Callable[[], RenameOutcome | None] | None:
        """Have the helper store staged blobs: sync the store, rename each ``(temp file
        relative to the store, sha256)`` to its blob name (or drop the temp file when that
        blob exists), sync again (see :meth:`desktop_app.core.blobs.BlobBatch.start_commit`).

        Returns None when the helper is not running; else the call that waits for its
        outcome (None when the helper died before it answered).
        """
        if self._proc is None or self._closed or self._renaming:
            return None
        with self._cond:
            if self._answered_all:
                return None
        self._renaming = True
        data = bytearray()
        for rel, sha in moves:
            data += b"c" + os.fsencode(rel) + b"\t" + sha.encode("ascii") + b"\0"
        self._send(bytes(data) + b"s\0")
        self._send(None)  # the last request: the helper exits once it has answered it

        def outcome() -> RenameOutcome | None:
            with self._cond:
                while self._renamed is None and not self._answered_all:
                    self._cond.wait()
                return self._renamed

        return outcome

    def results(
        self, sources: Sequence[SourceImage], own: Callable[[SourceImage], _R]
    ) -> Iterator[_R | ImageFacts]:
        """For each of ``sources`` in order, the helper's facts (its temp file adopted) or
        ``own(source)``: what the importer finds reading the image itself.

        While the next image's answer is not in yet, this thread takes runs of images from
        the end of the helper's list (the helper skips each run it has not started), so both
        processes work until the last image.
        """
        number = [self._index.get(os.fspath(src.path)) for src in sources]
        # the sources the helper may answer, by their number in its list
        queue_order = sorted((n, j) for j, n in enumerate(number) if n is not None)
        place = {j: k for k, (_, j) in enumerate(queue_order)}
        end = len(queue_order)  # queue_order[end:] are this thread's now
        own_results: dict[int, _R] = {}
        for j, src in enumerate(sources):
            n = number[j]
            if n is None:
                yield own(src)
                continue
            if j in own_results:
                yield own_results.pop(j)
                continue
            while not self._answered(n) and place[j] + 1 < end:
                start = max(place[j] + 1, end - RUN)
                self._send(b"l%d\0" % queue_order[start][0])  # the helper stops before it
                for _, k in queue_order[start:end]:
                    own_results[k] = own(sources[k])
                end = start
            facts = self._take(n)
            yield facts if facts is not None else own(src)

    def close(self) -> None:
        """Stop the helper and remove every temp file of it the import did not adopt.

        A helper still renaming blobs is let finish (its answer may be what an import is
        about to report), otherwise it is stopped at once."""
        proc = self._proc
        if proc is None or self._closed:
            self._closed = True
            return
        self._closed = True
        self.finish()
        self._send(None)  # end of requests: the helper exits when it has answered them
        with self._cond:
            busy = self._renaming and self._renamed is None and not self._answered_all
        if not busy and proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=600 if busy else 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for thread in (self._writer, self._reader):
            if thread is not None:
                thread.join()
        if proc.stdout is not None:
            proc.stdout.close()
        for i in range(len(self._index)):
            if i not in self._taken:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._temp(i))

    def _answered(self, n: int) -> bool:
        with self._cond:
            return n in self._answers or self._answered_all

    def _take(self, n: int) -> ImageFacts | None:
        """The helper's answer for image ``n`` (waiting for it), its temp file adopted; None
        when the importer must read the image itself."""
        if n in self._taken:
            return None
        with self._cond:
            while n not in self._answers and not self._answered_all:
                self._cond.wait()
            answer = self._answers.get(n, b"-")
        if not answer.startswith(b"+"):
            return None
        try:
            sha, size, width, height = answer[1:].decode("ascii").split(" ")
            facts = (sha, int(size), int(width), int(height))
        except ValueError:
            return None
        self._taken.add(n)
        self.batch.adopt(sha, self._temp(n), facts[1])
        return facts

    def _temp(self, n: int) -> str:
        return f"{self._temp_base}{n}"

    def _start(self, root: str) -> bool:
        from desktop_app.core.dataset_records import max_image_pixels

        header = {
            "store": self.store,
            "prefix": self.prefix,
            "root": root,
            "max_pixels": max_image_pixels(),
        }
        os.makedirs(self.store, exist_ok=True)
        try:
            proc = subprocess.Popen(  # noqa: S603 - this Python, one of our modules
                [sys.executable, "-m", MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            return False
        self._proc, self._root = proc, root
        self._reader = threading.Thread(target=self._read_answers, daemon=True)
        self._reader.start()
        self._writer = threading.Thread(target=self._write_requests, daemon=True)
        self._writer.start()
        self._send(json.dumps(header).encode("utf-8") + b"\n")
        return True

    def _send(self, data: bytes | None) -> None:
        """Queue ``data`` for the helper's stdin (None: close it). A thread of its own writes
        it, so this thread goes on parsing while the helper starts and drains the pipe."""
        if self._proc is not None:
            self._outbox.put(data)

    def _write_requests(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        stdin = self._proc.stdin
        try:
            while (data := self._outbox.get()) is not None:
                stdin.write(data)
                stdin.flush()
        except OSError:  # the helper is gone: what it did not answer, the importer reads
            pass
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read_answers(self) -> None:
        """Collect the helper's answer lines: ``+N SHA256 SIZE W H`` or ``-N`` per image, by
        number; for a rename request ``M FOLDER`` per shard folder made, ``! ERRNO MESSAGE``
        for a failure, then ``R FLAGS``."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        pending = b""
        made: list[str] = []
        error: OSError | None = None
        try:
            while chunk := os.read(fd, 1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                parsed = {}
                renamed: RenameOutcome | None = None
                for line in lines:
                    head, _, rest = line.partition(b" ")
                    if head[1:].isdigit():
                        parsed[int(head[1:])] = line[:1] + rest if rest else line[:1]
                    elif head == b"M":
                        made.append(os.fsdecode(rest))
                    elif head == b"!":
                        code, _, message = rest.partition(b" ")
                        error = OSError(int(code) if code.isdigit() else 0, message.decode())
                    elif head == b"R":
                        renamed = (rest.decode("ascii"), made, error)
                if parsed or renamed is not None:
                    with self._cond:
                        self._answers.update(parsed)
                        if renamed is not None:
                            self._renamed = renamed
                        self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self._answered_all = True
                self._cond.notify_all()


# ---- the helper process ---------------------------------------------------------------------


class _Helper:
    """Reads, checks, hashes and stages images; one answer line per image."""

    def __init__(self, store: str, prefix: str, root: str, max_pixels: int) -> None:
        self.store = os.fsencode(store)
        self.prefix = os.fsencode(prefix)
        self.root = os.fsencode(os.path.realpath(root))
        self.max_pixels = max_pixels
        self.folders: dict[bytes, bool] = {}  # folder as given → resolves inside the root
        self.limit = sys.maxsize  # runs from this number on are the importer's
        self.shards: set[bytes] = set()  # shard folders known to exist

    def inside(self, path: bytes) -> bool:
        head = os.path.dirname(path)
        ok = self.folders.get(head)
        if ok is None:
            real = os.path.realpath(head)
            ok = self.folders[head] = real == self.root or real.startswith(
                self.root.rstrip(b"/") + b"/"
            )
        return ok

    def answer(self, n: int, path: bytes) -> bytes:
        facts = self.stage(n, path) if self.inside(path) else None
        if facts is None:
            return b"-%d\n" % n
        sha, size, width, height = facts
        return f"+{n} {sha} {size} {width} {height}\n".encode("ascii")

    def answer_run(self, run: list[tuple[int, bytes]]) -> list[bytes]:
        if not run or run[0][0] >= self.limit:
            return []  # the importer took this run
        return [self.answer(n, path) for n, path in run]

    def stage(self, n: int, path: bytes) -> ImageFacts | None:
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None  # a FIFO, a device, a folder: the importer says what it is
            data = read_open_file(fd, st.st_size)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            size = check_structure(data)
        except ImageStructureError:
            return None
        if size is None or size[0] * size[1] > self.max_pixels:
            return None
        sha = hashlib.sha256(data).hexdigest()
        temp = os.path.join(self.store, self.prefix + b"%d" % n)
        try:
            out = os.open(temp, _WRITE_FLAGS, 0o600)
        except OSError:
            return None
        try:
            view, done = memoryview(data), 0
            while done < len(data):
                done += os.write(out, view[done:])
        except OSError:
            os.close(out)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            return None
        os.close(out)
        return sha, len(data), size[0], size[1]

    def remove_temps(self) -> None:
        """The importer went away: remove every temp file of this helper."""
        with contextlib.suppress(OSError), os.scandir(self.store) as entries:
            for entry in entries:
                if entry.name.startswith(self.prefix):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def commit(self, moves: list[bytes], pool: ThreadPoolExecutor) -> list[bytes]:
        """Store staged blobs as :meth:`desktop_app.core.blobs.BlobBatch.commit` does: sync
        the store (or fsync each temp file), rename each temp file to its blob name (or drop
        it when that blob exists), sync again (or fsync the folders). ``moves``: ``TEMP\tSHA``
        with the temp file relative to the store. Returns the answer lines."""
        pairs = []
        for move in moves:
            rel, _, sha = move.partition(b"\t")
            dest = os.path.join(self.store, sha[:2], sha)
            pairs.append((os.path.join(self.store, rel), dest, rel))
        made: list[bytes] = []
        errors: list[OSError] = []
        lock = threading.Lock()
        # Each name is looked up from its folder's descriptor where the system can (a third
        # less time per blob than whole paths, each of which is walked from the root again).
        folders: dict[bytes, int] = {}  # shard folder -> its descriptor
        store_fd = None
        if _DIR_FDS:
            with contextlib.suppress(OSError):  # then by whole paths, which name the problem
                store_fd = os.open(self.store, _DIR_FLAGS)

        def shard(folder: bytes) -> None:
            if folder in self.shards:
                return
            with lock:
                try:
                    os.mkdir(folder)
                except FileExistsError:
                    pass
                else:
                    made.append(folder)
                self.shards.add(folder)

        def shard_fd(folder: bytes) -> int:
            fd = folders.get(folder)
            if fd is None:
                with lock:
                    fd = folders.get(folder)
                    if fd is None:
                        fd = folders[folder] = os.open(folder, _DIR_FLAGS)
            return fd

        def move_one(pair: tuple[bytes, bytes, bytes]) -> bytes:
            tmp, dest, rel = pair
            try:
                folder, name = os.path.split(dest)
                shard(folder)
                if store_fd is None:
                    found = os.path.isfile(dest)
                else:
                    try:
                        found = stat.S_ISREG(os.stat(name, dir_fd=shard_fd(folder)).st_mode)
                    except FileNotFoundError:
                        found = False
                if found:  # stored already: drop the temp file
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    return b"0"
                if store_fd is None:
                    os.replace(tmp, dest)
                else:
                    os.rename(rel, name, src_dir_fd=store_fd, dst_dir_fd=shard_fd(folder))
                return b"1"
            except OSError as exc:
                with lock:
                    errors.append(exc)
                return b"e"

        def move_run(run: list[tuple[bytes, bytes, bytes]]) -> list[bytes]:
            return [move_one(pair) for pair in run]

        try:
            if pairs and not syncfs(self.store):
                for tmp, _, _ in pairs:
                    fsync_file(tmp)
        except OSError as exc:
            errors.append(exc)
            flags = b""
        else:
            runs = [pairs[k : k + RUN] for k in range(0, len(pairs), RUN)]
            done: list[bytes] = list(paced_map(move_run, runs, pool, Pace(adaptive=True)))
            flags = b"".join(done)
            touched = {
                os.path.dirname(d)
                for (_, d, _), f in zip(pairs, flags, strict=True)
                if f == ord("1")
            }
            if touched and not syncfs(self.store):
                for folder in sorted(touched):
                    fsync_dir(folder)
                fsync_dir(self.store)
        finally:
            for fd in [*folders.values(), *([] if store_fd is None else [store_fd])]:
                os.close(fd)
        lines = [b"M " + folder + b"\n" for folder in made]
        if errors:
            first = errors[0]
            message = str(first.strerror or first).replace("\n", " ")
            lines.append(b"! %d %s\n" % (first.errno or 0, message.encode("utf-8", "replace")))
        lines.append(b"R " + flags + b"\n")
        return lines

    def read_requests(self, requests: queue.SimpleQueue[tuple[bytes, list[bytes]] | None]) -> None:
        """Read stdin as it comes: ``p PATH`` records go to ``requests`` as ``(b"p", paths)``,
        ``c TEMP\tSHA`` records up to an ``s`` record as ``(b"c", moves)``, ``l N`` records
        lower :attr:`limit`; None at the end. Each record ends with a NUL byte."""
        pending = b""
        moves: list[bytes] = []
        try:
            while chunk := os.read(0, 1 << 16):
                *records, pending = (pending + chunk).split(b"\0")
                found = []
                for record in records:
                    kind = record[:1]
                    if kind == b"p":
                        found.append(record[1:])
                    elif kind == b"l" and record[1:].isdigit():
                        self.limit = min(self.limit, int(record[1:]))
                    elif kind == b"c":
                        moves.append(record[1:])
                    elif kind == b"s":
                        if found:
                            requests.put((b"p", found))
                            found = []
                        requests.put((b"c", moves))
                        moves = []
                if found:
                    requests.put((b"p", found))
        except OSError:
            pass
        requests.put(None)


def helper_main() -> int:
    """``python -m desktop_app.core.image_prefetch``: a JSON header line on stdin, then
    NUL-terminated records; one answer line per image on stdout."""
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            return 0
        header += byte
    cfg = json.loads(header)
    helper = _Helper(cfg["store"], cfg["prefix"], cfg["root"], int(cfg["max_pixels"]))
    requests: queue.SimpleQueue[tuple[bytes, list[bytes]] | None] = queue.SimpleQueue()
    threading.Thread(target=helper.read_requests, args=(requests,), daemon=True).start()
    out = open(1, "wb", closefd=False)  # noqa: SIM115 - stdout, which a windowed app may not set up
    importer = os.getppid()
    count = 0
    pace = Pace(adaptive=(os.cpu_count() or 1) > 1)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        try:
            while (request := requests.get()) is not None:
                kind, found = request
                if kind == b"c":
                    out.writelines(helper.commit(found, pool))
                    out.flush()
                    continue
                items = list(enumerate(found, start=count))
                count += len(found)
                runs = [items[k : k + RUN] for k in range(0, len(items), RUN)]
                for line in paced_map(helper.answer_run, runs, pool, pace):
                    out.write(line)
                out.flush()
        except (BrokenPipeError, ConnectionResetError):
            helper.remove_temps()
            return 1
    if os.getppid() != importer:  # the importer died: nobody will adopt these
        helper.remove_temps()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(helper_main())
