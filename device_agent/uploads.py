"""Resumable chunked uploads: a package arrives in pieces, survives restarts, then installs.

Each upload lives in ``<data-dir>/uploads/<id>/``::

    meta.json     {"id", "size", "sha256", "name", "created_at"[, "piece_size", "pieces"]}
    data.part     the bytes received so far
    progress.json {"offset", "sha256_verified"}: the verified, fsynced prefix of data.part
                  (streamed uploads only; without it the file's length is the offset)
    result.json   the install result, once committed (a repeated commit answers it again
                  for an hour; the package bytes are dropped at once)

Two ways to send the bytes:

- **Chunks** (one request per chunk): every chunk's bytes are checked against the signed body
  digest before they reach the disk and fsynced before they are acknowledged, so
  ``data.part`` only ever holds a verified prefix of the package, even after a kill.
- **A stream** (:meth:`UploadManager.open_stream`): the upload was opened with the sha256 of
  every ``piece_size`` piece (the list is part of the signed create request), and one request
  carries the rest of the package. Each piece is hashed as it arrives and written only when
  it matches its listed digest; the file is fsynced every :data:`SYNC_BYTES` and when the
  stream ends, and only then is the new offset recorded in ``progress.json``. A broken
  connection therefore resumes from the last verified, fsynced piece; bytes past it (written
  but not yet recorded, e.g. before a kill) are cut off by the next write. When one stream
  carries the whole package, the whole sha256 is computed on the way and commit does not
  read the file again.
- **A chained stream** (protocol 2, :meth:`UploadManager.open_chain`): the upload is opened
  with its size, piece size and the sha256 of its first piece only, so the desktop sends at
  once without reading the file first. The body is the package's bytes from a piece
  boundary, then a proof: the sha256 of the package from byte 0 to the end of each piece
  not yet verified (32 bytes each) and the desktop's signature over them
  (:func:`device_agent.auth.proof_message`). The agent keeps one running sha256 of what it
  receives (each byte hashed once, while the next bytes arrive) and writes every piece as
  it comes; the pieces count as verified only once the proof matches, up to the first
  piece that does not (the file is cut there: 422, resume from it). A stream that breaks
  leaves its whole pieces as *received*: the next stream starts after them and its proof
  covers them too. The data is not fsynced while it streams: ``unsynced.json`` holds the
  kernel's boot id; a killed agent finds its writes in the page cache, while after a restart
  of the machine (another boot id) the upload starts again from byte 0. The last digest of
  the proof is the whole package's sha256, so commit does not read the file again.
- **A sealed stream** (protocol 4, ``open_chain(..., sealed=True)``): the same stream, written
  unhashed, ending with a seal: the package's sha256, its ``manifest.json``'s sha256 and the
  desktop's signature over them (:func:`device_agent.auth.seal_message`). Both digests go to
  ``meta.json`` (``sha256``, ``manifest_sha256``), then ``progress.json`` says ``sealed``; the
  commit does not hash the package but holds its manifest to the sealed digest and every
  file to the manifest as it is extracted (``ModelStore.install(manifest_sha=...)``).

The total sha256 is checked at commit (or on the way, as above). Uploads idle for longer
than the time-to-live are removed, and only a bounded number may be open at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device_agent.auth import PROOF_DIGEST_BYTES, PROOF_SIGNATURE_BYTES, SEAL_BYTES, pieces_digest
from device_agent.errors import AgentError, one_line
from runtimes.fileio import CHUNK, atomic_write_text, fsync_dir
from runtimes.package_digests import MAX_PIECES

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
META_FILE = "meta.json"
DATA_FILE = "data.part"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"
VOLATILE_FILE = "unsynced.json"  # {"boot"}: data.part holds bytes not fsynced in that boot
PIECES_CONTENT_TYPE = "application/x-outpost-pieces"  # a streamed PUT: the rest, piece by piece
CHAIN_CONTENT_TYPE = "application/x-outpost-chain"  # protocol 2: pieces with signed digests
SEALED_CONTENT_TYPE = "application/x-outpost-sealed"  # protocol 4: pieces, then a signed seal
# Protocol 3: a chained stream from byte 0 that opens its upload says what with (the name is
# percent-encoded UTF-8); its signed body digest is ``device_agent.auth.chain_open_digest``.
OPEN_LENGTH_HEADER = "Upload-Length"
OPEN_PIECE_HEADER = "Upload-Piece-Size"
OPEN_HEAD_HEADER = "Upload-Head-SHA256"
OPEN_NAME_HEADER = "Upload-Name"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
CHUNK_SIZE = 4 << 20  # what the agent asks clients to send per request
MAX_PIECE_SIZE = 64 << 20
SYNC_BYTES = 16 << 20  # a stream is fsynced (and its offset recorded) at least this often
STREAM_LOCK_TIMEOUT_S = 30.0  # a second stream waits this long for the first one to end
PROFILE_ENV = "OUTPOST_UPLOAD_PROFILE"  # "1": per-request timings on stderr (both sides)
MAX_UPLOADS = 4  # open (uncommitted) uploads at once
# With MAX_UPLOADS open, the one idle longest (at least this long, and no stream on it) is
# dropped for a new one: deploys cut off by a restart or Ctrl-C must not lock out the next.
EVICT_IDLE_S = 60.0
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


def profiling() -> bool:
    """Whether upload timings are logged (``OUTPOST_UPLOAD_PROFILE=1``)."""
    return os.environ.get(PROFILE_ENV) == "1"


def profile_line(side: str, **fields: Any) -> None:
    """One JSON line of upload timings on stderr, when :func:`profiling` is on."""
    if profiling():
        print(json.dumps({"upload_profile": side, **fields}), file=sys.stderr, flush=True)


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
    piece_size: int | None = None
    pieces: tuple[str, ...] = ()
    sha256_verified: bool = False
    head: str | None = None  # a chained upload's first-piece sha256 (``sha256`` is "" until done)
    received: int = 0  # whole pieces past ``offset`` on disk, not verified yet (chained streams)
    manifest_sha256: str | None = None  # a sealed upload's signed manifest digest (protocol 4)

    def as_dict(self, ttl_s: float, chunk_size: int) -> dict[str, Any]:
        streamed = (
            {"piece_size": self.piece_size, "pieces": len(self.pieces), "chain": True}
            if self.piece_size
            else {}
        )
        if self.received > self.offset:
            streamed["received"] = self.received
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
            **streamed,
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
        # The uploads found at the start that no request has used since: leftovers of the
        # process before (known by id, not by file times: a board without a clock steps it).
        self._from_before: set[str] = (
            {p.name for p in self.root.iterdir() if _ID.match(p.name)}
            if self.root.is_dir()
            else set()
        )
        self._committing: set[str] = set()  # ids whose commit request is under way
        self._locks: dict[str, threading.Lock] = {}
        self._reset_lock = threading.Lock()
        # A chained upload's running sha256 where its last stream ended (saves re-reading).
        self._chains: dict[str, tuple[int, Any, dict[int, bytes]]] = {}

    # -- reading ---------------------------------------------------------------------

    def state(self, upload_id: str) -> UploadState:
        folder = self._folder(upload_id)
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            size, sha256 = int(meta["size"]), str(meta["sha256"] or "")
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
        piece_size, pieces = _pieces_of(meta)
        marked = _volatile_boot(folder)
        if marked is not None and marked != boot_id():
            self._forget_unsynced(upload_id, folder)
        verified, sha_ok, sealed = _progress(folder)
        data = folder / DATA_FILE
        committed = (folder / RESULT_FILE).exists()
        received = 0
        try:
            stat = data.stat()
            offset, updated = stat.st_size, max(created, stat.st_mtime)
            if verified is not None:  # a streamed upload: only the recorded prefix counts
                offset = min(offset, verified)
                if piece_size is not None and not committed:
                    whole = stat.st_size - stat.st_size % piece_size
                    received = max(offset, size if stat.st_size >= size else whole)
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
            piece_size,
            pieces,
            sha_ok and verified == size and bool(sha256),
            head if isinstance(head := meta.get("head_sha256"), str) else None,
            received,
            manifest
            if sealed
            and verified == size
            and bool(sha256)
            and isinstance(manifest := meta.get("manifest_sha256"), str)
            and _SHA256.match(manifest)
            else None,
        )

    def _forget_unsynced(self, upload_id: str, folder: Path) -> None:
        """The machine restarted since a chained stream wrote bytes it did not fsync: they
        may be lost or garbage, so the upload starts again from byte 0."""
        with self._reset_lock:
            marked = _volatile_boot(folder)
            if marked is None or marked == boot_id():  # another thread did it meanwhile
                return
            _record_progress(folder, 0)  # first: never trust more than before
            with contextlib.suppress(FileNotFoundError):
                os.truncate(folder / DATA_FILE, 0)
            (folder / VOLATILE_FILE).unlink(missing_ok=True)
            self._chains.pop(upload_id, None)
            log.warning("upload %s: the device restarted mid-upload; it starts again", upload_id)

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

    def create(
        self,
        size: object,
        sha256: object,
        name: object = None,
        piece_size: object = None,
        pieces: object = None,
        head: object = None,
        fresh: bool = False,
    ) -> dict[str, Any]:
        """Open an upload of ``size`` bytes whose whole sha256 is ``sha256``.

        A chained upload (protocol 2) gives no ``sha256`` but ``piece_size`` and ``head``, the
        sha256 of its first piece: the whole sha256 comes with the last piece. An unfinished
        upload of the same size whose first piece may be the same is answered instead (unless
        ``fresh``), with ``sha256_prefix``: the sha256 of its bytes up to its offset, which the
        client compares with its own file before it resumes (:meth:`open_chain`).

        With ``piece_size`` and ``pieces`` (the sha256 of each ``piece_size`` piece, the last
        one shorter) the bytes may come as one stream (:meth:`open_stream`), each piece
        checked against its digest. An unfinished upload of the very same package is answered
        instead (with its offset), so a client that lost track of it (a restarted desktop)
        resumes where it stopped; its piece list is replaced by the new one, and its offset
        goes back to a piece boundary.
        """
        size = self._check_size_name(size, name)
        if sha256 is None and head is not None:
            return self._create_chained(size, name, piece_size, head, fresh)
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise UploadError(400, "sha256 must be the package's 64 lowercase hex digits")
        layout = _check_pieces(size, piece_size, pieces)
        with self._lock:
            states = self._scan()
            for same in states:  # the same package again (a deploy run again): resume it
                if (same.sha256, same.size) == (sha256, size):
                    if layout is not None and (same.piece_size, same.pieces) != layout:
                        self._relayout(same, layout)
                    self._touch(same.id)
                    log.info("upload %s resumed at byte %d", same.id, same.offset)
                    return self.describe(same.id)
            self._check_room(states)
            upload_id = self._new(size, sha256, name, layout)
        return self.describe(upload_id)

    def open_new(
        self, upload_id: str, size: object, name: object, piece_size: object, head: object
    ) -> None:
        """Open a chained upload under the id the desktop chose (protocol 3: the stream that
        carries the package opens its upload, without a round trip before it). Unlike
        :meth:`create` it never answers an unfinished upload of the same package: the stream
        is already on its way from byte 0. Unfinished uploads of the same package left from
        before the agent started and unused since (a deploy cut off by a crash and sent
        again) are dropped, so a device that keeps failing mid-deploy does not fill its
        upload slots with copies of one package. 409 when the id is taken."""
        if not _ID.match(upload_id):
            raise UploadError(400, "a new upload's id is 32 lowercase hex digits")
        size = self._check_size_name(size, name)
        piece = _check_piece_size(size, piece_size)
        head = _check_head(head)
        with self._lock:
            states = self._scan()
            if (self.root / upload_id).exists():
                raise UploadError(409, f"upload {upload_id} exists already; resume it")
            states = self._drop_leftovers(states, size, piece, head)
            self._check_room(states)
            self._new(size, None, name, (piece, ()), head, upload_id)

    def _drop_leftovers(
        self, states: list[UploadState], size: int, piece: int, head: str
    ) -> list[UploadState]:
        """Remove the unfinished uploads of the package of ``size`` whose first ``piece``
        bytes hash to ``head`` that were there when this agent started and that no request has
        used since (called with ``self._lock`` held); the uploads that are left."""
        kept = []
        for state in states:
            leftover = (
                not self._may_commit(state)
                and state.size == size
                and state.piece_size == piece
                and state.head == head
                and state.id in self._from_before
                and not self._streaming(state.id)
            )
            if not leftover:
                kept.append(state)
                continue
            self._drop(state.id)
            log.info(
                "upload %s (%d of %d bytes, from before the agent started) was dropped: "
                "the same package is being sent again",
                state.id,
                state.received or state.offset,
                state.size,
            )
        return kept

    def _streaming(self, upload_id: str) -> bool:
        """Whether a stream holds the upload now (called with ``self._lock`` held)."""
        lock = self._locks.get(upload_id)
        return lock is not None and lock.locked()

    def _drop(self, upload_id: str) -> None:
        """Remove an upload and what is kept of it in memory (``self._lock`` held)."""
        with contextlib.suppress(UploadError):
            self._remove(upload_id)
        self._locks.pop(upload_id, None)
        self._chains.pop(upload_id, None)

    def _may_commit(self, state: UploadState) -> bool:
        """Whether ``state`` is whole and in its commit, or may be soon: used since this agent
        started (a whole one from before a restart whose commit is not running was cut off with
        the agent)."""
        return state.offset >= state.size and (
            state.id in self._committing or state.id not in self._from_before
        )

    def _check_size_name(self, size: object, name: object) -> int:
        """``size`` as a whole number of bytes within the limit (and ``name`` a string)."""
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise UploadError(400, f"size must be a positive number of bytes, got {size!r}")
        if size > self.max_size:
            raise UploadError(413, f"the package is larger than {self.max_size} bytes; refusing it")
        if name is not None and not isinstance(name, str):
            raise UploadError(400, "name must be a string (the package file name)")
        return size

    def _check_room(self, states: list[UploadState]) -> None:
        """Make room for one more upload (called with ``self._lock`` held): with as many open
        as allowed, drop the one idle longest if it has been idle :data:`EVICT_IDLE_S` and no
        stream holds it and it is not whole (a deploy cut off mid-way: one whole may be in its
        commit) unless it is whole from before the agent started and no commit runs;
        429 when every one is in use."""
        if len(states) < self.max_uploads:
            return
        now = self.clock()
        idle = [
            state
            for state in states
            if now - state.updated_at >= EVICT_IDLE_S
            and not self._may_commit(state)
            and not self._streaming(state.id)
        ]
        if not idle:
            raise UploadError(
                429,
                f"{len(states)} uploads are in progress (limit {self.max_uploads}), each sent "
                f"to within the last {EVICT_IDLE_S:.0f} s; retry when one has finished",
            )
        oldest = min(idle, key=lambda state: state.updated_at)
        self._drop(oldest.id)
        log.info(
            "upload %s (idle %.0f s) was dropped to make room for a new one",
            oldest.id,
            now - oldest.updated_at,
        )

    def _new(
        self,
        size: int,
        sha256: str | None,
        name: object,
        layout: tuple[int, tuple[str, ...]] | None,
        head: str | None = None,
        upload_id: str | None = None,
    ) -> str:
        """Make a new upload's folder (called with ``self._lock`` held); its id (a new one
        unless given)."""
        upload_id = upload_id or secrets.token_hex(16)
        folder = self.root / upload_id
        tmp = self.root / f".new-{upload_id}"
        tmp.mkdir(parents=True)
        try:
            # The folder is this call's alone until it is renamed into place: its files are
            # written (and fsynced) where they stay, then the folder once.
            (tmp / DATA_FILE).touch()
            meta: dict[str, Any] = {
                "id": upload_id,
                "size": size,
                "sha256": sha256,
                "name": one_line(name, 128) if isinstance(name, str) and name else None,
                "created_at": self.clock(),
            }
            if layout is not None:
                meta["piece_size"], meta["pieces"] = layout[0], list(layout[1])
                _write_synced(tmp / PROGRESS_FILE, _progress_text(0, False))
            boot = boot_id() if head is not None else None
            if head is not None:
                meta["head_sha256"] = head
            if boot is not None:  # its stream will not fsync: saves a write when it opens
                _write_synced(tmp / VOLATILE_FILE, _volatile_text(boot))
            _write_synced(tmp / META_FILE, json.dumps(meta) + "\n")
            fsync_dir(tmp)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("upload %s opened (%d bytes)", upload_id, size)
        return upload_id

    def _create_chained(
        self, size: int, name: object, piece_size: object, head: object, fresh: bool
    ) -> dict[str, Any]:
        piece = _check_piece_size(size, piece_size)
        head = _check_head(head)
        with self._lock:
            states = self._scan()
            same = None
            if not fresh:  # the newest open upload that may hold the same package
                candidates = [
                    s for s in states if s.size == size and _may_start_with(s, piece, head)
                ]
                same = max(candidates, key=lambda s: s.updated_at, default=None)
            if same is not None:
                if same.piece_size != piece:
                    self._relayout(same, (piece, ()))
                self._touch(same.id)
                upload_id = same.id
            else:
                self._check_room(states)
                upload_id = self._new(size, None, name, (piece, ()), head)
        with self._lock_for(upload_id):
            state = self.state(upload_id)
            resumed = bool(state.offset or state.received)
            if resumed:
                running, _ = self._prefix(upload_id, state.offset, state.offset)
        answer = state.as_dict(self.ttl_s, self.chunk_size)
        if resumed:
            log.info("upload %s resumed at byte %d", upload_id, state.offset)
            answer["sha256_prefix"] = running.hexdigest()
        return answer

    def _prefix(self, upload_id: str, start: int, end: int) -> tuple[Any, dict[int, bytes]]:
        """The running sha256 of ``data.part[0:end]`` and its digests at the piece ends in
        (``start``, ``end``]; from where the last stream stopped, or read again (lock held)."""
        cached = self._chains.get(upload_id)
        if cached is not None and cached[0] == end:
            piece = self.state(upload_id).piece_size or 1
            ends = [*range(start + piece, end + 1, piece)]
            if end > start and end % piece:
                ends.append(end)  # the package's last, shorter piece
            if all(e in cached[2] for e in ends):
                return cached[1].copy(), {e: cached[2][e] for e in ends}
        piece = self.state(upload_id).piece_size or CHUNK
        digest = hashlib.sha256()
        digests: dict[int, bytes] = {}
        at = 0
        with open(self._folder(upload_id) / DATA_FILE, "rb") as fh:
            while at < end:
                block = fh.read(min(CHUNK, end - at, piece - at % piece))
                if not block:
                    raise UploadError(
                        410, f"upload {upload_id} is damaged; delete it and start a new one"
                    )
                digest.update(block)
                at += len(block)
                if at > start and at % piece == 0:
                    digests[at] = digest.digest()
        if end > start and end not in digests:
            digests[end] = digest.digest()  # the package's last, shorter piece
        return digest, digests

    def _touch(self, upload_id: str) -> None:
        """An upload handed back to a client that resumes it is in use again: it is neither
        the idle one dropped to make room before its stream starts, nor expired a day later."""
        now = self.clock()
        with contextlib.suppress(OSError):
            os.utime(self._folder(upload_id) / DATA_FILE, (now, now))

    def _relayout(self, state: UploadState, layout: tuple[int, tuple[str, ...]]) -> None:
        """Give an open upload a new piece layout; its offset drops to a piece boundary.

        Called with ``self._lock`` held, so it does not wait for a stream that holds the
        upload (every other upload request, and the commits, would wait with it): 409 at once.
        """
        lock = self._locks.setdefault(state.id, threading.Lock())
        if not lock.acquire(blocking=False):
            raise UploadError(
                409,
                f"upload {state.id} is being sent by another request; retry when it ends (a "
                "deploy cut off a moment ago ends within a minute)",
            )
        try:
            state = self.state(state.id)
            folder = self._folder(state.id)
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            boundary = state.offset - state.offset % layout[0]
            _record_progress(folder, boundary, False)  # first: never trust more than before
            meta["piece_size"], meta["pieces"] = layout[0], list(layout[1])
            atomic_write_text(folder / META_FILE, json.dumps(meta) + "\n")
        finally:
            lock.release()

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
            if not state.sha256:
                raise UploadError(
                    400,
                    f"upload {upload_id} is a chained upload (its sha256 comes with its last "
                    "piece); send it as a chained stream",
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
            folder = self._folder(upload_id)
            with open(folder / DATA_FILE, "r+b") as fh:
                fh.seek(offset)
                fh.write(data)
                fh.truncate()
                fh.flush()
                os.fsync(fh.fileno())
            if state.piece_size is not None:  # a streamed upload also takes plain chunks
                _record_progress(folder, offset + len(data), False)
            return self.describe(upload_id)

    def open_stream(self, upload_id: str, offset: int) -> PieceWriter:
        """A writer for the rest of a streamed upload from ``offset`` (where it stands).

        It holds the upload until :meth:`PieceWriter.close` (a second stream waits for it).
        Raises :class:`UploadError`: 409 (with the agent's offset) when ``offset`` is not where
        the upload stands, 400 when the upload was opened without a piece list.
        """
        lock, state = self._hold_open(upload_id)
        try:
            if state.piece_size is None or not state.pieces:
                raise UploadError(
                    400,
                    f"upload {upload_id} was opened without a piece list; send it in chunks "
                    "or open it again with piece_size and pieces",
                )
            state = self._at_boundary(state, offset)
            return PieceWriter(self._folder(upload_id), state, lock)
        except BaseException:
            lock.release()
            raise

    def _hold_open(self, upload_id: str) -> tuple[threading.Lock, UploadState]:
        """Take the upload's lock for a stream and read its state; 409 when another request
        holds it or the upload is committed (the lock is not kept then)."""
        lock = self._lock_for(upload_id)
        if not lock.acquire(timeout=STREAM_LOCK_TIMEOUT_S):
            raise UploadError(
                409, f"upload {upload_id} is busy with another request; retry in a moment"
            )
        try:
            state = self.state(upload_id)
            if state.committed:
                raise UploadError(409, f"upload {upload_id} is already committed", state.size)
        except BaseException:
            lock.release()
            raise
        return lock, state

    def _at_boundary(self, state: UploadState, offset: int) -> UploadState:
        """The upload moved back to a piece boundary; 409 when ``offset`` is not where it is."""
        assert state.piece_size is not None
        if state.offset % state.piece_size:  # plain chunks left it between two pieces
            boundary = state.offset - state.offset % state.piece_size
            _record_progress(self._folder(state.id), boundary, False)
            state = self.state(state.id)
        if offset != state.offset:
            raise UploadError(
                409,
                f"upload {state.id} is at byte {state.offset}, not {offset}; "
                f"resume from {state.offset}",
                state.offset,
            )
        return state

    def open_chain(
        self,
        upload_id: str,
        proof_from: int,
        offset: int,
        authentic: Callable[[int, bytes, bytes], bool],
        sealed: bool = False,
    ) -> ChainWriter:
        """A writer for a chained stream (protocol 2) of the rest of the upload from
        ``offset`` whose proof covers the pieces after ``proof_from`` (where it is verified).

        ``offset`` may be past ``proof_from``, up to what earlier streams left received.
        ``authentic(proof_from, digests, signature)`` says whether the desktop signed those
        digests. A ``sealed`` stream (protocol 4) ends with a seal instead:
        ``authentic(size, package_sha + manifest_sha, signature)`` says whether the desktop
        signed it, and nothing is hashed. Holds the upload until :meth:`ChainWriter.close`. Raises
        :class:`UploadError`: 409 (with the agent's offset) when ``proof_from`` is not where
        the upload is verified or ``offset`` is not a received piece boundary, 400 when the
        upload was opened without a piece size.
        """
        lock, state = self._hold_open(upload_id)
        try:
            if state.piece_size is None:
                raise UploadError(
                    400,
                    f"upload {upload_id} was opened without a piece size; send it in chunks "
                    "or open it again with piece_size",
                )
            state = self._at_boundary(state, proof_from)
            assert state.piece_size is not None
            received = max(state.offset, state.received)
            boundary = offset % state.piece_size == 0 or offset == state.size
            if not (state.offset <= offset <= received and boundary):
                raise UploadError(
                    409,
                    f"upload {upload_id} is verified up to byte {state.offset} and holds "
                    f"{received}: a stream starts at a piece boundary between them, not at "
                    f"{offset}; resume from {received}",
                    state.offset,
                )
            running, digests = (
                (None, {}) if sealed else self._prefix(upload_id, state.offset, offset)
            )
            folder = self._folder(upload_id)
            return ChainWriter(self, folder, state, offset, lock, running, digests, authentic)
        except BaseException:
            lock.release()
            raise

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
            if state.sha256_verified:  # one stream carried it all and hashed it on the way
                return path
            if state.manifest_sha256:  # sealed: the install checks every file (protocol 4)
                return path
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
        with contextlib.suppress(OSError):
            (folder / VOLATILE_FILE).unlink()
        self._chains.pop(upload_id, None)

    def commit_began(self, upload_id: str) -> None:
        """A commit request for ``upload_id`` arrived (it may wait for another install): the
        upload is not dropped for room or as a leftover until :meth:`commit_ended`."""
        with self._lock:
            self._committing.add(upload_id)
            self._from_before.discard(upload_id)

    def commit_ended(self, upload_id: str) -> None:
        """The commit that :meth:`commit_began` announced is over, however it ended."""
        with self._lock:
            self._committing.discard(upload_id)

    def delete(self, upload_id: str) -> dict[str, Any]:
        self._remove(upload_id)
        with self._lock:
            self._locks.pop(upload_id, None)
            self._chains.pop(upload_id, None)
        log.info("upload %s deleted", upload_id)
        return {"id": upload_id, "deleted": True}

    def _remove(self, upload_id: str) -> None:
        """Take the upload's folder away at once (renamed, then removed); 404 when none."""
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

    def purge_expired(self) -> list[str]:
        """Remove uploads idle past the time-to-live, and leftovers of interrupted changes."""
        removed: list[str] = []
        self._scan(removed)
        return removed

    def _scan(self, removed: list[str] | None = None) -> list[UploadState]:
        """:meth:`purge_expired` (the ids removed go to ``removed``); the open uploads' states.

        A committed upload is known by its result file: its age is that file's, and nothing
        else of it is read (they stay an hour, so a busy agent holds many).
        """
        removed = [] if removed is None else removed
        live: list[UploadState] = []
        if not self.root.is_dir():
            return live
        now = self.clock()
        for child in self.root.iterdir():
            if child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True)
                continue
            try:
                done: float | None = (child / RESULT_FILE).stat().st_mtime
            except OSError:
                done = None
            if done is not None and _ID.match(child.name):
                if now - done > min(self.ttl_s, COMMITTED_TTL_S):
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child.name)
                continue
            try:
                state = self.state(child.name)
            except UploadError:
                shutil.rmtree(child, ignore_errors=True)
                continue
            if now - state.updated_at > self.ttl_s:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
            else:
                live.append(state)
        for upload_id in removed:
            log.info("upload %s expired and was removed", upload_id)
        return live

    # -- helpers ---------------------------------------------------------------------

    def _folder(self, upload_id: str) -> Path:
        if not _ID.match(upload_id):
            raise UploadError(404, f"upload {upload_id!r} does not exist; start a new one")
        return self.root / upload_id

    def _lock_for(self, upload_id: str) -> threading.Lock:
        """The upload's own lock; the upload counts as used since the start from here on."""
        self._folder(upload_id)
        with self._lock:
            self._from_before.discard(upload_id)
            return self._locks.setdefault(upload_id, threading.Lock())


