"""Request bodies as the agent reads them: bounded in time, and parsed in linear time.

A client that declares a body and then stops sending it (a camera that dropped off the
Wi-Fi mid-request leaves a connection that never closes) must not hold an inference slot or
an upload's lock for ever. :class:`BodyWatch` ends such a read: no byte for
:data:`BODY_IDLE_S` while the handler waits for one, or (for a body read into memory) more
time than :func:`body_deadline` gives its length, and the read raises
:class:`BodyStalledError` (a :class:`ConnectionError`, as a lost connection is).

The parsers here take bytes already read: a multipart field found with ``bytes.find`` (the
standard library's email parser took 30 s, on the event loop, for 60 MiB of blank lines), a
JSON object whose nesting cannot exhaust the stack, and base64 as clients really send it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.parser
import email.policy
import json
import quopri
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

BODY_IDLE_S = 30.0  # a body that sends nothing for this long while it is awaited is dropped
# A body read into memory must also keep up this rate overall (beyond BODY_IDLE_S): a client
# that sends a byte now and then cannot hold a slot for long either.
BODY_MIN_RATE = 64 << 10  # bytes per second
CHECK_EVERY_S = 1.0
MAX_PART_HEADER = 16 << 10  # bytes of one multipart part's headers
MAX_PARTS = 64  # parts of one multipart body (an image and a few fields need a handful)
_DATA_URL = re.compile(rb"\Adata:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)
_WHITESPACE = re.compile(rb"[ \t\r\n\f\v]+")


class BodyStalledError(ConnectionError, asyncio.TimeoutError):
    """The client stopped sending the body it declared (see :class:`BodyWatch`). A timeout as
    well: aiohttp, draining what is left of the body after the answer, then just closes the
    connection."""


class BodyError(ValueError):
    """A body that cannot be parsed as what the route takes; the message says what to send."""


def body_deadline(length: int | None, limit: int) -> float:
    """Seconds a body of ``length`` bytes (``limit`` when unknown) may take to arrive."""
    return BODY_IDLE_S + (limit if length is None else length) / BODY_MIN_RATE


class BodyWatch:
    """Watches one request's body while the handler reads it.

    The body has stalled when nothing new arrived for ``idle_s`` although the handler has
    taken every byte that did (it waits on the client, not the client on it: a handler
    writing to a slow disk is not the client's fault), or when ``deadline_s`` (if given) has
    passed. Then the pending read raises :class:`BodyStalledError`, and so does every later
    one. It watches while :meth:`chunks` (or :meth:`read`) is iterated; event loop only.
    """

    def __init__(
        self,
        request: web.Request,
        *,
        idle_s: float | None = None,
        deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        every_s: float | None = None,
    ) -> None:
        self.stream = request.content
        self.idle_s = BODY_IDLE_S if idle_s is None else idle_s
        self.clock = clock
        self.every_s = CHECK_EVERY_S if every_s is None else every_s
        self.started = clock()
        self.deadline = None if deadline_s is None else self.started + deadline_s
        self.taken = 0  # bytes the handler has read
        self._seen = self._fed()
        self._moved = self.started
        self._timer: asyncio.TimerHandle | None = None

    def _fed(self) -> int:
        return int(getattr(self.stream, "total_bytes", 0))

    def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.every_s, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        if self.stream.is_eof():  # all of it arrived: nothing left to wait for
            self._timer = None
            return
        now, fed = self.clock(), self._fed()
        if fed != self._seen or fed > self.taken:  # bytes arrived, or wait for the handler
            self._seen, self._moved = fed, now
        reason = None
        if now - self._moved >= self.idle_s:
            reason = f"nothing arrived for {self.idle_s:g} s"
        elif self.deadline is not None and now >= self.deadline:
            reason = f"it took over {self.deadline - self.started:.0f} s"
        if reason is None:
            self._timer = asyncio.get_running_loop().call_later(self.every_s, self._check)
            return
        self._timer = None
        self.stream.set_exception(
            BodyStalledError(
                f"the request body stopped short ({fed} bytes received; {reason}); "
                "check the connection and send the request again"
            )
        )

    async def chunks(self, source: AsyncIterable[T]) -> AsyncIterator[T]:
        """``source``'s items (``bytes``, or ``(bytes, end_of_chunk)`` tuples), counted and
        watched until the iteration ends (or the generator is closed)."""
        self.start()
        try:
            async for item in source:
                data = item[0] if isinstance(item, tuple) else item
                self.taken += len(data)  # type: ignore[arg-type]
                yield item
        finally:
            self.stop()

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (``web.HTTPRequestEntityTooLarge`` past
        it)."""
        parts: list[bytes] = []
        async for data in self.chunks(self.stream.iter_any()):
            if self.taken > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=self.taken)
            parts.append(data)
        return b"".join(parts)


