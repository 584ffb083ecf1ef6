"""Keys, fingerprints and signed messages: how a desktop and a paired agent trust each other.

Both sides hold an Ed25519 key made once. A key's fingerprint is the sha256 of its raw public
bytes (64 hex digits); an agent's id is the first 16 of them, so the id itself pins the key.

After pairing every request carries an Ed25519 signature by the desktop over the agent id,
method, path with query, content type, a timestamp, a random nonce and the sha256 of the
body; the agent refuses stale timestamps and nonces it has already seen. Every response is
signed by the agent over the request's nonce, the status, the content type and the sha256 of
the body. Nothing is encrypted: see the README ("Pairing and authentication").
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from device_agent.errors import IdentityError, ascii_digits, cannot_write, one_line
from runtimes.fileio import atomic_write_bytes

# Request headers (desktop → agent) and response headers (agent → desktop).
KEY_HEADER = "X-Outpost-Key"  # the desktop key's fingerprint
TIMESTAMP_HEADER = "X-Outpost-Timestamp"  # unix seconds
NONCE_HEADER = "X-Outpost-Nonce"  # 32 random hex digits; responses are bound to it
BODY_HASH_HEADER = "X-Outpost-Content-SHA256"
SIGNATURE_HEADER = "X-Outpost-Signature"  # base64 Ed25519 signature
AGENT_KEY_HEADER = "X-Outpost-Agent-Key"  # base64 raw public key of the answering agent

MAX_SKEW_S = 300  # a signed request older or newer than this is refused
# The agent's clock (unix seconds) in GET /v1/info and in a 401 for a timestamp outside the
# window: answers signed over the request's nonce, so the desktop can trust it and sign with it.
AGENT_TIME_KEY = "agent_time"
AGENT_ID_HEX = 16
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NONCE = re.compile(r"^[0-9a-f]{16,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class AuthError(IdentityError):
    """A key, signature or fingerprint does not check out."""


class FingerprintMismatchError(AuthError):
    """A device answered with another key than the one pinned for it."""


def fingerprint(public_raw: bytes) -> str:
    """sha256 of the raw public key, 64 hex digits."""
    return hashlib.sha256(public_raw).hexdigest()


def agent_id_for(public_raw: bytes) -> str:
    """The agent id a public key stands for: the first 16 hex digits of its fingerprint."""
    return fingerprint(public_raw)[:AGENT_ID_HEX]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError):
        raise AuthError(f"{what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise AuthError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class KeyPair:
    """An Ed25519 identity key (and the X25519 key derived from it for the pairing exchange)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_b64(self) -> str:
        return b64(self.public_raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_raw)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def exchange_key(self) -> X25519PrivateKey:
        """A Diffie-Hellman key derived from the identity seed (used to bind pairing proofs)."""
        seed = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        derived = HKDF(hashes.SHA256(), 32, salt=None, info=b"outpost exchange key v1").derive(seed)
        return X25519PrivateKey.from_private_bytes(derived)

    def exchange_public_b64(self) -> str:
        return b64(
            self.exchange_key()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def to_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyPair) and other.public_raw == self.public_raw

    def __hash__(self) -> int:
        return hash(self.public_raw)

    def __repr__(self) -> str:
        return f"KeyPair(fingerprint={self.fingerprint[:16]}...)"


def load_or_create_key(path: Path) -> tuple[KeyPair, bool]:
    """Load the PEM key at ``path``, or make one and store it there (mode 0600).

    Returns the key and whether it was just created.
    """
    path = Path(path)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        key = KeyPair.generate()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, key.to_pem())  # mkstemp: created 0600
            os.chmod(path, 0o600)
        except OSError as exc:
            raise IdentityError(cannot_write(path, exc, "check the folder permissions")) from None
        return key, True
    except OSError as exc:
        raise IdentityError(
            f"cannot read {path}: {one_line(exc.strerror)}; check the folder permissions"
        ) from None
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        private = None
    if not isinstance(private, Ed25519PrivateKey):
        raise IdentityError(
            f"{path} is corrupt (not an Ed25519 key); move it away to make a new identity "
            "(paired peers must pair again)"
        )
    return KeyPair(private), False


def verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    try:
        _public_key(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=256)
