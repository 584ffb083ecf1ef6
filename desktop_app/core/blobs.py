"""Content-addressed file store: ``blobs/ab/abcdef...`` named by the sha256 of the content.

Blobs are immutable. A write goes to a temp file in the store, is fsynced and renamed into
place, so a crash never leaves a half-written blob under its final name. The ``Blob`` row
that records a blob in the database is added by the caller inside its own transaction
(:func:`register_blobs`), after the file is stored.

Many files at once go through :meth:`BlobStore.ingest_files`: copies to temp names in
threads, one sync of the file system, the renames, and one more sync, so every blob is
durable when the call returns (before the caller commits its rows) and a blob's name never
points at content that is not on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from desktop_app.core.errors import BlobIntegrityError, InvalidArgumentError, NotFoundError
from desktop_app.core.models import Blob, utcnow
from desktop_app.core.pacing import Pace
from runtimes.fileio import (
    CHUNK,
    atomic_write_bytes,
    fsync_dir,
    fsync_file,
    sha256_bytes,
    sha256_file,
    syncfs,
)

_T = TypeVar("_T")
_BLOBS = cast(Table, Blob.__table__)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"
_ONE_READ = 16 << 20  # files up to this size are read with one call
_INSERT_BLOBS_SQLITE = (
    f"INSERT OR IGNORE INTO {_BLOBS.name} "
    f"({_BLOBS.c.sha256.name}, {_BLOBS.c.size.name}, {_BLOBS.c.created_at.name}) VALUES (?, ?, ?)"
)


@dataclass(frozen=True)
class StoredBlob:
    """The outcome of a write: the blob's sha256, its size, and whether this write created it."""

    sha256: str
    size: int
    created: bool


