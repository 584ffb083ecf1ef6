"""One kept-alive connection for a desktop's reads and images.

:class:`~device_agent.client.AgentClient` sends the images it asks an agent to infer on, and
its ``GET`` requests (``/v1/info``, stats, health), through an :class:`AgentLine`: one
``http.client`` connection kept open to the agent, signed and checked by the client's own
:class:`~device_agent.client.SignedAuth` (the same headers, the same checks of the agent's
signed answer, the same single re-signing when only the timestamp was refused). Everything
else (uploads, installs, activations) goes through httpx. httpx's layers above the socket
(request building, cookies, the auth flow, hooks, its connection pool) cost the desktop
about 0.8 ms of CPU per signed image, as much as the rest of the exchange; a camera feed sent
from the desktop pays that on every frame. Reads share the line so that connecting to a
device (``/v1/info``) and sending it an image take one connection, not two.

A line carries one request at a time: a request that finds it busy (another thread's in
flight) goes through httpx instead. It is not used through a proxy (httpx honours the
environment's) nor for anything but ``http://`` agents.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from device_agent.auth import (
    AGENT_TIME_KEY,
    BODY_HASH_HEADER,
    NONCE_HEADER,
    KeyPair,
    new_nonce,
    sha256_hex,
)
from device_agent.errors import AgentAnswerError, AgentUnreachableError, ascii_digits, one_line

MAX_ANSWER_BYTES = 64 << 20  # far above any agent answer (stats, OpenAPI: kilobytes)

# What a kept-alive connection the agent closed while idle raises when it is used again.
STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


class HeaderLookup(Protocol):
    """Case-insensitive header lookup: httpx's ``Headers`` or ``http.client``'s message."""

    def get(self, key: str, /) -> Any: ...


class Signer(Protocol):
    """What a line needs of :class:`~device_agent.client.SignedAuth`."""

    key: KeyPair | None
    agent_id: str | None
    clock_known: bool

    def signature_headers(
        self, method: str, path_qs: str, content_type: str, body_sha256: str, nonce: str
    ) -> dict[str, str]: ...

    def check_answer(
        self, where: str, nonce: str, status: int, headers: HeaderLookup, body: bytes
    ) -> None: ...

    def learn_clock(self, agent_time: object, sent: float, answered: float) -> bool: ...


class Answer(NamedTuple):
    status: int
    reason: str
    body: bytes


def unreachable(url: str, exc: BaseException) -> AgentUnreachableError:
    return AgentUnreachableError(
        f"cannot reach agent at {url}: {one_line(exc) or type(exc).__name__}; "
        "check that outpost-agent is running and the address is right"
    )


# An answer's body must come at least this fast once its headers are in (after the read
# timeout's own allowance): a device that trickles its answer a byte at a time would
# otherwise hold the desktop for as long as it likes, each byte within the read timeout.
MIN_ANSWER_RATE = 64 << 10  # bytes per second


class AnswerDeadline:
    """When the body of an answer must have arrived: ``timeout`` seconds after its headers,
    plus one second for each :data:`MIN_ANSWER_RATE` bytes of it that came."""

    def __init__(self, url: object, timeout: float) -> None:
        self.url = url
        self.start = time.monotonic()
        self.timeout = timeout

    def check(self, received: int) -> None:
        """Raise :class:`AgentUnreachableError` when ``received`` bytes came too slowly."""
        allowed = self.timeout + received / MIN_ANSWER_RATE
        if time.monotonic() - self.start > allowed:
            raise unreachable(
                str(self.url),
                TimeoutError(
                    f"its answer came too slowly ({received} bytes in "
                    f"{time.monotonic() - self.start:.0f} s)"
                ),
            )


def too_large(url: object) -> AgentAnswerError:
    return AgentAnswerError(
        f"the answer from {url} is larger than {MAX_ANSWER_BYTES >> 20} MiB, "
        "which no outpost-agent sends; is another program listening there?"
    )


def refuse_unbounded(url: object, headers: HeaderLookup) -> None:
    """Refuse, before its body is read, an answer that declares more than
    :data:`MAX_ANSWER_BYTES` or comes compressed (a cap counts what arrives, not what it
    inflates to, and an agent never compresses)."""
    declared = headers.get("Content-Length") or ""
    if ascii_digits(declared) and int(declared) > MAX_ANSWER_BYTES:
        raise too_large(url)
    encoding = (headers.get("Content-Encoding") or "").strip().lower()
    if encoding not in ("", "identity"):
        raise AgentAnswerError(
            f"the answer from {url} is compressed ({encoding}), which no "
            "outpost-agent sends; is another program listening there?"
        )


class _Stale(Exception):
    """The agent had closed the kept-alive connection when the request went out."""


class AgentLine:
    """A kept-alive connection to the agent at ``base_url`` whose requests ``auth`` signs and
    whose answers it checks; ``headers`` go with every request.

    Attributes:
        lock: held by the request in flight (callers take it without waiting).
        opened: connections made so far (one while the agent keeps it open).
    """

    def __init__(self, base_url: str, auth: Signer, headers: Mapping[str, str]) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.host = parts.hostname or ""
        self.port = parts.port or 80
        self.auth = auth
        self.headers = dict(headers)
        self.lock = threading.Lock()
        self.opened = 0
        self._conn: http.client.HTTPConnection | None = None

    @staticmethod
    def fits(base_url: str, auth: Signer) -> bool:
        """Whether a line can carry this client's requests: a plain ``http://`` agent reached
        without a proxy, by a desktop that signs for a known agent."""
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            return False
        if auth.key is None or auth.agent_id is None:
            return False
        proxies = urllib.request.getproxies()
        proxied = "http" in proxies or "all" in proxies
        return not proxied or bool(urllib.request.proxy_bypass(parts.hostname))

    def send(
        self, method: str, path_qs: str, body: bytes, content_type: str, timeout: float
    ) -> Answer:
        """Send a request without side effects (a read, an image to infer on: it may be sent
        twice, see below) and return the agent's answer, once its signature checked.
        ``content_type`` is empty for a request without a body.

        Raises:
            AgentUnreachableError: the connection failed or timed out.
            AgentAnswerError: an answer no agent sends (too large, compressed).
            AuthError: the answer is not signed by the pinned agent.
        """
        body_sha = sha256_hex(body)
        nonce = new_nonce()
        signed_again = False
        while True:
            headers = {
                **self.headers,
                NONCE_HEADER: nonce,
                BODY_HASH_HEADER: body_sha,
                **self.auth.signature_headers(method, path_qs, content_type, body_sha, nonce),
            }
            if content_type:
                headers["Content-Type"] = content_type
            sent = time.time()
            try:
                answer, answer_headers = self._exchange(method, path_qs, body, headers, timeout)
            except _Stale:
                # Closed by the agent as the request left: sent again on a new connection,
                # under a new nonce (the agent may have received the first).
                nonce = new_nonce()
                continue
            self.auth.check_answer(self.base_url, nonce, answer.status, answer_headers, answer.body)
            if answer.status != 401:
                self.auth.clock_known = True  # the agent took this timestamp
                return answer
            agent_time = answer_field(answer.body, AGENT_TIME_KEY)
            if signed_again or not self.auth.learn_clock(agent_time, sent, time.time()):
                return answer
            signed_again = True  # refused for its timestamp alone: the nonce was not spent

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self, url: str, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """The kept-alive connection and True, or a new one and False when there is none or
        the agent closed it (a failure to connect names ``url``)."""
        conn = self._conn
        if conn is not None and conn.sock is not None and not _readable(conn.sock):
            conn.sock.settimeout(timeout)
            return conn, True
        self.close()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            conn.close()
            raise unreachable(url, exc) from None
        self._conn = conn
        self.opened += 1
        return conn, False

    def _exchange(
        self, method: str, path_qs: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[Answer, HeaderLookup]:
        url = self.base_url + path_qs.split("?", 1)[0]
        conn, reused = self._connection(url, timeout)
        try:
            conn.request(method, path_qs, body=body or None, headers=headers)
            response = conn.getresponse()
            refuse_unbounded(url, response.msg)
            data = _read_answer(response, AnswerDeadline(url, timeout))
        except STALE as exc:
            self.close()
            if reused:
                raise _Stale from None
            raise unreachable(url, exc) from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise unreachable(url, exc) from None
        except (AgentAnswerError, AgentUnreachableError):  # too large, or too slow: half read
            self.close()
            raise
        if len(data) > MAX_ANSWER_BYTES:
            self.close()
            raise too_large(url)
        if response.will_close:
            self.close()
        return Answer(response.status, response.reason, data), response.msg


def _readable(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection has something to read: the agent closed it."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def answer_field(body: bytes, key: str) -> object:
    """``key`` of a JSON object answer; None when the answer is not one or lacks it."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def _read_answer(response: http.client.HTTPResponse, deadline: AnswerDeadline) -> bytes:
    """The body of ``response``, at most :data:`MAX_ANSWER_BYTES` + 1 bytes, within
    ``deadline``."""
    parts: list[bytes] = []
    got = 0
    while got <= MAX_ANSWER_BYTES:
        part = response.read1(min(1 << 16, MAX_ANSWER_BYTES + 1 - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
        deadline.check(got)
    if got <= MAX_ANSWER_BYTES:
        parts.append(response.read())  # nothing left: marks the answer read (keep-alive)
    return b"".join(parts)