def _public_key(public_raw: bytes) -> Ed25519PublicKey:
    """The key object of a raw public key, loaded once per key: a verification with a key
    just loaded takes about 20% longer (133 against 110 us here), and the pinned peers sign
    every request and answer."""
    return Ed25519PublicKey.from_public_bytes(public_raw)


def mime(content_type: str | None) -> str:
    """The media type without parameters, lower case ('' when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


def request_message(
    agent_id: str,
    method: str,
    path_qs: str,
    content_type: str,
    timestamp: str,
    nonce: str,
    body_sha256: str,
) -> bytes:
    """What a desktop signs for one request."""
    fields = (agent_id, method.upper(), path_qs, mime(content_type), timestamp, nonce, body_sha256)
    return "\n".join(("outpost-request-v1", *fields)).encode("utf-8")


def response_message(
    agent_id: str, nonce: str, status: int, content_type: str, body_sha256: str
) -> bytes:
    """What an agent signs for one response (bound to the request's nonce)."""
    fields = (agent_id, nonce, str(status), mime(content_type), body_sha256)
    return "\n".join(("outpost-response-v1", *fields)).encode("utf-8")


def valid_nonce(nonce: str | None) -> bool:
    return nonce is not None and bool(_NONCE.match(nonce))


def valid_sha256(value: str | None) -> bool:
    return value is not None and bool(_SHA256.match(value))


def new_nonce() -> str:
    return os.urandom(16).hex()


@dataclass(frozen=True)
class SignedHeaders:
    """The signature headers of one request, parsed but not yet verified."""

    key_fingerprint: str
    timestamp: str
    nonce: str
    body_sha256: str
    signature: bytes


def parse_signed_headers(headers: Mapping[str, str]) -> SignedHeaders | None:
    """The signature headers of a request; None when it carries no signature at all."""
    get = headers.get
    key = get(KEY_HEADER)
    signature = get(SIGNATURE_HEADER)
    if key is None and signature is None:
        return None
    timestamp, nonce, body = get(TIMESTAMP_HEADER), get(NONCE_HEADER), get(BODY_HASH_HEADER)
    if not (key and signature and timestamp and nonce and body):
        raise AuthError(
            f"a signed request needs all of {KEY_HEADER}, {TIMESTAMP_HEADER}, {NONCE_HEADER}, "
            f"{BODY_HASH_HEADER} and {SIGNATURE_HEADER}"
        )
    if not valid_sha256(key) or not valid_nonce(nonce) or not valid_sha256(body):
        raise AuthError("malformed signature headers")
    if not ascii_digits(timestamp):
        raise AuthError(f"{TIMESTAMP_HEADER} must be unix seconds")
    return SignedHeaders(key, timestamp, nonce, body, unb64(signature, SIGNATURE_HEADER, 64))


class ClockSkewError(AuthError):
    """A request's timestamp is outside the freshness window of the agent's clock; the
    agent's time goes back in the (signed) answer, so the desktop can sign with it."""

    def __init__(self, message: str, agent_time: float) -> None:
        super().__init__(message)
        self.agent_time = agent_time


class ReplayGuard:
    """Refuses stale timestamps and nonces seen within the freshness window."""

    def __init__(
        self,
        window_s: int = MAX_SKEW_S,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self.clock = clock  # the agent's clock: requests are judged by it, answers carry it
        self._seen: dict[str, float] = {}

    def check(self, timestamp: str, nonce: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        sent = int(timestamp)
        if abs(now - sent) > self.window_s:
            raise ClockSkewError(
                f"the request timestamp is {int(sent - now):+d} s off this agent's clock; "
                f"clocks must agree within {self.window_s} s (check NTP on both machines)",
                now,
            )
        if len(self._seen) >= self.max_entries:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
        if nonce in self._seen and self._seen[nonce] > now:
            raise AuthError("this request was already received (replayed nonce)")
        if len(self._seen) >= self.max_entries:
            raise AuthError("too many requests in the freshness window; retry shortly")
        self._seen[nonce] = max(now, sent) + self.window_s


# --- pairing proof -------------------------------------------------------------------------


def pairing_proof(
    code: str, shared_secret: bytes, agent_id: str, desktop_public_raw: bytes, ephemeral_raw: bytes
) -> str:
    """HMAC of the desktop's key under the one-time code and an X25519 secret with the agent.

    Whoever sees the proof on the wire cannot test codes offline (they lack the secret), and a
    man in the middle cannot swap in their own desktop key (they lack the code).
    """
    key = HKDF(
        hashes.SHA256(),
        32,
        salt=code.encode("ascii"),
        info=b"outpost pairing v1 " + agent_id.encode(),
    ).derive(shared_secret)
    return hmac.new(key, desktop_public_raw + ephemeral_raw, hashlib.sha256).hexdigest()


def desktop_pairing_proof(
    code: str, agent_id: str, agent_exchange_b64: str, desktop: KeyPair
) -> tuple[str, str]:
    """(ephemeral public key b64, proof) for a pairing request from ``desktop``."""
    agent_exchange = X25519PublicKey.from_public_bytes(
        unb64(agent_exchange_b64, "the agent's exchange key", 32)
    )
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral.exchange(agent_exchange)
    return b64(ephemeral_raw), pairing_proof(
        code, shared, agent_id, desktop.public_raw, ephemeral_raw
    )


def agent_expected_proof(
    code: str, agent: KeyPair, agent_id: str, desktop_public_raw: bytes, ephemeral_raw: bytes
) -> str:
    shared = agent.exchange_key().exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    return pairing_proof(code, shared, agent_id, desktop_public_raw, ephemeral_raw)


def pieces_digest(pieces: Sequence[str], first: int) -> str:
    """The body digest a streamed upload signs: the sha256 of the hex digests of the pieces it
    carries (``pieces[first:]``, concatenated). The agent checks every piece against its own
    listed digest as it arrives; this binds the request's signature to exactly those pieces."""
    return hashlib.sha256("".join(pieces[first:]).encode("ascii")).hexdigest()


PROOF_DIGEST_BYTES = 32  # raw sha256, one per piece in a chained stream's proof
PROOF_SIGNATURE_BYTES = 64  # Ed25519, at the end of the proof


def chain_body_digest(upload_id: str, offset: int, proof_from: int, sealed: bool = False) -> str:
    """The body digest a chained upload stream signs (protocol 2): its bytes are not known
    when the request is signed, so the signature binds the request to the upload and its
    offsets, and the stream ends with a proof signed on its own (:func:`proof_message`; a
    ``sealed`` stream, protocol 4, with a seal: :func:`seal_message`)."""
    tag = "outpost-sealed-v1" if sealed else "outpost-chain-v1"
    text = f"{tag}\n{upload_id}\n{offset}\n{proof_from}"
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def chain_open_digest(
    upload_id: str, size: int, piece_size: int, head: str, name: str, sealed: bool = False
) -> str:
    """The body digest of a chained stream that opens its own upload (protocol 3; ``sealed``:
    protocol 4): binds the request to the id the desktop chose and to everything the upload
    is opened with."""
    tag = "outpost-sealed-open-v1" if sealed else "outpost-chain-open-v1"
    text = f"{tag}\n{upload_id}\n{size}\n{piece_size}\n{head}\n{name}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SEAL_BYTES = 32 + 32 + PROOF_SIGNATURE_BYTES  # protocol 4: two raw sha256, then Ed25519


def seal_message(
    agent_id: str, upload_id: str, nonce: str, size: int, package_sha: bytes, manifest_sha: bytes
) -> bytes:
    """What a desktop signs at the end of a sealed stream (protocol 4): the package's sha256
    (its name for it) and the sha256 of its ``manifest.json``, which lists every file's
    sha256, bound to the agent, the upload, its size and the request's nonce. The agent
    hashes no byte on the way: at the commit it checks the manifest against this digest and
    every file it extracts against the manifest."""
    fields = (
        "outpost-seal-v1",
        agent_id,
        upload_id,
        nonce,
        str(size),
        package_sha.hex(),
        manifest_sha.hex(),
    )
    return "\n".join(fields).encode("ascii")


def proof_message(
    agent_id: str, upload_id: str, nonce: str, proof_from: int, digests: bytes
) -> bytes:
    """What a desktop signs at the end of a chained stream: for each piece after byte
    ``proof_from``, the sha256 of the package from byte 0 to that piece's end (``digests``,
    32 raw bytes each; the last is the whole package's sha256), bound to the agent, the
    upload and the request's nonce."""
    fields = (
        "outpost-proof-v1",
        agent_id,
        upload_id,
        nonce,
        str(proof_from),
        hashlib.sha256(digests).hexdigest(),
    )
    return "\n".join(fields).encode("ascii")