class BlobStore:
    """A folder of content-addressed files.

    Args:
        root: The store's folder (a workspace's ``blobs/``); created on first write.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        """Where the blob with this sha256 lives (whether or not it exists)."""
        if not _SHA_RE.match(sha):
            raise InvalidArgumentError(f"{sha!r} is not a sha256; pass 64 lowercase hex digits")
        return self.root / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        """True when the blob's file is present."""
        return self.path(sha).is_file()

    def verify(self, sha: str) -> bool:
        """True when the blob's file is present and its content still hashes to ``sha``."""
        p = self.path(sha)
        return p.is_file() and sha256_file(p) == sha

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` and return its sha256 (no-op when already stored)."""
        return self.ingest_bytes(data).sha256

    def put_file(self, path: Path) -> str:
        """Store a copy of the file at ``path`` and return its sha256 (no-op when already stored)."""
        return self.ingest_file(path).sha256

    def ingest_bytes(self, data: bytes) -> StoredBlob:
        """Like :meth:`put_bytes`, and also say whether this call created the blob."""
        sha = sha256_bytes(data)
        dest = self.path(sha)
        if dest.is_file():
            return StoredBlob(sha, len(data), created=False)
        atomic_write_bytes(dest, data)
        return StoredBlob(sha, len(data), created=True)

    def ingest_file(self, path: Path, *, expected: str | None = None) -> StoredBlob:
        """Like :meth:`put_file`, and also say whether this call created the blob.

        The file is hashed while it is copied, so the stored content always matches its name
        even if the source changes meanwhile.

        Args:
            path: The file to store.
            expected: The sha256 the caller already knows the file has. When a blob of that
                name is stored, the file is not read at all (``created=False``, the stored
                size); otherwise the file is copied and hashed as usual, and the result names
                what was really stored (compare it with ``expected`` to notice a file that
                changed since it was hashed).
        """
        stored, _ = self._ingest(Path(path), expected, sync_dir=True)
        return stored

    def ingest_files(
        self,
        paths: Sequence[Path],
        *,
        expected: Sequence[str | None] | None = None,
        workers: int | None = None,
        created: list[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[StoredBlob]:
        """Store many files at once; the same result, file by file, as :meth:`ingest_file`.

        In three stages, so no blob name ever points at content that is not on disk yet:

        1. every file is read once, hashed and written to a temp file in the store, without a
           per-file fsync: in the calling thread while the files go fast (a local disk), in
           ``workers`` threads once they go slowly (a network share or a busy disk; see
           :mod:`desktop_app.core.pacing`), each thread taking a run of files, so 10,000
           small images cost a few hundred thread hand-offs, not 10,000;
        2. the store's file system is synced once (Linux ``syncfs``; elsewhere each temp file
           is fsynced);
        3. the temp files are renamed to their sha256 names, and the file system (or each
           touched folder) is synced once more.

        When the call returns every blob is durable, before the caller commits its rows.
        Two syncs instead of one fsync per file make a 10,000-image import several times
        faster on common disks. Files whose known sha256 is already stored are not read, and
        files of one known sha256 are copied once (the others share that blob).

        Args:
            paths: The files to store.
            expected: For each file, the sha256 the caller already knows it has, or None (see
                :meth:`ingest_file`: a file whose blob is stored is not read).
            workers: Copy threads. Default: the calling thread alone while files go fast
                (:mod:`desktop_app.core.pacing`), then 4 per CPU (at most 32) for the rest. A
                number given here is used from the start.
            created: Every blob this call creates is appended here once its file is in
                place, also when the call then fails, so the caller can remove them again.
            progress: Called as ``progress(done, total)`` in the calling thread, in order, as
                files are copied.

        Returns:
            One :class:`StoredBlob` per file, in the order of ``paths``.

        Raises:
            InvalidArgumentError: ``expected`` does not have one entry per file, or holds
                something that is not a sha256.
            OSError: a file cannot be read or the store cannot be written; no temp file is
                left behind, and every blob created so far is in ``created``.
        """
        files = [os.fspath(p) for p in paths]
        shas: Sequence[str | None] = [None] * len(files) if expected is None else expected
        if len(shas) != len(files):
            raise InvalidArgumentError(
                f"expected has {len(shas)} sha256s for {len(files)} files; pass one per file"
            )
        for sha in shas:
            if sha is not None and not _SHA_RE.match(sha):
                self.path(sha)  # refuses a malformed sha before any work starts
        if not files:
            return []
        made: list[str] = created if created is not None else []
        self.root.mkdir(parents=True, exist_ok=True)
        total = len(files)
        # one copy per known sha256: later files of the same sha256 share the first one's blob
        first: dict[str, int] = {}
        jobs: list[int] = []
        for i, sha in enumerate(shas):
            if sha is None:
                jobs.append(i)
            elif first.setdefault(sha, i) == i:
                jobs.append(i)
        count = max(1, workers or min(32, 4 * (os.cpu_count() or 1)))
        size = max(1, min(256, -(-len(jobs) // (4 * count))))
        runs = [jobs[k : k + size] for k in range(0, len(jobs), size)]
        stager = _Stager(os.fspath(self.root))
        staged: dict[int, _Staged] = {}
        done = 0

        def report(upto: int) -> None:
            nonlocal done
            if progress is not None:
                for d in range(done + 1, upto + 1):
                    progress(d, total)
            done = max(done, upto)

        pace = Pace(adaptive=workers is None and count > 1)
        try:
            with ThreadPoolExecutor(max_workers=count, thread_name_prefix="blobs") as pool:
                futures: list[Future[list[_Staged]]] = []
                try:
                    k = 0
                    while k < len(runs) and not pace.fan_out and (count == 1 or pace.adaptive):
                        # In this thread while the disk keeps up: on a fast file system the
                        # copy is CPU-bound, and more threads only contend (GIL, folder locks).
                        run = runs[k]
                        started = time.perf_counter()
                        for i, st in zip(
                            run, stager.stage_run([(files[i], shas[i]) for i in run]), strict=True
                        ):
                            staged[i] = st
                        pace.add(len(run), time.perf_counter() - started)
                        report(run[-1] + 1)
                        k += 1
                    rest = runs[k:]
                    futures = [
                        pool.submit(stager.stage_run, [(files[i], shas[i]) for i in run])
                        for run in rest
                    ]
                    for run, fut in zip(rest, futures, strict=True):
                        for i, st in zip(run, fut.result(), strict=True):
                            staged[i] = st
                        report(run[-1] + 1)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    wait(futures)
                    for fut in futures:
                        if fut.done() and not fut.cancelled() and fut.exception() is None:
                            for st in fut.result():
                                st.discard()
                    for st in staged.values():
                        st.discard()
                    raise
                report(total)
                try:
                    pending = [st.tmp for st in staged.values() if st.tmp is not None]
                    if pending and not syncfs(self.root):
                        _all_done([pool.submit(fsync_file, tmp) for tmp in pending])
                    commits = [staged[i] for i in jobs]
                    if pace.fan_out or (count > 1 and not pace.adaptive):
                        parts = [commits[k : k + size] for k in range(0, len(commits), size)]
                        outcomes: list[StoredBlob] = []
                        for part in _all_done([pool.submit(stager.commit_run, p) for p in parts]):
                            outcomes.extend(part)
                    else:  # the renames are as cheap as the copies were
                        outcomes = stager.commit_run(commits)
                except BaseException:
                    for st in staged.values():
                        st.discard()
                    # renames that went through before the failure are blobs now
                    made.extend({st.sha256 for st in staged.values() if st.committed})
                    raise
                results: list[StoredBlob | None] = [None] * total
                touched: set[str] = set()
                touched_shas: set[str] = set()
                for i, stored in zip(jobs, outcomes, strict=True):
                    if stored.created and stored.sha256 in touched_shas:  # renamed twice
                        stored = StoredBlob(stored.sha256, stored.size, created=False)
                    results[i] = stored
                    if stored.created:
                        made.append(stored.sha256)
                        touched_shas.add(stored.sha256)
                        touched.add(os.path.dirname(stager.dest(stored.sha256)))
                for i, sha in enumerate(shas):
                    if results[i] is None and sha is not None:
                        shared = results[first[sha]]
                        assert shared is not None
                        results[i] = StoredBlob(shared.sha256, shared.size, created=False)
                if touched and not syncfs(self.root):
                    list(pool.map(fsync_dir, [Path(d) for d in sorted(touched)]))
                    fsync_dir(self.root)
        finally:
            stager.drop_empty_dirs()
        out = [r for r in results if r is not None]
        assert len(out) == total
        return out

    def _ingest(
        self, path: Path, expected: str | None, *, sync_dir: bool
    ) -> tuple[StoredBlob, bool]:
        """Store one file; returns the outcome and whether its shard folder was created.

        With ``sync_dir`` the shard folder (and the store's folder, for a new shard) is fsynced
        before returning; without it the caller must do so before relying on the blob. With
        ``expected``, the temp file is written in that blob's shard folder, so the rename
        stays inside one folder (concurrent writers then do not all queue on the store's).
        """
        if expected is not None:
            try:
                st = os.stat(self.path(expected))
            except FileNotFoundError:
                pass
            else:
                return StoredBlob(expected, st.st_size, created=False), False
        here = self.path(expected).parent if expected is not None else self.root
        made_here = _make_dir(here) and here != self.root  # a new shard folder
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=here)
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            dest = self.path(sha)
            if dest.is_file():
                os.unlink(tmp)
                _drop_if_empty(here, made_here)
                return StoredBlob(sha, size, created=False), False
            if dest.parent == here:
                new_shard = made_here
            else:  # the content is not what the caller expected: store it under its own name
                new_shard = _make_dir(dest.parent)
            os.replace(tmp, dest)
            if dest.parent != here:
                _drop_if_empty(here, made_here)
            if sync_dir:
                fsync_dir(dest.parent)
                if new_shard:
                    fsync_dir(self.root)
            return StoredBlob(sha, size, created=True), new_shard
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            _drop_if_empty(here, made_here)
            raise

    def copy_to(self, sha: str, dest: Path) -> None:
        """Copy a blob to ``dest`` (a real copy, never a link), checking its hash on the way.

        Raises:
            BlobIntegrityError: the blob is missing or its content does not match ``sha``.
        """
        src = self.path(sha)
        if not src.is_file():
            raise BlobIntegrityError(
                f"blob {sha} is missing from {self.root}; restore the workspace from a backup"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(src, "rb") as fin, open(dest, "wb") as fout:
            while chunk := fin.read(CHUNK):
                digest.update(chunk)
                fout.write(chunk)
        if digest.hexdigest() != sha:
            dest.unlink(missing_ok=True)
            raise BlobIntegrityError(
                f"blob {sha} is corrupt (its content changed); restore the workspace from a backup"
            )

    def delete(self, sha: str) -> None:
        """Remove a blob's file (and its shard folder when that becomes empty)."""
        p = self.path(sha)
        p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            p.parent.rmdir()

    def iter_shas(self) -> Iterable[str]:
        """Every sha256 that has a file in the store (temp files excluded)."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.is_dir() and len(shard.name) == 2:
                for f in sorted(shard.iterdir()):
                    if _SHA_RE.match(f.name) and f.name.startswith(shard.name):
                        yield f.name

    def copy_tree(self, dest: Path) -> None:
        """Copy the whole store (blob files only, no temp files) into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        for sha in self.iter_shas():
            target = dest / sha[:2] / sha
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(self.path(sha), target)


RenameOutcome = tuple[str, list[str], OSError | None]  # flags, shard folders made, error


class Renamer(Protocol):
    """Stores staged blobs in another process (see :meth:`BlobBatch.start_commit`)."""

    def rename(self, moves: list[tuple[str, str]]) -> Callable[[], RenameOutcome | None] | None:
        """Start syncing the store, renaming each ``(temp file relative to the store, sha256)``
        to its blob name (or dropping the temp file when that blob exists) and syncing again.

        Returns None when it cannot take the request; else the call that waits for the
        outcome: one flag per move (``"1"`` stored, ``"0"`` found stored, ``"e"`` failed), the
        shard folders it created and the first error; None if it died before answering.
        """


class BlobBatch:
    """Blobs staged from content already in memory, stored together by :meth:`commit`.

    An import reads each image once to check and hash it, and hands the bytes here
    (:meth:`add`, from any thread); each new one is written to a temp file in the store at
    once. :meth:`commit` then stores the blobs the caller keeps as :meth:`BlobStore.ingest_files`
    does (one sync, the renames, one more sync: durable when it returns, and no blob name
    ever points at content not on disk) and drops the rest; :meth:`discard` drops them all.

    Args:
        store: The store the blobs go to.
    """

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._stager = _Stager(os.fspath(store.root))
        self._staged: dict[str, _Staged | None] = {}  # None: being written by another thread
        self._lock = threading.Lock()
        self._made_root = False

    def add(self, sha: str, data: bytes) -> None:
        """Stage ``data`` as the blob ``sha`` (its sha256, computed by the caller); thread-safe.

        Content already stored, or already added, is not written again.
        """
        with self._lock:
            if sha in self._staged:
                return
            self._staged[sha] = None
            if not self._made_root:
                self.store.root.mkdir(parents=True, exist_ok=True)
                self._made_root = True
        try:
            st = self._stager.stage_data(data, sha)
        except BaseException:
            with self._lock:
                del self._staged[sha]
            raise
        with self._lock:
            self._staged[sha] = st

    def adopt(self, sha: str, tmp: str, size: int) -> None:
        """Take over a temp file in the store's folder that holds the blob ``sha`` (written and
        hashed elsewhere, e.g. by :mod:`desktop_app.core.image_prefetch`); thread-safe.

        Content already added is not kept twice: the temp file is removed.
        """
        with self._lock:
            if sha not in self._staged:
                self._staged[sha] = _Staged(tmp, sha, size)
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

    def new_temp_prefix(self) -> str:
        """A temp-file name prefix of its own for a writer beside this batch (see :meth:`adopt`)."""
        return f"{_TMP_PREFIX}{secrets.token_hex(6)}-"

    def commit(
        self, keep: Iterable[str], created: list[str], workers: int | None = None
    ) -> dict[str, int]:
        """Store the staged blobs named in ``keep``; drop every other one.

        Args:
            keep: The sha256s to store; each must have been added.
            created: Every blob this call creates is appended here once its file is in
                place, also when the call then fails, so the caller can remove them again.
            workers: Rename threads. Default: the calling thread while renames go fast, then
                4 per CPU (at most 32) once they go slowly (see :mod:`desktop_app.core.pacing`).

        Returns:
            The size of each kept blob, by sha256.

        Raises:
            InvalidArgumentError: a sha256 in ``keep`` was never added.
            OSError: the store cannot be written; every temp file is removed, and every blob
                created so far is in ``created``.
        """
        commits = self._chosen(keep)
        count = max(1, workers or min(32, 4 * (os.cpu_count() or 1)))
        try:
            with ThreadPoolExecutor(max_workers=count, thread_name_prefix="blobs") as pool:
                pending = [st.tmp for st in commits if st.tmp is not None]
                if pending and not syncfs(self.store.root):
                    _all_done([pool.submit(fsync_file, tmp) for tmp in pending])
                outcomes = _renamed(
                    self._stager, commits, pool, Pace(workers is None and count > 1)
                )
                new = [o.sha256 for o in outcomes if o.created]
                created.extend(new)
                touched = {os.path.dirname(self._stager.dest(sha)) for sha in new}
                if touched and not syncfs(self.store.root):
                    list(pool.map(fsync_dir, [Path(d) for d in sorted(touched)]))
                    fsync_dir(self.store.root)
        except BaseException:
            reported = set(created)  # renames that went through before the failure are blobs
            created.extend(
                st.sha256 for st in commits if st.committed and st.sha256 not in reported
            )
            self.discard()
            raise
        finally:
            self._stager.drop_empty_dirs()
        return {st.sha256: st.size for st in commits}

    def start_commit(
        self, keep: Iterable[str], renamer: Renamer | None
    ) -> Callable[[list[str]], dict[str, int]]:
        """Begin :meth:`commit` in ``renamer`` (another process: the sync, the renames and the
        second sync go on while this one works); returns the call that finishes it.

        The returned function takes ``created`` and returns what :meth:`commit` returns,
        raising what it raises. Without a renamer, or when the renamer cannot take the
        request, or dies before it answers, it is :meth:`commit` itself (which finds what the
        renamer renamed already stored).
        """
        keep = list(keep)
        if renamer is None:
            return lambda created: self.commit(keep, created)
        commits = self._chosen(keep)
        moving = [st for st in commits if st.tmp is not None]
        prefix = self._stager.prefix
        answer = renamer.rename([(str(st.tmp)[len(prefix) :], st.sha256) for st in moving])
        if answer is None:
            return lambda created: self.commit(keep, created)

        def finish(created: list[str]) -> dict[str, int]:
            outcome = answer()
            if outcome is None:  # the renamer is gone: finish here
                return self.commit(keep, created)
            flags, made, error = outcome
            with self._stager.lock:
                self._stager.made.update(made)
            self._stager.known.update(made)
            for st, flag in zip(moving, flags, strict=False):
                if flag in "01":  # stored, or found stored already: the temp file is gone
                    st.tmp = None
                    if flag == "1":
                        st.committed = True
                        created.append(st.sha256)
            if error is not None or len(flags) != len(moving) or "e" in flags:
                self.discard()
                raise error or OSError(f"the blob store {self.store.root} could not be written")
            return {st.sha256: st.size for st in commits}

        return finish

    def _chosen(self, keep: Iterable[str]) -> list[_Staged]:
        """The staged blobs named in ``keep``; every other one is dropped.

        Raises:
            InvalidArgumentError: a sha256 in ``keep`` was never added (all are dropped).
        """
        wanted = set(keep)
        with self._lock:
            staged = dict(self._staged)
        missing = [sha for sha in wanted if staged.get(sha) is None]
        if missing:
            self.discard()
            raise InvalidArgumentError(
                f"blob {missing[0]} was not staged in this batch; add its content first"
            )
        for sha, st in staged.items():
            if sha not in wanted and st is not None:
                st.discard()
        return [st for sha, st in staged.items() if sha in wanted and st is not None]

    def discard(self) -> None:
        """Remove every temp file this batch still holds (blobs already stored stay)."""
        with self._lock:
            staged = [st for st in self._staged.values() if st is not None]
        for st in staged:
            st.discard()
        self._stager.drop_empty_dirs()


def _renamed(
    stager: _Stager, commits: list[_Staged], pool: ThreadPoolExecutor, pace: Pace
) -> list[StoredBlob]:
    """Rename staged files to their blob names: in this thread while that goes fast, then
    in ``pool`` in runs."""
    out: list[StoredBlob] = []
    k, size = 0, PACE_RUN
    while k < len(commits) and pace.adaptive and not pace.fan_out:
        started = time.perf_counter()
        part = stager.commit_run(commits[k : k + size])
        pace.add(len(part), time.perf_counter() - started)
        out.extend(part)
        k += size
    parts = [commits[j : j + size] for j in range(k, len(commits), size)]
    for part in _all_done([pool.submit(stager.commit_run, p) for p in parts]):
        out.extend(part)
    return out


PACE_RUN = 64  # files per run, in this thread or a worker's


@dataclass
class _Staged:
    """A file copied to a temp name in the store (or found stored already: ``tmp`` None)."""

    tmp: str | None
    sha256: str
    size: int
    committed: bool = False  # renamed to its blob name by this call

    def discard(self) -> None:
        """Remove the temp file (after a failure)."""
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            self.tmp = None


class _Stager:
    """Copies files to temp names in one store and renames them, for :meth:`BlobStore.ingest_files`.

    Works on plain string paths (thousands of files: ``pathlib`` costs more than the copy of a
    small image). Remembers the shard folders it created, so a failure (or a copy whose
    content was not the expected one) leaves no empty folder behind.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.known: set[str] = set()  # shard folders known to exist
        self.made: set[str] = set()  # shard folders this call created
        self.lock = threading.Lock()
        self.prefix = os.path.join(root, "")  # root and a separator, joined once
        # temp names: one random part per stager, then a counter (O_EXCL guards the rest)
        self._tmp_names = (f"{_TMP_PREFIX}{secrets.token_hex(6)}-{n}" for n in itertools.count())

    def dest(self, sha: str) -> str:
        return f"{self.prefix}{sha[:2]}{os.sep}{sha}"

    def temp_file(self, folder: str) -> tuple[int, str]:
        """Create and open a new temp file (mode 0600) in ``folder``: ``(fd, path)``."""
        while True:
            with self.lock:
                name = next(self._tmp_names)
            tmp = f"{folder}{os.sep}{name}"
            try:
                return os.open(tmp, _TEMP_FLAGS, 0o600), tmp
            except FileExistsError:
                continue

    def shard(self, sha: str) -> str:
        """The shard folder of ``sha``, created when missing."""
        folder = f"{self.prefix}{sha[:2]}"
        if folder not in self.known:
            try:
                os.mkdir(folder)
            except FileExistsError:
                pass
            else:
                with self.lock:
                    self.made.add(folder)
            self.known.add(folder)
        return folder

    def stored(self, sha: str) -> _Staged | None:
        """The blob ``sha`` when the store holds it already (nothing to write), else None."""
        try:
            st = os.stat(self.dest(sha))
        except FileNotFoundError:
            return None
        return _Staged(None, sha, st.st_size)

    def stage_run(self, run: list[tuple[str, str | None]]) -> list[_Staged]:
        """Stage a run of files in order; on a failure, remove what this run staged."""
        out: list[_Staged] = []
        try:
            for src, expected in run:
                out.append(self.stage(src, expected))
        except BaseException:
            for st in out:
                st.discard()
            raise
        return out

    def stage(self, src: str, expected: str | None) -> _Staged:
        """Read ``src`` once, hashing it and writing it to a temp file (no fsync)."""
        if expected is not None and (stored := self.stored(expected)) is not None:
            return stored
        here = self.shard(expected) if expected is not None else self.root
        with open(src, "rb", buffering=0) as fin:
            small = os.fstat(fin.fileno()).st_size <= _ONE_READ
            data = fin.readall() if small else b""  # the whole file in one read
            fd, tmp = self.temp_file(here)
            try:
                digest, size = hashlib.sha256(data), len(data)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    while not small and (chunk := fin.read(CHUNK)):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return _Staged(tmp, digest.hexdigest(), size)

    def stage_data(self, data: bytes, sha: str) -> _Staged:
        """Write ``data``, whose sha256 the caller computed, to a temp file (no fsync)."""
        if (stored := self.stored(sha)) is not None:
            return stored
        fd, tmp = self.temp_file(self.shard(sha))
        try:
            try:
                view, done = memoryview(data), 0
                while done < len(data):
                    done += os.write(fd, view[done:])
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return _Staged(tmp, sha, len(data))

    def commit_run(self, run: list[_Staged]) -> list[StoredBlob]:
        return [self.commit(st) for st in run]

    def commit(self, st: _Staged) -> StoredBlob:
        """Rename a temp file to its blob name (or drop it when that blob exists)."""
        if st.tmp is None:
            return StoredBlob(st.sha256, st.size, created=False)
        dest = self.dest(st.sha256)
        if os.path.isfile(dest):
            st.discard()
            return StoredBlob(st.sha256, st.size, created=False)
        self.shard(st.sha256)
        os.replace(st.tmp, dest)
        st.tmp, st.committed = None, True
        return StoredBlob(st.sha256, st.size, created=True)

    def drop_empty_dirs(self) -> None:
        """Remove the shard folders this call created that hold nothing."""
        for folder in sorted(self.made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


_TEMP_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)


def _all_done(futures: list[Future[_T]]) -> list[_T]:
    """The results of ``futures`` in order, once every one has finished (not at the first
    failure, so nothing still runs while the caller cleans up); then the first error is raised.
    """
    wait(futures)
    for fut in futures:
        exc = fut.exception()
        if exc is not None:
            raise exc
    return [fut.result() for fut in futures]


def _make_dir(folder: Path) -> bool:
    """Create ``folder`` (and its parents) when missing; True when this call created it."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return False
    return True


def _drop_if_empty(folder: Path, made: bool) -> None:
    """Remove a shard folder this write created (``made``) when it is still empty."""
    if made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def register_blob(session: Session, sha: str, size: int) -> Blob:
    """Add the ``Blob`` row for a stored file unless it exists; call inside the caller's transaction."""
    row = session.get(Blob, sha)
    if row is None:
        row = Blob(sha256=sha, size=size)
        session.add(row)
    return row


def register_blobs(session: Session, sizes: Mapping[str, int]) -> int:
    """Add the missing ``Blob`` rows for many stored files at once; returns how many were added."""
    if not sizes:
        return 0
    rows = [{"sha256": sha, "size": sizes[sha]} for sha in sorted(sizes)]
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        # One driver-level executemany that skips the rows already there: no lookup first,
        # and one timestamp (bound as the column's type stores it) for the whole batch.
        stamp = _BLOBS.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
        now = stamp(utcnow()) if stamp is not None else utcnow()
        cursor = session.connection().exec_driver_sql(
            _INSERT_BLOBS_SQLITE, [(row["sha256"], row["size"], now) for row in rows]
        )
        return int(cursor.rowcount)
    existing: set[str] = set()
    shas = [row["sha256"] for row in rows]
    for i in range(0, len(shas), 500):
        chunk = shas[i : i + 500]
        existing.update(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(chunk))))
    missing = [row for row in rows if row["sha256"] not in existing]
    if missing:  # one executemany, not one ORM object per row (10,000 rows: ~0.4 s less)
        session.execute(insert(_BLOBS), missing)  # Core: no ORM bulk bookkeeping per row
    return len(missing)


def require_blob(store: BlobStore, sha: str) -> Path:
    """Return the path of a stored blob, or raise NotFoundError when its file is absent."""
    p = store.path(sha)
    if not p.is_file():
        raise NotFoundError(
            f"blob {sha} is not in {store.root}; restore the workspace from a backup"
        )
    return p
