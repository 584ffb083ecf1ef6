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
import ctypes
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from desktop_app.core.errors import BlobIntegrityError, InvalidArgumentError, NotFoundError
from desktop_app.core.models import Blob
from runtimes.fileio import CHUNK, atomic_write_bytes, fsync_dir, sha256_bytes, sha256_file

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"


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

        1. every file is copied (and hashed on the way) to a temp file in the store, in
           ``workers`` threads, without a per-file fsync;
        2. the store's file system is synced once (Linux ``syncfs``; elsewhere each temp file
           is fsynced);
        3. the temp files are renamed to their sha256 names, and the file system (or each
           touched folder) is synced once more.

        When the call returns every blob is durable, before the caller commits its rows.
        Two syncs instead of one fsync per file make a 10,000-image import several times
        faster on common disks.

        Args:
            paths: The files to store.
            expected: For each file, the sha256 the caller already knows it has, or None (see
                :meth:`ingest_file`: a file whose blob is stored is not read).
            workers: Copy threads (default: 4 per CPU, at most 32).
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
        files = [Path(p) for p in paths]
        shas: Sequence[str | None] = [None] * len(files) if expected is None else expected
        if len(shas) != len(files):
            raise InvalidArgumentError(
                f"expected has {len(shas)} sha256s for {len(files)} files; pass one per file"
            )
        for sha in shas:
            if sha is not None:
                self.path(sha)  # refuses a malformed sha before any work starts
        if not files:
            return []
        made: list[str] = created if created is not None else []
        self.root.mkdir(parents=True, exist_ok=True)
        staged: list[_Staged] = []
        count = workers or min(32, 4 * (os.cpu_count() or 1))
        total = len(files)
        with ThreadPoolExecutor(max_workers=max(1, count), thread_name_prefix="blobs") as pool:
            futures = [pool.submit(self._stage, files[i], shas[i]) for i in range(total)]
            try:
                for i, fut in enumerate(futures, start=1):
                    staged.append(fut.result())
                    if progress is not None:
                        progress(i, total)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                wait(futures)
                for fut in futures:
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        fut.result().discard()
                raise
            try:
                pending = [st for st in staged if st.tmp is not None]
                if pending and not _syncfs(self.root):
                    list(pool.map(_fsync_file, [st.tmp for st in pending if st.tmp]))
                results: list[StoredBlob] = []
                touched: set[Path] = set()
                for st in staged:
                    stored = st.commit(self)
                    if stored.created:
                        made.append(stored.sha256)
                        touched.add(self.path(stored.sha256).parent)
                    results.append(stored)
            except BaseException:
                for st in staged:
                    st.discard()
                raise
            if touched and not _syncfs(self.root):
                list(pool.map(fsync_dir, sorted(touched)))
                fsync_dir(self.root)
        return results

    def _stage(self, path: Path, expected: str | None) -> _Staged:
        """Copy one file to a temp file in the store (no fsync), hashing it on the way."""
        if expected is not None:
            try:
                st = os.stat(self.path(expected))
            except FileNotFoundError:
                pass
            else:
                return _Staged(None, expected, st.st_size, None)
        here = self.path(expected).parent if expected is not None else self.root
        made_here = _make_dir(here) and here != self.root
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=here)
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            _drop_if_empty(here, made_here)
            raise
        return _Staged(Path(tmp), digest.hexdigest(), size, here if made_here else None)

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


@dataclass
class _Staged:
    """A file copied to a temp name in the store (or found stored already: ``tmp`` None)."""

    tmp: Path | None
    sha256: str
    size: int
    made_dir: Path | None  # a shard folder the copy created

    def commit(self, store: BlobStore) -> StoredBlob:
        """Rename the temp file to its blob name (or drop it when that blob exists)."""
        if self.tmp is None:
            return StoredBlob(self.sha256, self.size, created=False)
        tmp, self.tmp = self.tmp, None
        dest = store.path(self.sha256)
        if dest.is_file():
            tmp.unlink(missing_ok=True)
            self._drop_dir()
            return StoredBlob(self.sha256, self.size, created=False)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        if dest.parent != tmp.parent:
            self._drop_dir()
        return StoredBlob(self.sha256, self.size, created=True)

    def discard(self) -> None:
        """Remove the temp file (after a failure)."""
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
            self._drop_dir()

    def _drop_dir(self) -> None:
        if self.made_dir is not None:
            _drop_if_empty(self.made_dir, True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(folder: Path) -> bool:
    """Flush every dirty page of the file system holding ``folder`` (Linux ``syncfs``).

    Returns False where the call does not exist or fails; the caller then fsyncs file by
    file instead.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        return bool(libc.syncfs(fd) == 0)
    except AttributeError:
        return False
    finally:
        os.close(fd)


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
    shas = sorted(sizes)
    existing: set[str] = set()
    for i in range(0, len(shas), 500):
        chunk = shas[i : i + 500]
        existing.update(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(chunk))))
    missing = [s for s in shas if s not in existing]
    if missing:  # one executemany, not one ORM object per row (10,000 rows: ~0.4 s less)
        session.execute(insert(Blob), [{"sha256": s, "size": sizes[s]} for s in missing])
    return len(missing)


def require_blob(store: BlobStore, sha: str) -> Path:
    """Return the path of a stored blob, or raise NotFoundError when its file is absent."""
    p = store.path(sha)
    if not p.is_file():
        raise NotFoundError(
            f"blob {sha} is not in {store.root}; restore the workspace from a backup"
        )
    return p