def json_body(raw: bytes, example: str) -> Any:
    """``raw`` parsed as JSON, or :class:`BodyError` that says what to send (``example``)."""
    try:
        return json.loads(raw)
    except RecursionError:
        reason = "it is nested too deeply"
    except ValueError as exc:  # also a body that is not UTF-8
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise BodyError(f"the JSON body could not be parsed ({reason}); send {example}")


def base64_image(text: str) -> bytes:
    """The bytes of ``image_base64`` as clients send it: standard or URL-safe alphabet, with
    or without padding, wrapped in lines (MIME) or not, and with or without a
    ``data:image/...;base64,`` prefix (a browser's data URL). :class:`BodyError` otherwise."""
    raw = text.encode("ascii", "replace")
    raw = _WHITESPACE.sub(b"", _DATA_URL.sub(b"", raw, count=1))
    if b"-" in raw or b"_" in raw:
        raw = raw.translate(bytes.maketrans(b"-_", b"+/"))
    core = raw.rstrip(b"=")
    raw = core + b"=" * (-len(core) % 4)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BodyError(
            "image_base64 is not valid base64; send the image file's bytes encoded with "
            "base64 (e.g. base64.b64encode(open('photo.jpg', 'rb').read()).decode())"
        ) from None
    if not data:
        raise BodyError("image_base64 is empty; send the image file's bytes encoded as base64")
    return data


def _boundary(content_type: str) -> bytes:
    header = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(
        f"Content-Type: {content_type}\r\n\r\n"
    )
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 200 or not boundary.isascii():
        raise BodyError(
            "the multipart body has no usable boundary in its Content-Type; send the file as "
            "multipart/form-data field 'image' (e.g. curl -F image=@photo.jpg URL)"
        )
    return boundary.encode("ascii")


def _part(raw: bytes) -> tuple[str | None, bytes]:
    """One part (its headers and content): its form field name and its decoded content."""
    crlf, lf = raw.find(b"\r\n\r\n", 0, MAX_PART_HEADER), raw.find(b"\n\n", 0, MAX_PART_HEADER)
    end, skip = (crlf, 4) if crlf >= 0 and (lf < 0 or crlf < lf) else (lf, 2)
    if end < 0:
        raise BodyError(
            "a part of the multipart body has no end to its headers; send the file as "
            "multipart/form-data field 'image' (e.g. curl -F image=@photo.jpg URL)"
        )
    headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(
        raw[:end] + b"\r\n\r\n"
    )
    name = headers.get_param("name", header="content-disposition")
    content = raw[end + skip :]
    encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        core = _WHITESPACE.sub(b"", content).rstrip(b"=")
        try:
            content = base64.b64decode(core + b"=" * (-len(core) % 4), validate=False)
        except (binascii.Error, ValueError):
            raise BodyError(
                "a base64 part of the multipart body is not valid base64; send the file as it "
                "is (e.g. curl -F image=@photo.jpg URL)"
            ) from None
    elif encoding == "quoted-printable":
        content = quopri.decodestring(content)
    return (name if isinstance(name, str) else None), content


def multipart_field(content_type: str, body: bytes, name: str) -> bytes | None:
    """The content of form field ``name`` of a multipart/form-data ``body``; None when the body
    has no such field, :class:`BodyError` when it cannot be parsed or has the field twice.

    Linear in the body's size: the delimiters are found with ``bytes.find``, and only each
    part's headers (at most :data:`MAX_PART_HEADER` bytes) go through the email parser.
    """
    delimiter = b"--" + _boundary(content_type)
    start = _next_delimiter(body, delimiter, 0)
    if start < 0:
        raise BodyError(
            "the multipart body does not contain the boundary its Content-Type names; send "
            "the file as multipart/form-data field 'image' (e.g. curl -F image=@photo.jpg URL)"
        )
    found: bytes | None = None
    at = start + len(delimiter)
    parts = 0
    while not body.startswith(b"--", at):  # the closing delimiter ends the body
        parts += 1
        if parts > MAX_PARTS:
            raise BodyError(
                f"the multipart body has more than {MAX_PARTS} parts; send the image as field "
                f"'{name}' and the options in the query"
            )
        line_end = body.find(b"\n", at)
        if line_end < 0:
            break  # a body cut after a delimiter: the parts before it stand
        following = _next_delimiter(body, delimiter, line_end + 1)
        end = len(body) if following < 0 else following - 1  # the line break before it
        if body[end - 1 : end] == b"\r" and following >= 0:
            end -= 1
        field, content = _part(body[line_end + 1 : end])
        if field == name:
            if found is not None:
                raise BodyError(
                    f"the multipart body has the field '{name}' twice; send one image per request"
                )
            found = content
        if following < 0:
            break
        at = following + len(delimiter)
    return found


def _next_delimiter(body: bytes, delimiter: bytes, start: int) -> int:
    """Where the next ``delimiter`` at the start of a line is, from ``start``; -1 if none."""
    if start == 0 and body.startswith(delimiter):
        return 0
    at = body.find(b"\n" + delimiter, max(start - 1, 0))
    return at + 1 if at >= 0 else -1
