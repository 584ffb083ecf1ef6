"""Request bodies sent straight from a file: a byte range of a package, then a tail.

A chained upload (:meth:`device_agent.client.AgentClient.put_chain`) sends a package's bytes
and then its proof, which is known only once every byte is gone. Through httpx each block is
read into memory and copied again to frame it; :class:`FileBodyTransport` sends such a
:class:`FileBody` itself over a plain ``http://`` connection: the head, the file's range with
``sendfile`` (the kernel hands the page cache to the socket: nothing is read into Python),
then the tail, and reads the answer with :mod:`http.client`. Everything else (signing,
checking the answer's signature, other requests) stays with httpx: the transport gives back
an :class:`httpx.Response` and raises httpx's own transport errors, so callers see one
client. Where ``sendfile`` is missing the range goes in blocks; a custom transport (tests)
gets the same bytes as an iterator.
"""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Callable, Iterator
from typing import BinaryIO

import httpx

from runtimes.errors import PackageError

FILE_BODY = "outpost_file_body"  # the request extension that carries a FileBody
SEND_SLICE = 4 << 20  # bytes per sendfile call (progress is reported between them)
READ_BLOCK = 1 << 20  # bytes per block where the range is read instead


def shorter_while_sent(at: int, size: int) -> PackageError:
    return PackageError(
        f"the package got shorter while it was sent (at byte {at} of {size}); deploy it again"
    )


class FileBody:
    """``fh``'s bytes ``[offset, size)``, then ``tail()`` (called once they are all sent).

    ``on_progress(sent, size)`` is called as the range goes. A file that ends early raises
    :class:`PackageError` (it changed while it was sent).
    """

    def __init__(
        self,
        fh: BinaryIO,
        offset: int,
        size: int,
        tail: Callable[[], bytes],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.fh = fh
        self.offset = offset
        self.size = size
        self.tail = tail
        self.on_progress = on_progress
        self.timings: dict[str, float] = {}  # filled by the caller (the proof's wait)

    def __iter__(self) -> Iterator[bytes]:
        """The body as blocks (for a transport that takes an iterator)."""
        sent = self.offset
        self.fh.seek(sent)
        while sent < self.size:
            block = self.fh.read(min(READ_BLOCK, self.size - sent))
            if not block:
                raise shorter_while_sent(sent, self.size)
            sent += len(block)
            yield block
            if self.on_progress is not None:
                self.on_progress(sent, self.size)
        yield self.tail()

    def send_to(self, sock: socket.socket) -> None:
        """Send the range with ``sendfile`` (in :data:`SEND_SLICE` calls), then the tail."""
        sent = self.offset
        while sent < self.size:
            count = min(SEND_SLICE, self.size - sent)
            done = sock.sendfile(self.fh, sent, count)
            if done <= 0:
                raise shorter_while_sent(sent, self.size)
            sent += done
            if self.on_progress is not None:
                self.on_progress(sent, self.size)
        sock.sendall(self.tail())


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    timeout = request.extensions.get("timeout", {})
    return {k: timeout.get(k) for k in ("connect", "write", "read")}


def _head(request: httpx.Request) -> bytes:
    """The request line and headers, with ``Connection: close`` (one request per stream)."""
    skip = {b"connection", b"accept-encoding", b"transfer-encoding"}
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s" % (k, v) for k, v in request.headers.raw if k.lower() not in skip]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _answer(sock: socket.socket, request: httpx.Request) -> httpx.Response:
    reply = http.client.HTTPResponse(sock, method=request.method)
    try:
        reply.begin()
        content = reply.read()
    except (OSError, http.client.HTTPException) as exc:
        raise httpx.ReadError(f"no answer from the agent ({exc})", request=request) from None
    finally:
        reply.close()
    return httpx.Response(
        reply.status, headers=reply.getheaders(), content=content, request=request
    )


def send_file_body(request: httpx.Request, body: FileBody) -> httpx.Response:
    """One request whose body is ``body``, on a connection of its own."""
    timeouts = _timeouts(request)
    address = (request.url.host, request.url.port or 80)
    try:
        sock = socket.create_connection(address, timeout=timeouts["connect"])
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc), request=request) from None
    except OSError as exc:
        raise httpx.ConnectError(str(exc), request=request) from None
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeouts["write"])
        try:
            sock.sendall(_head(request))
            body.send_to(sock)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc), request=request) from None
        except OSError as exc:
            # The agent may have answered early (a refusal) and closed: read what it said.
            sock.settimeout(1.0)
            try:
                return _answer(sock, request)
            except httpx.ReadError:
                raise httpx.WriteError(str(exc), request=request) from None
        sock.settimeout(timeouts["read"])
        return _answer(sock, request)


class FileBodyTransport(httpx.HTTPTransport):
    """httpx's transport, except that a plain-HTTP request carrying a :class:`FileBody` (in
    its :data:`FILE_BODY` extension) is sent by :func:`send_file_body`."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.extensions.get(FILE_BODY)
        if isinstance(body, FileBody) and request.url.scheme == "http" and _can_sendfile(body):
            return send_file_body(request, body)
        return super().handle_request(request)


def _can_sendfile(body: FileBody) -> bool:
    try:
        body.fh.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    return hasattr(os, "sendfile")
