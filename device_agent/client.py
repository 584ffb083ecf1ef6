"""A small typed HTTP client for the agent API v1 (used by the desktop CLI and GUI).

A client made with the desktop's ``key`` signs every request; one made with the agent's
pinned public key (``agent_key``) or id (``agent_id``) refuses any answer that is not signed
by that agent, with a "fingerprint mismatch" when another key answers. Reads and images to
infer on go through one kept-alive connection of their own (:mod:`device_agent.line`), signed
and checked the same way; everything else through httpx.

Example:
    >>> client = AgentClient("http://192.168.1.20:8765", key=desktop, agent_key=pinned)  # doctest: +SKIP
    >>> client.upload_package(Path("shapes.outpost.zip"))["version"]  # doctest: +SKIP
    '1'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

import httpx

from device_agent import line as agent_line
from device_agent.auth import (
    AGENT_KEY_HEADER,
    AGENT_TIME_KEY,
    BODY_HASH_HEADER,
    KEY_HEADER,
    NONCE_HEADER,
    PROOF_DIGEST_BYTES,
    PROOF_SIGNATURE_BYTES,
    SEAL_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    FingerprintMismatchError,
    KeyPair,
    agent_id_for,
    b64,
    chain_body_digest,
    chain_open_digest,
    desktop_pairing_proof,
    fingerprint,
    new_nonce,
    pieces_digest,
    proof_message,
    request_message,
    response_message,
    seal_message,
    sha256_hex,
    unb64,
    valid_nonce,
    valid_sha256,
    verify,
)
from device_agent.errors import (
    AgentAnswerError,
    AgentRejectedError,
    AgentUnreachableError,
    one_line,
)
from device_agent.file_body import FILE_BODY, FileBody, FileBodyTransport, shorter_while_sent
from device_agent.line import (
    AgentLine,
    HeaderLookup,
    answer_field,
    refuse_unbounded,
    too_large,
    unreachable,
)
from device_agent.protocol_version import (
    UPGRADE_STATUS,
    IncompatibleProtocolError,
    check_agent_info,
    protocol_headers,
)
from device_agent.uploads import (
    CHAIN_CONTENT_TYPE,
    OPEN_HEAD_HEADER,
    OPEN_LENGTH_HEADER,
    OPEN_NAME_HEADER,
    OPEN_PIECE_HEADER,
    PIECES_CONTENT_TYPE,
    SEALED_CONTENT_TYPE,
    profile_line,
)
from runtimes.errors import PackageError
from runtimes.fileio import sha256_file
from runtimes.package import manifest_digest, package_is_sound
from runtimes.package_digests import hash_piece_ends, piece_size_for, read_digests

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "AgentClient",
    "AgentRejectedError",
    "AgentUnreachableError",
    "FingerprintMismatchError",
    "IncompatibleProtocolError",
    "SignedAuth",
    "pair_with_agent",
]

UPLOAD_TIMEOUT_S = 600.0  # big packages, slow links, plus model loading on the device
CHUNK_TIMEOUT_S = 120.0  # one chunk of a resumable upload
DEFAULT_CHUNK = 4 << 20
MAX_CHUNK = 64 << 20  # the most an agent may ask to be sent per request
DEFAULT_TIMEOUT_S = 10.0  # seconds to connect, and between two reads of an answer
SINGLE_SHOT_BYTES = 1 << 20  # packages up to this size go in one request by default
UPLOAD_RETRIES = 5  # connection errors in a row before a resumable upload gives up
STREAM_BLOCK = 1 << 20  # a streamed upload reads and sends the file in blocks of this size
CHAIN_PROTOCOL = 2  # the first protocol whose agents take chained streams
OPEN_IN_STREAM_PROTOCOL = 3  # the first whose chained streams may open their upload
SEAL_PROTOCOL = 4  # the first whose agents take sealed streams (nothing hashed on the way)
FRAME_PROTOCOL = 5  # the first whose agents take decoded frames (.npy) to infer on
OPEN_IN_STREAM_BYTES = 256 << 20  # larger packages open their upload first (it may resume)


class SignedAuth(httpx.Auth):
    """httpx auth: signs requests with ``key`` and checks that the pinned agent signed the answer.

    Args:
        key: the desktop's key; None sends unsigned requests (only discovery info answers).
        agent_key: the pinned agent's raw public key; answers must be signed by it.
        agent_id: when no key is pinned yet, answers must come from a key with this id.
    """

    requires_response_body = True

    def __init__(
        self, key: KeyPair | None, agent_key: bytes | None = None, agent_id: str | None = None
    ) -> None:
        self.key = key
        self.agent_key = agent_key
        self.agent_id = agent_id_for(agent_key) if agent_key is not None else agent_id
        self.answered_key: bytes | None = None
        # The agent's clock minus this machine's (seconds): requests are signed with the
        # agent's time, so a device whose clock is off (no NTP on an offline LAN, no RTC
        # battery) still takes them. Learnt from its signed answers only.
        self.clock_offset = 0.0
        self.clock_known = False

    def learn_clock(self, agent_time: object, sent: float, answered: float) -> bool:
        """Take the agent's clock from an answer it signed (``agent_time``, read between
        ``sent`` and ``answered``); whether it was a number."""
        if isinstance(agent_time, bool) or not isinstance(agent_time, (int, float)):
            return False
        if not math.isfinite(agent_time):
            return False
        self.clock_offset = float(agent_time) - (sent + answered) / 2
        self.clock_known = True
        return True

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        nonce = request.headers.get(NONCE_HEADER)  # a chained stream signs pieces with it
        if not valid_nonce(nonce):
            nonce = new_nonce()
        nonce = str(nonce)
        request.headers[NONCE_HEADER] = nonce
        if self.key is not None:
            if self.agent_id is None:
                raise AuthError("a signed request needs the agent's id or pinned key")
            body_sha = request.headers.get(BODY_HASH_HEADER)
            if not valid_sha256(body_sha):
                # In-memory bodies (bytes, multipart forms); upload_package hashes its file.
                body_sha = sha256_hex(request.read())
            request.headers[BODY_HASH_HEADER] = str(body_sha)
            self._sign(request, nonce)
        sent = time.time()
        response = yield request
        if self.agent_id is None:
            return
        self._check_response(request, response, nonce)
        if self.key is not None and response.status_code != 401:
            self.clock_known = True  # the agent took this timestamp
        elif self.key is not None and _replayable(request):
            # Refused for its timestamp alone (the nonce was not spent): sign it again with
            # the clock the agent sent, once.
            if self.learn_clock(answer_field(response.content, AGENT_TIME_KEY), sent, time.time()):
                self._sign(request, nonce)
                response = yield request
                self._check_response(request, response, nonce)

    def _sign(self, request: httpx.Request, nonce: str) -> None:
        request.headers.update(
            self.signature_headers(
                request.method,
                request.url.raw_path.decode("ascii"),
                request.headers.get("Content-Type", ""),
                request.headers[BODY_HASH_HEADER],
                nonce,
            )
        )

    def signature_headers(
        self, method: str, path_qs: str, content_type: str, body_sha256: str, nonce: str
    ) -> dict[str, str]:
        """The key, timestamp (the agent's clock) and signature headers of one request."""
        assert self.key is not None and self.agent_id is not None
        timestamp = str(int(time.time() + self.clock_offset))
        message = request_message(
            self.agent_id, method, path_qs, content_type, timestamp, nonce, body_sha256
        )
        return {
            KEY_HEADER: self.key.fingerprint,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: b64(self.key.sign(message)),
        }

    def _check_response(self, request: httpx.Request, response: httpx.Response, nonce: str) -> None:
        where = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
        self.check_answer(where, nonce, response.status_code, response.headers, response.content)

    def check_answer(
        self, where: str, nonce: str, status: int, headers: HeaderLookup, body: bytes
    ) -> None:
        """Refuse an answer (from ``where``) to the request signed with ``nonce`` unless the
        pinned agent signed it: "fingerprint mismatch" for another key or none."""
        claimed = headers.get(AGENT_KEY_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if claimed is None or signature is None:
            raise FingerprintMismatchError(
                f"fingerprint mismatch: the answer from {where} is not signed by agent "
                f"{self.agent_id}; is another program listening there?"
            )
        public_raw = unb64(claimed, AGENT_KEY_HEADER, 32)
        pinned_ok = (
            public_raw == self.agent_key
            if self.agent_key is not None
            else agent_id_for(public_raw) == self.agent_id
        )
        if not pinned_ok:
            expected = fingerprint(self.agent_key) if self.agent_key else f"id {self.agent_id}"
            raise FingerprintMismatchError(
                f"fingerprint mismatch: the agent at {where} has key {fingerprint(public_raw)}, "
                f"not the pinned {expected}; if the device was reset it has a new id: run "
                f"outpost devices add {urlsplit(where).netloc or where}, pair the id it shows "
                "and forget the old one; else another program answers there"
            )
        message = response_message(
            str(self.agent_id), nonce, status, headers.get("Content-Type") or "", sha256_hex(body)
        )
        if not verify(public_raw, unb64(signature, SIGNATURE_HEADER, 64), message):
            raise AuthError(
                f"the answer from {where} does not match the agent's signature; "
                "it was altered on the way"
            )
        self.answered_key = public_raw


def _position(
    answer: dict[str, Any], key: str, size: int | None, default: int | None = None
) -> int:
    """A byte position in an agent's upload answer: a whole number from 0 to ``size``
    (``default`` when the answer has none), else :class:`AgentAnswerError`: an answer no
    agent gives (an old or broken one) must not end a deploy with a traceback."""
    value = answer.get(key, default) if isinstance(answer, dict) else None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < 0
        or (size is not None and value > size)
    ):
        raise AgentAnswerError(
            f"the agent answered an upload with {key} {str(value)[:40]!r}, not a byte position"
            "; update outpost-agent on the device"
        )
    return value


def _upload_id(answer: dict[str, Any]) -> str:
    """An upload's id in the agent's answer (hex digits), else :class:`AgentAnswerError`."""
    value = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(value, str) or not value or len(value) > 64 or not value.isalnum():
        raise AgentAnswerError(
            "the agent answered an upload without a readable id; update outpost-agent on the device"
        )
    return value


class AgentClient:
    """Synchronous client for one agent. Use as a context manager, or call :meth:`close`.

    Args:
        base_url: ``http://host:port`` of the agent.
        key: the desktop's identity key (requests are signed with it).
        agent_key: the pinned raw public key of the agent (answers must be signed by it).
        agent_id: the expected agent id, when no key is pinned yet (pairing).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        *,
        key: KeyPair | None = None,
        agent_key: bytes | None = None,
        agent_id: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.auth = SignedAuth(key, agent_key, agent_id)
        self.protocol: int | None = None  # agreed with the agent at the first info()
        # an agent never compresses; asking for it would let a stranger's gzip bomb in
        headers = {**protocol_headers(), "Accept-Encoding": "identity"}
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            auth=self.auth,
            transport=transport or FileBodyTransport(),
            headers=headers,
            event_hooks={"response": [_capped_answer]},
        )
        # Reads and images to infer on go through one kept-alive connection of their own
        # (see device_agent.line); everything else through httpx.
        self._line = (
            AgentLine(self.base_url, self.auth, headers)
            if transport is None and AgentLine.fits(self.base_url, self.auth)
            else None
        )

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._line is not None:
            with self._line.lock:  # not under a request another thread has in flight
                self._line.close()
        self._http.close()

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def info(self) -> dict[str, Any]:
        """The agent's ``/v1/info``; an agent whose protocol range misses this desktop's
        raises :class:`IncompatibleProtocolError` (its message names the side to update)."""
        sent = time.time()
        info = self._request("GET", "/v1/info")
        if self.auth.agent_id is not None:  # an answer checked against the agent's key
            self.auth.learn_clock(info.get(AGENT_TIME_KEY), sent, time.time())
        self.protocol = check_agent_info(info)
        return info

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/v1/stats")

    def ready(self) -> dict[str, Any]:
        """Readiness; a not-ready agent raises :class:`AgentRejectedError` (503, with why)."""
        return self._request("GET", "/v1/ready")

    def metrics(self) -> str:
        """Usage in the Prometheus text exposition format."""
        return self._send("GET", "/v1/metrics").text

    def unpair(self) -> dict[str, Any]:
        """Ask the agent to forget this desktop's key (it must pair again to be trusted)."""
        return self._request("DELETE", "/v1/pair")

    def pair(self, code: str, name: str = "desktop") -> dict[str, Any]:
        """Pair this client's key with the agent using the code ``outpost-agent pair`` showed."""
        key = self.auth.key
        if key is None or self.auth.agent_id is None:
            raise AuthError("pairing needs the desktop's key and the agent's id")
        info = self.info()
        ephemeral, proof = desktop_pairing_proof(
            code, self.auth.agent_id, str(info.get("exchange_key", "")), key
        )
        body = {
            "desktop_key": key.public_b64,
            "exchange_key": ephemeral,
            "proof": proof,
            "name": name,
        }
        return self._request(
            "POST",
            "/v1/pair",
            content=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )

    def upload_package(
        self,
        path: Path,
        on_progress: Callable[[int, int], None] | None = None,
        *,
        activate: bool = True,
        provider: str | None = None,
        chunk_size: int | None = None,
        resumable: bool | None = None,
        piece_size: int | None = None,
        retries: int = UPLOAD_RETRIES,
        backoff_s: float = 0.5,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Install a ``.outpost.zip`` on the agent as a resumable upload; returns the result.

        To an agent that speaks protocol 4 the package goes at once as a sealed stream
        (:meth:`put_chain`): the desktop signs the package's sha256 (from its digests file,
        else hashed while it is sent) and its manifest's, and the agent hashes nothing on the
        way: the commit holds the manifest to the seal and every file to the manifest. To an
        agent that speaks protocol 2 or 3 it goes as a chained stream: the agent checks the
        signed running sha256 after every piece. To an older agent:
        the file is read once to hash it: its sha256 and the sha256 of each piece (4 MiB, or
        more for packages over 32 GiB: see :func:`piece_size_for`). The upload is opened
        with that piece list, then the package goes as one streamed request that the agent
        checks piece by piece. With ``chunk_size`` it goes instead in one request per chunk
        (each signed with its own digest), as it does to an agent without streamed uploads.
        On a connection error the client asks the agent where the upload stands and resumes
        from there, up to ``retries`` times in a row with doubling pauses (``backoff_s``
        first). A small package (up to :data:`SINGLE_SHOT_BYTES`, unless ``resumable`` is
        True), or any package for an agent without resumable uploads (404), goes in one
        request instead (:meth:`put_package`).

        Args:
            path: the package.
            on_progress: called with (bytes done, total bytes): while a stream is sent, the
                bytes sent; after each request, the bytes the agent holds.
            activate: False installs it staged: checked but not serving (see :meth:`activate`).
            provider: an execution provider to ask for; when it is missing or fails, the
                result's ``fallback`` says what runs instead.
            chunk_size: bytes per request (chunks instead of one stream).
            resumable: True always uses a resumable upload, False never; None decides by size.
            piece_size: bytes per checked piece of a stream (default :func:`piece_size_for`).

        Raises:
            PackageError: the file cannot be read.
            AgentRejectedError: the agent refused the upload or the package (its reason).
            AgentUnreachableError: the agent stayed unreachable through every retry.
        """
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise PackageError(
                f"cannot read {path}: {exc.strerror}; check the package path"
            ) from None
        if resumable is False or (resumable is None and size <= SINGLE_SHOT_BYTES):
            return self.put_package(path, activate=activate, provider=provider, timeout=timeout)
        streamed = chunk_size is None
        piece = chunk_size or piece_size or piece_size_for(size)
        if streamed and self.auth.key is not None and self._speaks_chain():
            sealed = self._seals()
            try:
                chained = self._upload_chain(
                    path, size, piece, on_progress, retries, backoff_s, sealed
                )
                if chained is not None:
                    try:
                        return self._commit(
                            chained, activate, provider, timeout, retries, backoff_s
                        )
                    except AgentRejectedError as exc:
                        if not (exc.fields.get("sealed") is True and package_is_sound(path)):
                            raise
                    # The agent found a file that does not match the sealed manifest, and ours
                    # do: the package was altered on the way. Sent again as a chained stream,
                    # every piece is proven as it arrives and a damaged one is sent again.
                    log.warning("%s was altered on the way; sending it again, proven", path.name)
                    chained = self._upload_chain(
                        path, size, piece, on_progress, retries, backoff_s, False
                    )
            except OSError as exc:
                raise PackageError(
                    f"cannot read {path}: {exc.strerror}; check the package path"
                ) from None
            if chained is not None:
                return self._commit(chained, activate, provider, timeout, retries, backoff_s)
        t0 = time.perf_counter()
        try:
            digest, pieces = hash_pieces(path, piece)
        except OSError as exc:
            raise PackageError(
                f"cannot read {path}: {exc.strerror}; check the package path"
            ) from None
        t1 = time.perf_counter()
        try:
            upload = self.create_upload(
                size,
                digest,
                path.name,
                piece_size=piece if streamed else None,
                pieces=pieces if streamed else None,
            )
        except AgentRejectedError as exc:
            if exc.status in (404, 405) and activate and provider is None:
                return self.put_package(path, timeout=timeout)  # an agent from before uploads
            raise
        profile_line("client-open", bytes=size, hash_s=t1 - t0, create_s=time.perf_counter() - t1)
        upload_id = _upload_id(upload)
        offset = _position(upload, "offset", size, 0)
        try:
            with open(path, "rb") as fh:
                if streamed and upload.get("piece_size") == piece:
                    self._send_stream(
                        upload_id, fh, offset, size, piece, pieces, on_progress, retries, backoff_s
                    )
                else:  # chunks: asked for, or an agent without streamed uploads
                    asked = _position(upload, "chunk_size", MAX_CHUNK, DEFAULT_CHUNK)
                    step = int(chunk_size or asked or DEFAULT_CHUNK)
                    known = (piece, pieces)
                    self._send_chunks(
                        upload_id, fh, offset, size, step, known, on_progress, retries, backoff_s
                    )
        except OSError as exc:
            raise PackageError(
                f"cannot read {path}: {exc.strerror}; check the package path"
            ) from None
        return self._commit(upload_id, activate, provider, timeout, retries, backoff_s)

    def _commit(
        self,
        upload_id: str,
        activate: bool,
        provider: str | None,
        timeout: float | None,
        retries: int,
        backoff_s: float,
    ) -> dict[str, Any]:
        """Commit a fully sent upload, asking again after a connection error (idempotent)."""
        failures = 0
        t2 = time.perf_counter()
        while True:
            try:
                result = self.commit_upload(
                    upload_id, activate=activate, provider=provider, timeout=timeout
                )
                profile_line("client-commit", commit_s=time.perf_counter() - t2)
                return result
            except AgentUnreachableError as exc:  # a commit is idempotent: ask again
                failures += 1
                if failures > retries:
                    raise AgentUnreachableError(
                        f"{exc}; gave up committing upload {upload_id} after {retries} retries"
                    ) from None
                time.sleep(backoff_s * 2 ** (failures - 1))

    def _opens_in_stream(self, size: int) -> bool:
        """Whether the chained stream opens its own upload: the agent speaks protocol 3 (its
        ``/v1/info`` said so) and the package is small enough that sending it again from byte
        0 costs little (such a stream does not resume an unfinished upload of the same package
        that a restarted desktop left behind; :meth:`create_chained` does)."""
        return (
            self.protocol is not None
            and self.protocol >= OPEN_IN_STREAM_PROTOCOL
            and size <= OPEN_IN_STREAM_BYTES
        )

    def _know_clock(self) -> None:
        """Learn the agent's clock (``info()``) before a request whose body is a stream, when
        no answer brought it yet: a request in memory is signed again after a 401 for its
        timestamp (see :class:`SignedAuth`), a stream cannot be."""
        if self.auth.key is not None and not self.auth.clock_known:
            self.info()

    def _seals(self) -> bool:
        """Whether chained streams go sealed: the agent speaks protocol 4 (its ``/v1/info``
        said so)."""
        return self.protocol is not None and self.protocol >= SEAL_PROTOCOL

    def _speaks_chain(self) -> bool:
        """Whether to try a chained stream: the agent speaks protocol 2, or its protocol is not
        known yet (an older agent refuses the chained create with 400: see
        :meth:`_upload_chain`)."""
        return self.protocol is None or self.protocol >= CHAIN_PROTOCOL

    def _upload_chain(
        self,
        path: Path,
        size: int,
        piece: int,
        on_progress: Callable[[int, int], None] | None,
        retries: int,
        backoff_s: float,
        sealed: bool,
    ) -> str | None:
        """Send the package as a chained stream (``sealed``: a sealed one); the upload's id, or
        None when the agent answered without a piece size (it cannot take one: the caller
        uses the older way)."""
        t0 = time.perf_counter()
        # The running sha256 at each piece end this client knows (where a stream may start):
        # all of them when the package's digests file is current, else hashed on the way.
        marks = _known_marks(path, piece)
        # A sealed stream (protocol 4) signs the manifest's sha256; a file without a readable
        # manifest goes as a chained stream, for the agent to refuse with its reason.
        seal = manifest_digest(path) if sealed else None
        with open(path, "rb") as fh:
            first = min(piece, size)
            head = (
                marks[first].hexdigest()
                if first in marks
                else hashlib.sha256(fh.read(first)).hexdigest()
            )
            # What the stream opens its upload with (protocol 3), until the agent has it.
            opening: dict[str, Any] | None = None
            if self._opens_in_stream(size):
                upload_id = secrets.token_hex(16)
                opening = {"size": size, "piece_size": piece, "head": head, "name": path.name}
                verified = received = 0
            else:
                try:
                    upload = self.create_chained(size, head, path.name, piece)
                except AgentRejectedError as exc:
                    if exc.status in (400, 404, 405):  # an agent before protocol 2 (or uploads)
                        return None
                    raise
                if upload.get("piece_size") != piece or not upload.get("chain"):
                    with contextlib.suppress(AgentRejectedError, AgentUnreachableError):
                        self.delete_upload(_upload_id(upload))
                    return None
                verified = _position(upload, "offset", size, 0)
                received = _position(upload, "received", size, verified)
                if received:  # the agent holds part of a package: resume only if it is this one
                    if received not in marks:
                        _hash_prefix(fh, received, piece, marks)
                    if marks[verified].hexdigest() != upload.get("sha256_prefix"):
                        upload = self.create_chained(size, head, path.name, piece, fresh=True)
                        verified = received = _position(upload, "offset", size, 0)
                upload_id = _upload_id(upload)
            profile_line("client-open", bytes=size, create_s=time.perf_counter() - t0)
            failures = 0
            while verified < size:
                before = verified
                try:
                    answer = self.put_chain(
                        upload_id,
                        fh,
                        verified,
                        received,
                        size,
                        piece,
                        marks,
                        on_progress,
                        opening,
                        seal,
                    )
                    opening = None
                    verified = _position(answer, "offset", size)
                    if verified <= before:  # nothing more was verified: count it as a failure
                        raise AgentRejectedError(
                            409, f"upload {upload_id} did not move past byte {before}"
                        )
                    failures = 0
                    received = _position(answer, "received", size, verified)
                except (AgentUnreachableError, AgentRejectedError) as exc:
                    if isinstance(exc, AgentRejectedError):
                        if exc.status not in (409, 422):
                            raise
                        opening = None  # the agent has the upload
                    if isinstance(exc, AgentRejectedError) and exc.status == 422 and marks.known:
                        # The digests file does not match the package (changed in place
                        # within the same second?): hash the package itself from now on.
                        marks = _Marks()
                    failures += 1
                    try:
                        status = self._resume_status(upload_id, failures, retries, backoff_s, exc)
                    except AgentRejectedError as missing:
                        if opening is None or missing.status != 404:
                            raise
                        status = {"offset": 0}  # it broke before the upload opened: open it
                    else:
                        opening = None
                    verified = _position(status, "offset", size)
                    received = _position(status, "received", size, verified)
                if received not in marks:
                    _hash_prefix(fh, received, piece, marks)
                if on_progress is not None:
                    on_progress(verified, size)
        return upload_id

    def _resume_status(
        self, upload_id: str, failures: int, retries: int, backoff_s: float, cause: Exception
    ) -> dict[str, Any]:
        """Where the agent's copy of an interrupted upload stands (waits and retries first)."""
        while True:
            if failures > retries:
                raise (
                    AgentUnreachableError(
                        f"{cause}; gave up on upload {upload_id} after {retries} retries "
                        "(run the deploy again)"
                    )
                    if isinstance(cause, AgentUnreachableError)
                    else cause
                )
            time.sleep(backoff_s * 2 ** (failures - 1))
            try:
                return self.upload_status(upload_id)
            except AgentUnreachableError as exc:
                failures, cause = failures + 1, exc

    def _send_stream(
        self,
        upload_id: str,
        fh: BinaryIO,
        offset: int,
        size: int,
        piece: int,
        pieces: list[str],
        on_progress: Callable[[int, int], None] | None,
        retries: int,
        backoff_s: float,
    ) -> None:
        """Stream the rest of the package from ``offset``; after a break, from the agent's."""
        failures = 0
        while offset < size:
            before = offset
            try:
                offset = int(
                    self.put_stream(upload_id, fh, offset, size, piece, pieces, on_progress)[
                        "offset"
                    ]
                )
                if offset <= before:  # the agent kept nothing of it: count it as a failure
                    raise AgentRejectedError(
                        409, f"upload {upload_id} did not move past byte {before}"
                    )
                failures = 0
            except (AgentUnreachableError, AgentRejectedError) as exc:
                if isinstance(exc, AgentRejectedError) and exc.status not in (409, 422):
                    raise
                failures += 1
                offset = self._resume_offset(upload_id, failures, retries, backoff_s, exc)
            if on_progress is not None:
                on_progress(offset, size)

    def _send_chunks(
        self,
        upload_id: str,
        fh: BinaryIO,
        offset: int,
        size: int,
        step: int,
        known: tuple[int, list[str]],
        on_progress: Callable[[int, int], None] | None,
        retries: int,
        backoff_s: float,
    ) -> None:
        """Send the rest of the package from ``offset`` in ``step``-byte requests."""
        failures = 0
        signed = self.auth.key is not None

        def read(at: int) -> tuple[int, bytes, str | None]:
            length = min(step, size - at)
            piece, pieces = known
            digest = pieces[at // piece] if at % piece == 0 and piece == step else None
            return _read_chunk(fh, at, length, signed and digest is None, digest)

        with ThreadPoolExecutor(1, "outpost-upload-read") as pool:
            # The next chunk is read (and hashed, when its digest is not known yet) while this
            # one is on the wire; a resume from another offset throws the prefetched one away.
            ahead = pool.submit(read, offset)
            while offset < size:
                at, chunk, chunk_sha = ahead.result()
                if at != offset:
                    at, chunk, chunk_sha = read(offset)
                end = offset + len(chunk)
                if end < size:
                    ahead = pool.submit(read, end)
                t0 = time.perf_counter()
                try:
                    answer = self.put_chunk(upload_id, at, chunk, chunk_sha)
                    offset = _position(answer, "offset", size)
                    if offset <= at:  # nothing more was taken: count it as a failure
                        raise AgentRejectedError(
                            409, f"upload {upload_id} did not move past byte {at}"
                        )
                    failures = 0
                except (AgentUnreachableError, AgentRejectedError) as exc:
                    if isinstance(exc, AgentRejectedError) and exc.status != 409:
                        raise
                    failures += 1
                    offset = self._resume_offset(upload_id, failures, retries, backoff_s, exc)
                profile_line("client-chunk", bytes=len(chunk), request_s=time.perf_counter() - t0)
                if on_progress is not None:
                    on_progress(offset, size)

    def _resume_offset(
        self, upload_id: str, failures: int, retries: int, backoff_s: float, cause: Exception
    ) -> int:
        """Where the agent's copy of an interrupted upload ends (waits and retries first)."""
        status = self._resume_status(upload_id, failures, retries, backoff_s, cause)
        return _position(status, "offset", None)

    def put_package(
        self,
        path: Path,
        *,
        activate: bool = True,
        provider: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Install a ``.outpost.zip`` in one streamed request (``PUT /v1/packages``)."""
        params = {
            "activate": "1" if activate else "0",
            **({"provider": provider} if provider else {}),
        }
        path = Path(path)
        try:
            # Signed uploads stream: the signature covers the hash of the file, read first.
            hashed = {BODY_HASH_HEADER: sha256_file(path)} if self.auth.key is not None else {}
            fh = open(path, "rb")  # httpx streams an open file and sends its length
        except OSError as exc:
            raise PackageError(
                f"cannot read {path}: {exc.strerror}; check the package path"
            ) from None
        with fh:
            self._know_clock()  # a streamed body cannot be signed again after a 401
            return self._request(
                "PUT",
                "/v1/packages",
                content=fh,
                params=params if params != {"activate": "1"} else None,
                headers={"Content-Type": "application/zip", **hashed},
                timeout=timeout or max(self.timeout, UPLOAD_TIMEOUT_S),
            )

    def create_upload(
        self,
        size: int,
        sha256: str,
        name: str | None = None,
        *,
        piece_size: int | None = None,
        pieces: list[str] | None = None,
    ) -> dict[str, Any]:
        """Open a resumable upload (``POST /v1/uploads``): ``{id, chunk_size, offset}``.

        With ``piece_size`` and ``pieces`` (see :func:`hash_pieces`) the agent takes the rest
        as one stream (:meth:`put_stream`) and answers them back (an agent from before
        streamed uploads does not).
        """
        body: dict[str, Any] = {"size": size, "sha256": sha256, **({"name": name} if name else {})}
        if piece_size is not None and pieces is not None:
            body["piece_size"], body["pieces"] = piece_size, pieces
        return self._json("POST", "/v1/uploads", body)

    def create_chained(
        self, size: int, head: str, name: str | None, piece_size: int, *, fresh: bool = False
    ) -> dict[str, Any]:
        """Open a chained upload (protocol 2, ``POST /v1/uploads``): only the size, the piece
        size and the sha256 of the first piece are known before the bytes go. The agent may
        answer an unfinished upload that may hold the same package, with its ``offset`` and
        ``sha256_prefix``; ``fresh`` asks for a new one."""
        body: dict[str, Any] = {"size": size, "piece_size": piece_size, "head_sha256": head}
        if name:
            body["name"] = name
        if fresh:
            body["fresh"] = True
        return self._json("POST", "/v1/uploads", body)

    def put_chain(
        self,
        upload_id: str,
        fh: BinaryIO,
        proof_from: int,
        offset: int,
        size: int,
        piece_size: int,
        marks: dict[int, Any],
        on_progress: Callable[[int, int], None] | None = None,
        opening: dict[str, Any] | None = None,
        seal: bytes | None = None,
    ) -> dict[str, Any]:
        """Send the package from ``offset`` (a piece boundary) to the end as a chained stream,
        then the proof of every piece after ``proof_from`` (where the agent is verified).
        With ``opening`` (``size``, ``piece_size``, ``head``, ``name``; protocol 3) the stream
        opens the upload ``upload_id``, an id the desktop chose, from byte 0. With ``seal``
        (the sha256 of the package's manifest; protocol 4) the stream ends with a seal
        instead: the package's sha256 and ``seal``, signed.

        The bytes go from the page cache to the socket (:class:`FileBody`: ``sendfile``);
        the proof is the running sha256 at each piece end and the desktop's signature over
        them, bound to this request's nonce. ``marks`` holds the running sha256 at ``offset``
        and at the piece ends from ``proof_from``, and receives the new ones (a later stream
        may start there); when it lacks any, a helper thread reads and hashes the file while
        it is sent (when the package's digests file gave them all, nothing is hashed).
        """
        key = self.auth.key
        agent_id = self.auth.agent_id
        if key is None or agent_id is None:
            raise AuthError("a chained upload needs the desktop's key and the agent's id")
        nonce = new_nonce()
        sealed = seal is not None
        ends = [size] if sealed else [*range(proof_from + piece_size, size, piece_size), size]
        proof_bytes = (
            SEAL_BYTES if sealed else len(ends) * PROOF_DIGEST_BYTES + PROOF_SIGNATURE_BYTES
        )
        headers = {
            "Content-Type": SEALED_CONTENT_TYPE if sealed else CHAIN_CONTENT_TYPE,
            "Upload-Offset": str(offset),
            "Upload-Proof-From": str(proof_from),
            "Content-Length": str(size - offset + proof_bytes),
            NONCE_HEADER: nonce,
            BODY_HASH_HEADER: chain_body_digest(upload_id, offset, proof_from, sealed),
        }
        if opening is not None:
            name = str(opening.get("name") or "")
            headers[OPEN_LENGTH_HEADER] = str(opening["size"])
            headers[OPEN_PIECE_HEADER] = str(opening["piece_size"])
            headers[OPEN_HEAD_HEADER] = str(opening["head"])
            headers[OPEN_NAME_HEADER] = quote(name, safe="")
            headers[BODY_HASH_HEADER] = chain_open_digest(
                upload_id,
                int(opening["size"]),
                int(opening["piece_size"]),
                opening["head"],
                name,
                sealed,
            )
        hashing = ThreadPoolExecutor(1, "outpost-upload-hash")
        stop = threading.Event()  # the stream failed: the digests are not needed
        hashed = (
            hashing.submit(_hash_range, fh, offset, size, piece_size, marks, stop)
            if any(end not in marks for end in ends)
            else None
        )

        def proof() -> bytes:
            t0 = time.perf_counter()
            try:
                if hashed is not None:
                    hashed.result()
            finally:
                body.timings["hash_wait_s"] = time.perf_counter() - t0
            digests = b"".join(marks[end].digest() for end in ends)
            if seal is not None:
                message = seal_message(agent_id, upload_id, nonce, size, digests, seal)
                return digests + seal + key.sign(message)
            return digests + key.sign(
                proof_message(agent_id, upload_id, nonce, proof_from, digests)
            )

        body = FileBody(fh, offset, size, proof, on_progress)
        try:
            return self._put_body(
                upload_id,
                body,
                headers,
                "client-chain",
                size - offset,
                body.timings,
                extensions={FILE_BODY: body},
            )
        finally:
            stop.set()
            hashing.shutdown(wait=True)

    def put_stream(
        self,
        upload_id: str,
        fh: BinaryIO,
        offset: int,
        size: int,
        piece_size: int,
        pieces: list[str],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Send the package's bytes from ``offset`` (a piece boundary) to the end in one request.

        The signature covers the digests of the pieces it carries (``pieces_digest``); the
        agent checks each piece as it arrives and answers with its new offset.
        """
        headers = {
            "Content-Type": PIECES_CONTENT_TYPE,
            "Upload-Offset": str(offset),
            "Content-Length": str(size - offset),
        }
        if self.auth.key is not None:
            headers[BODY_HASH_HEADER] = pieces_digest(pieces, offset // piece_size)
        timings = {"read_s": 0.0, "send_s": 0.0}

        def body() -> Iterator[bytes]:
            sent = offset
            fh.seek(offset)
            while sent < size:
                t0 = time.perf_counter()
                block = fh.read(min(STREAM_BLOCK, size - sent))
                t1 = time.perf_counter()
                timings["read_s"] += t1 - t0
                if not block:
                    raise shorter_while_sent(sent, size)
                sent += len(block)
                yield block
                timings["send_s"] += time.perf_counter() - t1
                if on_progress is not None:
                    on_progress(sent, size)

        return self._put_body(upload_id, body(), headers, "client-stream", size - offset, timings)

    def _put_body(
        self,
        upload_id: str,
        body: Iterable[bytes],
        headers: dict[str, str],
        label: str,
        length: int,
        timings: dict[str, float],
        extensions: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One streamed ``PUT /v1/uploads/{id}``; with ``OUTPOST_UPLOAD_PROFILE=1`` its
        timings go to stderr as ``label``."""
        t0 = time.perf_counter()
        try:
            return self._request(
                "PUT",
                f"/v1/uploads/{quote(upload_id, safe='')}",
                content=body,
                headers=headers,
                timeout=max(self.timeout, CHUNK_TIMEOUT_S),
                extensions=extensions,
            )
        finally:
            profile_line(label, bytes=length, request_s=time.perf_counter() - t0, **timings)

    def put_chunk(
        self, upload_id: str, offset: int, data: bytes, sha256: str | None = None
    ) -> dict[str, Any]:
        """Send the bytes at ``offset``; the agent answers with its new offset.

        ``sha256`` is the chunk's digest when the caller already has it (it is signed).
        """
        hashed = {BODY_HASH_HEADER: sha256} if sha256 and self.auth.key is not None else {}
        return self._request(
            "PUT",
            f"/v1/uploads/{quote(upload_id, safe='')}",
            content=data,
            headers={
                "Content-Type": "application/octet-stream",
                "Upload-Offset": str(offset),
                **hashed,
            },
            timeout=max(self.timeout, CHUNK_TIMEOUT_S),
        )

    def upload_status(self, upload_id: str) -> dict[str, Any]:
        """``{offset, size, ...}`` of an upload (where to resume)."""
        return self._request("GET", f"/v1/uploads/{quote(upload_id, safe='')}")

    def commit_upload(
        self,
        upload_id: str,
        *,
        activate: bool = True,
        provider: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Check the whole upload and install it; returns the install result."""
        body: dict[str, Any] = {"activate": activate}
        if provider:
            body["provider"] = provider
        return self._json(
            "POST",
            f"/v1/uploads/{quote(upload_id, safe='')}/commit",
            body,
            timeout=timeout or max(self.timeout, UPLOAD_TIMEOUT_S),
        )

    def delete_upload(self, upload_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/uploads/{quote(upload_id, safe='')}")

    def models(self) -> list[dict[str, Any]]:
        """Every model on the device, serving or not, with its active/previous/staged versions."""
        return list(self._request("GET", "/v1/models").get("models", []))

    def activate(self, model: str, version: str | None = None) -> dict[str, Any]:
        """Serve ``model`` again, or switch it to ``version`` (staged, active or previous)."""
        body = {"version": version} if version else {}
        return self._json(
            "POST",
            f"/v1/models/{quote(model, safe='')}/activate",
            body,
            timeout=max(self.timeout, UPLOAD_TIMEOUT_S),
        )

    def deactivate(self, model: str) -> dict[str, Any]:
        """Stop serving ``model``; its files stay on the device."""
        return self._request("POST", f"/v1/models/{quote(model, safe='')}/deactivate")

    def uninstall(self, model: str, *, force: bool = False) -> dict[str, Any]:
        """Remove every version of ``model``; the only serving model needs ``force``."""
        params = {"force": "1"} if force else {}
        return self._request("DELETE", f"/v1/models/{quote(model, safe='')}", params=params)

    def _json(
        self, method: str, path: str, body: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        return self._request(
            method,
            path,
            content=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )

    def infer(
        self,
        image: bytes | np.ndarray,
        model: str | None = None,
        conf: float | None = None,
        iou: float | None = None,
        top_k: int | None = None,
        *,
        channels: str | None = None,
    ) -> dict[str, Any]:
        """Run one image through a model on the agent (a classifier's answer lists its
        ``top_k`` classes): encoded bytes (JPEG, PNG, ...) or a decoded uint8 frame
        (``HxWx3`` in ``channels`` order; see :meth:`infer_model`)."""
        given = (("model", model), ("conf", conf), ("iou", iou), ("top_k", top_k))
        return self._infer("/v1/infer", image, channels, given)

    def infer_model(
        self,
        model: str,
        image: bytes | np.ndarray,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        top_k: int | None = None,
        channels: str | None = None,
    ) -> dict[str, Any]:
        """Run one image through ``model`` (``POST /v1/models/{name}/infer``; a classifier's
        answer lists its ``top_k`` classes).

        ``image``: encoded bytes (JPEG, PNG, ...), or a decoded uint8 frame (``HxW``,
        ``HxWx1``, ``HxWx3`` or ``HxWx4``) with its channels in ``channels`` order (``bgr``, the
        default, as OpenCV holds frames, or ``rgb``; bytes say their own). A frame goes as ``.npy`` bytes (nothing encoded
        here nor decoded there) to an agent that speaks protocol 5, as a PNG (lossless: the
        same detections) to an older one.
        """
        given = (("conf", conf), ("iou", iou), ("max_det", max_det), ("top_k", top_k))
        return self._infer(f"/v1/models/{quote(model, safe='')}/infer", image, channels, given)

    def _infer(
        self,
        path: str,
        image: bytes | np.ndarray,
        channels: str | None,
        given: Iterable[tuple[str, object]],
    ) -> dict[str, Any]:
        params = {k: str(v) for k, v in given if v is not None}
        content_type = "application/octet-stream"
        if isinstance(image, (bytes, bytearray, memoryview)):
            if channels is not None:
                raise ValueError("channels is for a decoded frame; encoded bytes say their own")
            body = bytes(image)
        else:
            from runtimes.preprocess import (
                FRAME_CHANNELS,
                NPY_CONTENT_TYPE,
                encode_frame,
                encode_frame_png,
            )

            channels = channels or "bgr"
            if channels not in FRAME_CHANNELS:
                raise ValueError(f"channels must be one of {FRAME_CHANNELS}, got {channels!r}")
            if self.protocol is None:
                self.info()  # which protocol the agent speaks
            if self.protocol is not None and self.protocol >= FRAME_PROTOCOL:
                body, content_type = encode_frame(image), NPY_CONTENT_TYPE
                params["channels"] = channels
            else:
                body = encode_frame_png(image, channels)
        answer = self._over_line("POST", path, params, body, content_type)
        if answer is not None:
            return answer
        return self._request(
            "POST", path, content=body, params=params, headers={"Content-Type": content_type}
        )

    def bench(self, model: str, runs: int = 50, *, timeout: float | None = None) -> dict[str, Any]:
        """Time ``model`` on the device ``runs`` times (warm-up excluded)."""
        return self._request(
            "POST",
            f"/v1/models/{quote(model, safe='')}/bench",
            content=json.dumps({"runs": runs}).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            timeout=timeout or max(self.timeout, 120.0),
        )

    def usage(self, minutes: int = 60) -> dict[str, Any]:
        """``GET /v1/stats`` with the last ``minutes`` of each version's per-minute series."""
        return self._request("GET", "/v1/stats", params={"minutes": str(minutes)})

    def rollback(self, model: str) -> dict[str, Any]:
        """Make the previous version of ``model`` active again."""
        return self._request("POST", f"/v1/models/{quote(model, safe='')}/rollback")

    def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        if method == "GET" and set(kwargs) <= {"params"}:
            answer = self._over_line("GET", path, kwargs.get("params"), b"", "", timeout)
            if answer is not None:
                return answer
        response = self._send(method, path, timeout=timeout, **kwargs)
        return _json_object(self.base_url + path, response.status_code, response.content)

    def _over_line(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: bytes,
        content_type: str,
        timeout: float | None = None,
    ) -> dict[str, Any] | None:
        """The JSON answer to a request sent over the kept-alive line; None when this client
        has no line or another thread's request holds it (then httpx sends it)."""
        line = self._line
        if line is None or not line.lock.acquire(blocking=False):
            return None
        try:
            answer = line.send(
                method,
                f"{path}?{urlencode(params)}" if params else path,
                body,
                content_type,
                timeout or self.timeout,
            )
        finally:
            line.lock.release()
        if answer.status >= 400:
            raise _refusal(answer.status, answer.body, answer.reason)
        return _json_object(self.base_url + path, answer.status, answer.body)

    def _send(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request; transport failures and error statuses raise typed errors."""
        url = self.base_url + path
        try:
            response = self._http.request(method, path, timeout=timeout or self.timeout, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(url, exc) from None
        if response.status_code >= 400:
            raise _refusal(response.status_code, response.content, response.reason_phrase)
        return response


def _refusal(status: int, content: bytes, reason: str) -> AgentRejectedError:
    """The typed error for an agent's answer with an error status (its JSON ``error``)."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    if status == UPGRADE_STATUS and message:
        return IncompatibleProtocolError(one_line(message))
    return AgentRejectedError(
        status,
        one_line(message or content.decode("utf-8", "replace") or reason),
        {k: v for k, v in body.items() if k != "error"} if isinstance(body, dict) else {},
    )


def _json_object(url: str, status: int, content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise AgentRejectedError(
            status, f"{url} did not answer with a JSON object; is this an outpost-agent?"
        )
    return body


def _replayable(request: httpx.Request) -> bool:
    """Whether ``request`` can be sent again as it is: its body in memory, not a stream."""
    return FILE_BODY not in request.extensions and isinstance(request.stream, httpx.ByteStream)


def _capped_answer(response: httpx.Response) -> None:
    """Read the answer under ``agent_line.MAX_ANSWER_BYTES``: an address that streams without end
    (not an agent: a device on the network the user was about to pair with, say) gets a typed
    error instead of the desktop's memory. Runs before httpx reads the body."""
    refuse_unbounded(response.request.url, response.headers)
    response.stream = _CappedStream(response)


class _CappedStream(httpx.SyncByteStream):
    """An answer's body, refused past :data:`~device_agent.line.MAX_ANSWER_BYTES` or when it
    comes too slowly (:class:`~device_agent.line.AnswerDeadline`)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.inner = response.stream
        read = (response.request.extensions.get("timeout") or {}).get("read")
        self.deadline = agent_line.AnswerDeadline(
            response.request.url,
            read if isinstance(read, (int, float)) else DEFAULT_TIMEOUT_S,
        )

    def __iter__(self) -> Iterator[bytes]:
        got = 0
        for chunk in self.inner:  # type: ignore[union-attr]
            got += len(chunk)
            if got > agent_line.MAX_ANSWER_BYTES:
                raise too_large(self.response.request.url)
            self.deadline.check(got)
            yield chunk

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def _read_chunk(
    fh: BinaryIO, offset: int, length: int, hashed: bool, known: str | None = None
) -> tuple[int, bytes, str | None]:
    """``length`` bytes of ``fh`` at ``offset`` and their sha256 (``known``, or computed when
    ``hashed``)."""
    fh.seek(offset)
    data = fh.read(length)
    return offset, data, known or (sha256_hex(data) if hashed else None)


class _Known:
    """A running sha256 read from the package's digests file: its value only."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def digest(self) -> bytes:
        return self.value

    def hexdigest(self) -> str:
        return self.value.hex()


class _Marks(dict[int, Any]):
    """The running sha256 of the package at the offsets a stream may start or end at: hash
    objects as the client computes them, or (``known``) every piece end from the digests file."""

    known = False


def _known_marks(path: Path, piece_size: int) -> _Marks:
    """Every piece end's digest from ``path``'s digests file when it is current, else only
    the empty prefix (the rest is hashed on the way)."""
    marks = _Marks({0: hashlib.sha256()})
    listed = read_digests(path, piece_size)
    if listed is not None:
        marks.update((end, _Known(value)) for end, value in listed.items())
        marks.known = True
    return marks


def _hash_range(
    fh: BinaryIO,
    offset: int,
    size: int,
    piece_size: int,
    marks: dict[int, Any],
    stop: threading.Event,
) -> None:
    """Hash the file's bytes ``[offset, size)`` on from the running sha256 at ``offset`` (in
    ``marks``), adding the running sha256 at each piece end, until ``stop`` is set; reads
    through a handle of its own (the sender keeps ``fh``)."""
    running = marks[offset].copy()
    at = offset
    with open(fh.name, "rb", buffering=0) as own:
        own.seek(offset)
        for at in hash_piece_ends(own, running, offset, size, piece_size, stop):
            marks[at] = running.copy()
    if at < size and not stop.is_set():
        raise shorter_while_sent(at, size)


def _hash_prefix(fh: BinaryIO, end: int, piece_size: int, marks: dict[int, Any]) -> None:
    """Hash the file's bytes ``[0, end)``, keeping the running sha256 at each piece end (and
    at ``end``) in ``marks``."""
    digest = hashlib.sha256()
    fh.seek(0)
    at = 0
    for at in hash_piece_ends(fh, digest, 0, end, piece_size):
        marks[at] = digest.copy()
    if at < end:
        raise PackageError(
            f"the package is shorter than the {end} bytes the agent holds; deploy it again"
        )
    marks[end] = digest.copy()  # byte 0 too


def hash_pieces(path: Path, piece_size: int) -> tuple[str, list[str]]:
    """The sha256 of the file and of each ``piece_size`` piece, in one read of the file.

    The whole-file digest is computed in a second thread while this one hashes the pieces
    (hashlib lets go of the GIL), so two digests cost about the time of one.
    """
    whole = hashlib.sha256()
    pieces: list[str] = []
    piece = hashlib.sha256()
    in_piece = 0
    block_size = STREAM_BLOCK
    with open(path, "rb") as fh, ThreadPoolExecutor(1, "outpost-upload-hash") as pool:
        while block := fh.read(min(block_size, piece_size - in_piece)):
            job = pool.submit(whole.update, block)
            piece.update(block)
            in_piece += len(block)
            if in_piece == piece_size:
                pieces.append(piece.hexdigest())
                piece, in_piece = hashlib.sha256(), 0
            job.result()
    if in_piece or not pieces:
        pieces.append(piece.hexdigest())
    return whole.hexdigest(), pieces


def pair_with_agent(
    base_url: str, key: KeyPair, agent_id: str, code: str, name: str = "desktop"
) -> bytes:
    """Pair ``key`` with the agent whose id is ``agent_id``; returns its public key to pin.

    The agent must answer with a key whose fingerprint is ``agent_id`` (else "fingerprint
    mismatch"), and every answer must carry that key's signature.
    """
    with AgentClient(base_url, key=key, agent_id=agent_id) as client:
        client.pair(code, name)
        pinned = client.auth.answered_key
    if pinned is None:  # pragma: no cover - _check_response always sets it
        raise AuthError("the agent did not identify itself")
    return pinned
