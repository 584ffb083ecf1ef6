"""Resumable chunked uploads: a package arrives in pieces, survives restarts, then installs.

Each upload lives in ``<data-dir>/uploads/<id>/``::

    meta.json     {"id", "size", "sha256", "name", "created_at"}
    data.part     the bytes received so far (its length is the upload's offset)
    result.json   the install result, once committed (a repeated commit answers it again
                  for an hour; the package bytes are dropped at once)

Every chunk's bytes are checked against the signed body digest before they reach the disk,
so ``data.part`` only ever holds a verified prefix of the package, even after a kill; the
total sha256 is checked again at commit. Each chunk is fsynced before it is acknowledged
(measured: 1-3 ms per 4 MiB chunk, a small share of a push, so durability is kept). Uploads idle for longer than the time-to-live are
removed, and only a bounded number may be open at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device_agent.errors import AgentError, one_line
from runtimes.fileio import CHUNK, atomic_write_text

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
META_FILE = "meta.json"
DATA_FILE = "data.part"
RESULT_FILE = "result.json"
CHUNK_SIZE = 4 << 20  # what the agent asks clients to send per request
MAX_UPLOADS = 4  # open (uncommitted) uploads at once
TTL_S = 24 * 3600.0  # an upload untouched this long is removed
COMMITTED_TTL_S = 3600.0  # a committed upload's result answers repeated commits this long
_ID = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class UploadError(AgentError):
    """An upload request the agent refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.offset = offset


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class UploadState:
    """Where one upload stands."""

    id: str
    size: int
    sha256: str
    name: str | None
    offset: int
    created_at: float
    updated_at: float
    committed: bool

    def as_dict(self, ttl_s: float, chunk_size: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "sha256": self.sha256,
            "name": self.name,
            "offset": self.offset,
            "chunk_size": chunk_size,
            "committed": self.committed,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.updated_at + ttl_s),
        }