class PieceWriter:
    """Writes a stream's verified pieces to ``data.part``; used from one thread at a time.

    Made by :meth:`UploadManager.open_stream`, which holds the upload's lock until
    :meth:`close`. :meth:`add` checks one whole piece against its listed sha256 and writes it.
    Every :data:`SYNC_BYTES` an fsync starts in a helper thread (the disk writes while the
    next pieces arrive) and, once it returns, the offset it covered is recorded; :meth:`close`
    waits for it, fsyncs the rest and records the final offset. When the stream starts at
    byte 0 the whole sha256 is computed in the helper thread alongside each piece's.
    """

    def __init__(self, folder: Path, state: UploadState, lock: threading.Lock) -> None:
        assert state.piece_size is not None
        self.folder = folder
        self.upload_id = state.id
        self.size = state.size
        self.piece_size = state.piece_size
        self.pieces = state.pieces
        self.sha256 = state.sha256
        self.start = state.offset
        self.offset = state.offset  # verified and written (not yet all fsynced)
        self.synced = state.offset  # verified, fsynced and recorded
        self._lock: threading.Lock | None = lock
        # The whole sha256 on the way, when this stream starts at byte 0.
        self._whole = hashlib.sha256() if state.offset == 0 else None
        self._helpers = ThreadPoolExecutor(2, "outpost-upload-stream")
        self._syncing: Future[None] | None = None
        self._fh = open(folder / DATA_FILE, "r+b")  # noqa: SIM115 (closed by close())
        _cut_to(self._fh.fileno(), state.offset)  # bytes past the recorded prefix are not trusted
        self._fh.seek(state.offset)
        self.timings = {"hash_s": 0.0, "write_s": 0.0, "fsync_s": 0.0, "final_fsync_s": 0.0}

    @property
    def body_sha256(self) -> str:
        """What a signed stream from here signs as its body digest (see ``pieces_digest``)."""
        return pieces_digest(self.pieces, self.offset // self.piece_size)

    @property
    def remaining(self) -> int:
        return self.size - self.offset

    def next_piece_length(self, at: int) -> int:
        """The length of the piece that starts at byte ``at``."""
        return min(self.piece_size, self.size - at)

    def add(self, parts: Sequence[bytes | memoryview]) -> int:
        """Check the piece made of ``parts`` against its digest and append it; the new offset.

        Raises :class:`UploadError` (422, with the verified offset) when it does not match.
        """
        t0 = time.perf_counter()
        index = self.offset // self.piece_size
        length = sum(len(p) for p in parts)
        if index >= len(self.pieces) or length != self.next_piece_length(self.offset):
            raise UploadError(
                400,
                f"upload {self.upload_id}: the piece at byte {self.offset} has {length} bytes, "
                f"not {self.next_piece_length(self.offset)}; resume from {self.offset}",
                self.offset,
            )
        whole = None
        if self._whole is not None:  # hashed in the helper thread meanwhile (no GIL held)
            whole = self._whole.copy()
            whole_job = self._helpers.submit(_update, whole, parts)
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        if whole is not None:
            whole_job.result()
        if digest.hexdigest() != self.pieces[index]:
            raise UploadError(
                422,
                f"upload {self.upload_id}: piece {index} (bytes {self.offset}-"
                f"{self.offset + length - 1}) does not match its sha256; it was altered on the "
                f"way, resume from {self.offset}",
                self.offset,
            )
        if whole is not None:
            self._whole = whole
        t1 = time.perf_counter()
        self._fh.writelines(parts)
        self.offset += length
        t2 = time.perf_counter()
        self.timings["hash_s"] += t1 - t0
        self.timings["write_s"] += t2 - t1
        syncing = self._syncing
        if self.offset - self.synced >= SYNC_BYTES and (syncing is None or syncing.done()):
            if syncing is not None:
                syncing.result()  # raises what the last fsync raised
            self._fh.flush()
            self._syncing = self._helpers.submit(self._sync_to, self.offset)
        return self.offset

    def _sync_to(self, offset: int) -> None:
        """fsync what was written up to ``offset`` (flushed already), then record it."""
        t0 = time.perf_counter()
        os.fsync(self._fh.fileno())
        _record_progress(self.folder, offset, self._whole_ok(offset))
        self.synced = offset
        self.timings["fsync_s"] += time.perf_counter() - t0

    def _whole_ok(self, offset: int) -> bool:
        return (
            self._whole is not None
            and offset == self.size
            and self._whole.hexdigest() == self.sha256
        )

    def close(self) -> int:
        """Sync what was verified, close the file and let go of the upload; the offset."""
        try:
            if self._syncing is not None:
                self._syncing.result()
            if self.offset != self.synced:
                t0 = time.perf_counter()
                self._fh.flush()
                self._sync_to(self.offset)
                self.timings["final_fsync_s"] += time.perf_counter() - t0
        finally:
            self._helpers.shutdown(wait=True)
            self._fh.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        return self.synced


def _update(digest: Any, parts: Sequence[bytes | memoryview]) -> None:
    for part in parts:
        digest.update(part)


class ChainWriter:
    """Writes a chained stream's pieces (protocol 2) to ``data.part``; one thread at a time.

    Made by :meth:`UploadManager.open_chain`, which holds the upload's lock until
    :meth:`close`. :meth:`add` hashes one piece into the running sha256 of the package (each
    byte once) and writes it with plain ``os.write`` calls (no copy into a buffer);
    :meth:`prove` checks the desktop's signed digests and records the verified offset. The
    data is not fsynced (see the module notes); where the kernel's boot id cannot be read,
    the verified offset is recorded only after an fsync instead.

    Without a running sha256 (``running`` None) the stream is *sealed* (protocol 4): the
    pieces are written unhashed and :meth:`prove` checks the desktop's signed seal, the
    package's sha256 and its manifest's, which the commit then holds every file to.
    """

    def __init__(
        self,
        manager: UploadManager,
        folder: Path,
        state: UploadState,
        offset: int,
        lock: threading.Lock,
        running: Any,
        digests: dict[int, bytes],
        authentic: Callable[[int, bytes, bytes], bool],
    ) -> None:
        assert state.piece_size is not None
        self.manager = manager
        self.folder = folder
        self.upload_id = state.id
        self.size = state.size
        self.piece_size = state.piece_size
        self.declared = state.sha256  # "" for a chained upload until it is proven
        self.verified = state.offset  # the proof covers the pieces after it
        self.start = self.offset = offset  # written (whole pieces)
        self._running = running  # sha256 of bytes [0, offset)
        self._digests = digests  # the running sha256 at each piece end after ``verified``
        self._authentic = authentic
        self._lock: threading.Lock | None = lock
        self._boot = boot_id()
        if self._boot is not None and _volatile_boot(folder) != self._boot:
            _mark_unsynced(folder)  # before any byte that will not be fsynced
        # One thread takes the pieces in order (:meth:`submit`); another writes each piece
        # while the first hashes it (both let go of the GIL).
        self._worker = ThreadPoolExecutor(1, "outpost-upload-chain")
        self._io = ThreadPoolExecutor(1, "outpost-upload-write")
        self._fd = os.open(folder / DATA_FILE, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        _cut_to(self._fd, offset)  # a partial piece past it is not kept
        os.lseek(self._fd, offset, os.SEEK_SET)
        self.timings = {"hash_s": 0.0, "write_wait_s": 0.0, "prove_s": 0.0}

    def next_piece_length(self, at: int) -> int:
        """The length of the piece that starts at byte ``at``."""
        return min(self.piece_size, self.size - at)

    @property
    def remaining(self) -> int:
        return self.size - self.offset

    @property
    def sealed(self) -> bool:
        return self._running is None

    @property
    def proof_length(self) -> int:
        """The bytes of the proof that ends the stream: a digest per piece, then a signature
        (a sealed stream: its seal)."""
        if self.sealed:
            return SEAL_BYTES
        pieces = -(-(self.size - self.verified) // self.piece_size)
        return pieces * PROOF_DIGEST_BYTES + PROOF_SIGNATURE_BYTES

    def submit(self, parts: Sequence[bytes | memoryview]) -> Future[int]:
        """:meth:`add` the piece in the writer's thread, after the pieces submitted before."""
        return self._worker.submit(self.add, parts)

    def add(self, parts: Sequence[bytes | memoryview]) -> int:
        """Hash the piece made of ``parts`` into the running sha256 and append it; the new
        offset (received, not verified until :meth:`prove`)."""
        t0 = time.perf_counter()
        length = sum(len(p) for p in parts)
        if length != self.next_piece_length(self.offset):
            raise UploadError(
                400,
                f"upload {self.upload_id}: the piece at byte {self.offset} has {length} bytes, "
                f"not {self.next_piece_length(self.offset)}; resume from {self.verified}",
                self.verified,
            )
        if self.sealed:  # nothing to hash
            t1 = time.perf_counter()
            self._write(parts)
            self.offset += length
            self.timings["write_wait_s"] += time.perf_counter() - t1
            return self.offset
        writing = self._io.submit(self._write, parts)
        try:
            for part in parts:
                self._running.update(part)
        finally:
            t1 = time.perf_counter()
            writing.result()
        self.offset += length
        self._digests[self.offset] = self._running.digest()
        self.timings["hash_s"] += t1 - t0
        self.timings["write_wait_s"] += time.perf_counter() - t1
        return self.offset

    def _write(self, parts: Sequence[bytes | memoryview]) -> None:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(self._fd, view) :]

    def prove(self, proof: bytes) -> int:
        """Check the stream's proof (its signature, then each piece's digest in order) and
        record the verified offset; the new offset.

        Raises :class:`UploadError` (422, with the verified offset) when the signature does not
        verify or a piece does not match (the file is cut at that piece).
        """
        t0 = time.perf_counter()
        if self.offset != self.size or len(proof) != self.proof_length:
            raise UploadError(
                400,
                f"upload {self.upload_id}: a chained stream ends with the package's last byte "
                f"and a proof of {self.proof_length} bytes; resume from {self.verified}",
                self.verified,
            )
        if self.sealed:
            self._seal(proof)
            self.timings["prove_s"] += time.perf_counter() - t0
            return self.size
        digests = proof[:-PROOF_SIGNATURE_BYTES]
        if not self._authentic(self.verified, digests, proof[-PROOF_SIGNATURE_BYTES:]):
            raise UploadError(
                422,
                f"upload {self.upload_id}: the proof of the stream does not verify; it was "
                f"altered on the way, resume from {self.verified}",
                self.verified,
            )
        ends = range(self.verified + self.piece_size, self.size, self.piece_size)
        for index, end in enumerate([*ends, self.size]):
            claimed = digests[index * PROOF_DIGEST_BYTES : (index + 1) * PROOF_DIGEST_BYTES]
            if not hmac.compare_digest(self._digests.get(end, b""), claimed):
                start = (end - 1) - (end - 1) % self.piece_size
                self._cut(start)
                raise UploadError(
                    422,
                    f"upload {self.upload_id}: piece {start // self.piece_size} (bytes {start}-"
                    f"{end - 1}) does not match its signed sha256; it was altered on the way, "
                    f"resume from {start}",
                    start,
                )
        whole = self._running.hexdigest()
        if self.declared:
            self._record(self.size, whole == self.declared)
        else:  # the last digest of the proof is the package's sha256: meta.json first (a
            # verified offset without the sha256 in meta.json does not count, see ``state``)
            meta_path = self.folder / META_FILE
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            meta["sha256"] = whole
            atomic_write_text(meta_path, json.dumps(meta) + "\n", sync=self._boot is None)
            self._record(self.size, True)
            self.declared = whole
        self.timings["prove_s"] += time.perf_counter() - t0
        return self.size

    def _seal(self, seal: bytes) -> None:
        """Check a sealed stream's seal and record the package as received whole: the package's
        sha256 and its manifest's in meta.json first, then the offset (422 when the seal does
        not verify, or names another package than the upload was opened for)."""
        signed = seal[:-PROOF_SIGNATURE_BYTES]
        package_sha, manifest_sha = signed[:32].hex(), signed[32:].hex()
        if not self._authentic(self.size, signed, seal[-PROOF_SIGNATURE_BYTES:]):
            raise UploadError(
                422,
                f"upload {self.upload_id}: the seal of the stream does not verify; it was "
                f"altered on the way, resume from {self.verified}",
                self.verified,
            )
        if self.declared and self.declared != package_sha:
            raise UploadError(
                422,
                f"upload {self.upload_id} was opened for another package than the one its "
                "stream seals; delete it and deploy again",
                self.verified,
            )
        meta_path = self.folder / META_FILE
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta.update(sha256=package_sha, manifest_sha256=manifest_sha)
        atomic_write_text(meta_path, json.dumps(meta) + "\n", sync=self._boot is None)
        if self._boot is None:
            os.fsync(self._fd)
        _record_progress(self.folder, self.size, sealed=True, sync=self._boot is None)
        self.verified = self.size
        self.declared = package_sha

    def _cut(self, at: int) -> None:
        """Keep only the bytes before ``at`` (a piece that did not match starts there)."""
        if at > self.verified:
            self._record(at, False)
        os.ftruncate(self._fd, at)
        self.offset = at
        self.manager._chains.pop(self.upload_id, None)

    def _record(self, offset: int, sha256_verified: bool) -> None:
        """Record ``offset`` (written already, proven) as where the upload is verified.

        With a boot id the data is not fsynced, and neither is the record: a killed agent
        finds both in the page cache, and after a restart of the machine the upload starts
        again whatever the record says (see :meth:`UploadManager.state`). Without one, the
        data is fsynced first, then the record.
        """
        if self._boot is None:
            os.fsync(self._fd)
        _record_progress(self.folder, offset, sha256_verified, sync=self._boot is None)
        self.verified = offset

    def close(self) -> int:
        """Close the file and let go of the upload; the verified offset."""
        try:
            self._worker.shutdown(wait=True)
            self._io.shutdown(wait=True)
            os.close(self._fd)
            if self.offset > self.verified and not self.sealed:  # to be proven next stream
                self.manager._chains[self.upload_id] = (
                    self.offset,
                    self._running.copy(),
                    dict(self._digests),
                )
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        return self.verified


def _cut_to(fd: int, size: int) -> None:
    """Make the open file ``size`` bytes long, leaving it alone when it is already.

    Truncating a file to its own length is not a no-op on ext4: a truncate to zero marks the
    file so that closing it starts the writeback of everything written since (its
    ``auto_da_alloc`` safeguard for files rewritten in place), which made closing a fresh
    50 MiB upload cost 5-25 ms here, after its last byte and before the agent's answer.
    """
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)


def boot_id() -> str | None:
    """The kernel's id of this boot (None where it cannot be read): unsynced bytes written
    under another boot id may have been lost when the machine stopped."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _mark_unsynced(folder: Path) -> None:
    """Record that ``data.part`` may hold bytes not fsynced during this boot."""
    boot = boot_id()
    if boot is not None:
        atomic_write_text(folder / VOLATILE_FILE, _volatile_text(boot))


def _volatile_text(boot: str) -> str:
    return json.dumps({"boot": boot}) + "\n"


def _write_synced(path: Path, text: str) -> None:
    """Write a new file in a folder no one else sees yet, and fsync it."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _volatile_boot(folder: Path) -> str | None:
    """The boot id under which unsynced bytes were written to ``data.part`` (None if none)."""
    try:
        data = json.loads((folder / VOLATILE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return ""  # unreadable: treat as another boot
    boot = data.get("boot") if isinstance(data, dict) else None
    return boot if isinstance(boot, str) else ""


def _check_head(head: object) -> str:
    if not isinstance(head, str) or not _SHA256.match(head):
        raise UploadError(
            400, "head_sha256 must be the sha256 (64 lowercase hex digits) of the first piece"
        )
    return head


def _may_start_with(state: UploadState, piece_size: int, head: str) -> bool:
    """Whether an open upload may be the package whose first piece has sha256 ``head`` (the
    client then compares the prefix digest before it resumes)."""
    if state.piece_size != piece_size:
        return True  # its first piece's digest is not known in this size
    if state.pieces:
        return state.pieces[0] == head
    return state.head is None or state.head == head


def _check_piece_size(size: int, piece_size: object) -> int:
    if (
        not isinstance(piece_size, int)
        or isinstance(piece_size, bool)
        or not 0 < piece_size <= MAX_PIECE_SIZE
    ):
        raise UploadError(
            400,
            f"piece_size must be a number of bytes from 1 to {MAX_PIECE_SIZE}, got {piece_size!r}",
        )
    count = -(-size // piece_size)
    if count > MAX_PIECES:
        raise UploadError(
            400,
            f"{count} pieces of {piece_size} bytes is more than {MAX_PIECES}; use pieces of at "
            f"least {-(-size // MAX_PIECES)} bytes",
        )
    return piece_size


def _check_pieces(
    size: int, piece_size: object, pieces: object
) -> tuple[int, tuple[str, ...]] | None:
    """The upload's piece layout, checked (None when the client sent none)."""
    if piece_size is None and pieces is None:
        return None
    piece_size = _check_piece_size(size, piece_size)
    count = -(-size // piece_size)
    if (
        not isinstance(pieces, list)
        or len(pieces) != count
        or not all(isinstance(p, str) and _SHA256.match(p) for p in pieces)
    ):
        raise UploadError(
            400,
            f"pieces must list the sha256 (64 lowercase hex digits) of each of the {count} "
            f"pieces of {piece_size} bytes",
        )
    return piece_size, tuple(pieces)


def _pieces_of(meta: dict[str, Any]) -> tuple[int | None, tuple[str, ...]]:
    piece_size, pieces = meta.get("piece_size"), meta.get("pieces")
    if isinstance(piece_size, int) and piece_size > 0 and isinstance(pieces, list):
        return piece_size, tuple(str(p) for p in pieces)
    return None, ()


def _progress(folder: Path) -> tuple[int | None, bool, bool]:
    """The recorded verified offset of a streamed upload (None for a chunked one), whether the
    whole sha256 was checked on the way, and whether a seal (protocol 4) closed it."""
    try:
        data = json.loads((folder / PROGRESS_FILE).read_text(encoding="utf-8"))
        return (
            int(data["offset"]),
            data.get("sha256_verified", False) is True,
            data.get("sealed", False) is True,
        )
    except FileNotFoundError:
        return None, False, False
    except (OSError, ValueError, KeyError, TypeError):
        return 0, False, False  # unreadable: trust nothing, the upload restarts from byte 0


def _record_progress(
    folder: Path,
    offset: int,
    sha256_verified: bool = False,
    *,
    sealed: bool = False,
    sync: bool = True,
) -> None:
    text = _progress_text(offset, sha256_verified, sealed)
    atomic_write_text(folder / PROGRESS_FILE, text, sync=sync)


def _progress_text(offset: int, sha256_verified: bool, sealed: bool = False) -> str:
    record: dict[str, Any] = {"offset": offset, "sha256_verified": sha256_verified}
    if sealed:
        record["sealed"] = True
    return json.dumps(record) + "\n"
