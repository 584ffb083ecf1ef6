"""Content-addressed file store: ``blobs/ab/abcdef...`` named by the sha256 of the content.

Blobs are immutable. A write goes to a temp file in the store, is fsynced and renamed into
place, so a crash never leaves a half-written blob under its final name. The ``Blob`` row
that records a blob in the database is added by the caller inside its own transaction
(:func:`register_blobs`), after the file is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
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

    def ingest_file(self, path: Path) -> StoredBlob:
        """Like :meth:`put_file`, and also say whether this call created the blob.

        The file is hashed while it is copied, so the stored content always matches its name
        even if the source changes meanwhile.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
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
                return StoredBlob(sha, size, created=False)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            return StoredBlob(sha, size, created=True)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
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
    session.add_all(Blob(sha256=s, size=sizes[s]) for s in missing)
    return len(missing)


def require_blob(store: BlobStore, sha: str) -> Path:
    """Return the path of a stored blob, or raise NotFoundError when its file is absent."""
    p = store.path(sha)
    if not p.is_file():
        raise NotFoundError(
            f"blob {sha} is not in {store.root}; restore the workspace from a backup"
        )
    return p