class UploadManager:
    """Partial uploads under ``root``; blocking methods (disk), safe to call from threads.

    Args:
        root: the staging folder (``<data-dir>/uploads``).
        chunk_size: the chunk size clients are asked to use.
        max_size: the largest package accepted.
        max_uploads: how many uncommitted uploads may be open at once.
        ttl_s: seconds of inactivity after which an upload is removed.
        clock: seconds since the epoch (tests move it).
    """

    def __init__(
        self,
        root: Path,
        *,
        chunk_size: int = CHUNK_SIZE,
        max_size: int = 2 << 30,
        max_uploads: int = MAX_UPLOADS,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.max_size = max_size
        self.max_uploads = max_uploads
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    # -- reading ---------------------------------------------------------------------

    def state(self, upload_id: str) -> UploadState:
        folder = self._folder(upload_id)
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            size, sha256 = int(meta["size"]), str(meta["sha256"])
            created = float(meta["created_at"])
        except FileNotFoundError:
            raise UploadError(
                404,
                f"upload {upload_id} does not exist (expired, committed or deleted); start a new one",
            ) from None
        except (OSError, ValueError, KeyError, TypeError):
            raise UploadError(
                410, f"upload {upload_id} is damaged; delete it and start a new one"
            ) from None
        data = folder / DATA_FILE
        committed = (folder / RESULT_FILE).exists()
        try:
            stat = data.stat()
            offset, updated = stat.st_size, max(created, stat.st_mtime)
        except FileNotFoundError:
            offset, updated = (size if committed else 0), created
            if committed:
                with contextlib.suppress(OSError):
                    updated = max(created, (folder / RESULT_FILE).stat().st_mtime)
        name = meta.get("name")
        return UploadState(
            upload_id,
            size,
            sha256,
            name if isinstance(name, str) else None,
            offset,
            created,
            updated,
            committed,
        )

    def describe(self, upload_id: str) -> dict[str, Any]:
        return self.state(upload_id).as_dict(self.ttl_s, self.chunk_size)

    def result(self, upload_id: str) -> dict[str, Any] | None:
        """The install result of a committed upload (None before the commit)."""
        path = self._folder(upload_id) / RESULT_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- changes ---------------------------------------------------------------------

    def create(self, size: object, sha256: object, name: object = None) -> dict[str, Any]:
        """Open an upload of ``size`` bytes whose whole sha256 is ``sha256``.

        An unfinished upload of the very same package is answered instead (with its offset),
        so a client that lost track of it (a restarted desktop) resumes where it stopped.
        """
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise UploadError(400, f"size must be a positive number of bytes, got {size!r}")
        if size > self.max_size:
            raise UploadError(413, f"the package is larger than {self.max_size} bytes; refusing it")
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise UploadError(400, "sha256 must be the package's 64 lowercase hex digits")
        if name is not None and not isinstance(name, str):
            raise UploadError(400, "name must be a string (the package file name)")
        with self._lock:
            self.purge_expired()
            states = [s for s in self._states() if not s.committed]
            for same in states:  # the same package again (a deploy run again): resume it
                if (same.sha256, same.size) == (sha256, size):
                    log.info("upload %s resumed at byte %d", same.id, same.offset)
                    return same.as_dict(self.ttl_s, self.chunk_size)
            open_ids = [s.id for s in states]
            if len(open_ids) >= self.max_uploads:
                raise UploadError(
                    429,
                    f"{len(open_ids)} uploads are already in progress (limit {self.max_uploads}); "
                    "finish one, or DELETE /v1/uploads/ID, and retry",
                )
            upload_id = secrets.token_hex(16)
            folder = self.root / upload_id
            tmp = self.root / f".new-{upload_id}"
            tmp.mkdir(parents=True)
            try:
                (tmp / DATA_FILE).touch()
                meta = {
                    "id": upload_id,
                    "size": size,
                    "sha256": sha256,
                    "name": one_line(name, 128) if name else None,
                    "created_at": self.clock(),
                }
                atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
                tmp.rename(folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        log.info("upload %s opened (%d bytes)", upload_id, size)
        return self.describe(upload_id)

    def write(self, upload_id: str, offset: int, data: bytes) -> dict[str, Any]:
        """Append ``data`` at ``offset``, which must be where the upload stands (else 409)."""
        with self._lock_for(upload_id):
            state = self.state(upload_id)
            if state.committed:
                raise UploadError(409, f"upload {upload_id} is already committed", state.size)
            if offset != state.offset:
                raise UploadError(
                    409,
                    f"upload {upload_id} is at byte {state.offset}, not {offset}; "
                    f"resume from {state.offset}",
                    state.offset,
                )
            if not data:
                raise UploadError(400, "the chunk is empty; send the next bytes of the package")
            if offset + len(data) > state.size:
                raise UploadError(
                    400,
                    f"the chunk ends at byte {offset + len(data)}, past the declared size "
                    f"{state.size}; start a new upload",
                    state.offset,
                )
            path = self._folder(upload_id) / DATA_FILE
            with open(path, "r+b") as fh:
                fh.seek(offset)
                fh.write(data)
                fh.truncate()
                fh.flush()
                os.fsync(fh.fileno())
            return self.describe(upload_id)

    def complete_path(self, upload_id: str) -> Path:
        """The received package, once every byte is in and its sha256 matches (else 409/422).

        A package whose digest does not match is removed: it can only be uploaded again.
        """
        with self._lock_for(upload_id):
            state = self.state(upload_id)
            if state.offset != state.size:
                raise UploadError(
                    409,
                    f"upload {upload_id} has {state.offset} of {state.size} bytes; "
                    f"send the rest from byte {state.offset} before committing",
                    state.offset,
                )
            path = self._folder(upload_id) / DATA_FILE
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != state.sha256:
                self.delete(upload_id)
                raise UploadError(
                    422,
                    f"upload {upload_id} does not match its declared sha256; it was removed, "
                    "upload the package again",
                )
            return path

    def finish(self, upload_id: str, result: dict[str, Any]) -> None:
        """Record the install result (a repeated commit answers it) and drop the bytes."""
        folder = self._folder(upload_id)
        atomic_write_text(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
        with contextlib.suppress(OSError):
            (folder / DATA_FILE).unlink()

    def delete(self, upload_id: str) -> dict[str, Any]:
        folder = self._folder(upload_id)
        if not folder.is_dir():
            raise UploadError(404, f"upload {upload_id} does not exist; nothing to delete")
        trash = self.root / f".trash-{upload_id}-{secrets.token_hex(4)}"
        try:
            folder.rename(trash)
        except FileNotFoundError:
            raise UploadError(
                404, f"upload {upload_id} does not exist; nothing to delete"
            ) from None
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._locks.pop(upload_id, None)
        log.info("upload %s deleted", upload_id)
        return {"id": upload_id, "deleted": True}

    def purge_expired(self) -> list[str]:
        """Remove uploads idle past the time-to-live, and leftovers of interrupted changes."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        now = self.clock()
        for child in self.root.iterdir():
            if child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True)
                continue
            try:
                state = self.state(child.name)
            except UploadError:
                shutil.rmtree(child, ignore_errors=True)
                continue
            ttl = min(self.ttl_s, COMMITTED_TTL_S) if state.committed else self.ttl_s
            if now - state.updated_at > ttl:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
        for upload_id in removed:
            log.info("upload %s expired and was removed", upload_id)
        return removed

    # -- helpers ---------------------------------------------------------------------

    def _folder(self, upload_id: str) -> Path:
        if not _ID.match(upload_id):
            raise UploadError(404, f"upload {upload_id!r} does not exist; start a new one")
        return self.root / upload_id

    def _lock_for(self, upload_id: str) -> threading.Lock:
        self._folder(upload_id)
        with self._lock:
            return self._locks.setdefault(upload_id, threading.Lock())

    def _states(self) -> list[UploadState]:
        states = []
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.is_dir() and _ID.match(child.name):
                    with contextlib.suppress(UploadError):
                        states.append(self.state(child.name))
        return states
