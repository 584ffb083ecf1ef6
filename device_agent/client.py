"""A small typed HTTP client for the agent API v1 (used by the desktop CLI and GUI).

A client made with the desktop's ``key`` signs every request; one made with the agent's
pinned public key (``agent_key``) or id (``agent_id``) refuses any answer that is not signed
by that agent, with a "fingerprint mismatch" when another key answers.

Example:
    >>> client = AgentClient("http://192.168.1.20:8765", key=desktop, agent_key=pinned)  # doctest: +SKIP
    >>> client.upload_package(Path("shapes.outpost.zip"))["version"]  # doctest: +SKIP
    '1'
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from device_agent.auth import (
    AGENT_KEY_HEADER,
    BODY_HASH_HEADER,
    KEY_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    FingerprintMismatchError,
    KeyPair,
    agent_id_for,
    b64,
    desktop_pairing_proof,
    fingerprint,
    new_nonce,
    request_message,
    response_message,
    sha256_hex,
    unb64,
    valid_sha256,
    verify,
)
from device_agent.errors import AgentRejectedError, AgentUnreachableError, one_line
from runtimes.errors import PackageError
from runtimes.fileio import sha256_file

__all__ = [
    "AgentClient",
    "AgentRejectedError",
    "AgentUnreachableError",
    "FingerprintMismatchError",
    "SignedAuth",
    "pair_with_agent",
]

UPLOAD_TIMEOUT_S = 600.0  # big packages, slow links, plus model loading on the device


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

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        nonce = new_nonce()
        request.headers[NONCE_HEADER] = nonce
        if self.key is not None:
            if self.agent_id is None:
                raise AuthError("a signed request needs the agent's id or pinned key")
            body_sha = request.headers.get(BODY_HASH_HEADER)
            if not valid_sha256(body_sha):
                # In-memory bodies (bytes, multipart forms); upload_package hashes its file.
                body_sha = sha256_hex(request.read())
            timestamp = str(int(time.time()))
            message = request_message(
                self.agent_id,
                request.method,
                request.url.raw_path.decode("ascii"),
                request.headers.get("Content-Type", ""),
                timestamp,
                nonce,
                str(body_sha),
            )
            request.headers[KEY_HEADER] = self.key.fingerprint
            request.headers[TIMESTAMP_HEADER] = timestamp
            request.headers[BODY_HASH_HEADER] = str(body_sha)
            request.headers[SIGNATURE_HEADER] = b64(self.key.sign(message))
        response = yield request
        if self.agent_id is not None:
            self._check_response(request, response, nonce)

    def _check_response(self, request: httpx.Request, response: httpx.Response, nonce: str) -> None:
        where = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
        claimed = response.headers.get(AGENT_KEY_HEADER)
        signature = response.headers.get(SIGNATURE_HEADER)
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
                f"not the pinned {expected}; if the device was reset, pair it again"
            )
        message = response_message(
            str(self.agent_id),
            nonce,
            response.status_code,
            response.headers.get("Content-Type", ""),
            sha256_hex(response.content),
        )
        if not verify(public_raw, unb64(signature, SIGNATURE_HEADER, 64), message):
            raise AuthError(
                f"the answer from {where} does not match the agent's signature; "
                "it was altered on the way"
            )
        self.answered_key = public_raw


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.auth = SignedAuth(key, agent_key, agent_id)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, auth=self.auth)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/info")

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

    def upload_package(self, path: Path, *, timeout: float | None = None) -> dict[str, Any]:
        """Install a ``.outpost.zip`` on the agent; returns the installed model's description."""
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
            return self._request(
                "PUT",
                "/v1/packages",
                content=fh,
                headers={"Content-Type": "application/zip", **hashed},
                timeout=timeout or max(self.timeout, UPLOAD_TIMEOUT_S),
            )

    def infer(
        self,
        image_bytes: bytes,
        model: str | None = None,
        conf: float | None = None,
        iou: float | None = None,
    ) -> dict[str, Any]:
        """Run one encoded image (JPEG/PNG bytes) through a model on the agent."""
        params = {
            k: str(v) for k, v in (("model", model), ("conf", conf), ("iou", iou)) if v is not None
        }
        return self._request(
            "POST",
            "/v1/infer",
            content=image_bytes,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )

    def rollback(self, model: str) -> dict[str, Any]:
        """Make the previous version of ``model`` active again."""
        return self._request("POST", f"/v1/models/{quote(model, safe='')}/rollback")

    def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        response = self._send(method, path, timeout=timeout, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise AgentRejectedError(
                response.status_code,
                f"{self.base_url + path} did not answer with a JSON object; is this an outpost-agent?",
            )
        return body

    def _send(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request; transport failures and error statuses raise typed errors."""
        url = self.base_url + path
        try:
            response = self._http.request(method, path, timeout=timeout or self.timeout, **kwargs)
        except httpx.TransportError as exc:
            raise AgentUnreachableError(
                f"cannot reach agent at {url}: {one_line(exc) or type(exc).__name__}; "
                "check that outpost-agent is running and the address is right"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise AgentRejectedError(
                response.status_code, one_line(message or response.text or response.reason_phrase)
            )
        return response


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
