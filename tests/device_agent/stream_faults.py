"""Faults for streamed upload tests: a request body cut or corrupted on the way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from tests.fakes import EXPECTED, make_image_bytes


class AlteredStream(httpx.SyncByteStream):
    """``inner``'s bytes with the byte at ``flip`` inverted and/or the connection reset after
    ``cut`` bytes (an ``httpx.WriteError``, as a broken link gives)."""

    def __init__(self, inner: Any, cut: int | None, flip: int | None, request: Any) -> None:
        self.inner, self.cut, self.flip, self.request = inner, cut, flip, request

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for block in self.inner:
            block = bytes(block)
            if self.flip is not None and sent <= self.flip < sent + len(block):
                at = self.flip - sent
                block = block[:at] + bytes([block[at] ^ 0xFF]) + block[at + 1 :]
            if self.cut is not None and sent + len(block) > self.cut:
                yield block[: self.cut - sent]
                raise httpx.WriteError("connection reset mid-stream (test)", request=self.request)
            sent += len(block)
            yield block


def serving_version(client: Any) -> str:
    """The version the agent answers with, after checking it answers the fake detections."""
    result = client.infer(make_image_bytes())
    assert result["detections"] == list(EXPECTED)
    return str(result["version"])
