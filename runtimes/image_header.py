"""An image's size from its header, without decoding a pixel.

:func:`image_header_size` reads ``(width, height)`` from the header of the common formats (PNG,
JPEG, GIF, BMP, WebP, TIFF), so a decompression bomb (a few hundred bytes whose header claims
30000 x 30000 pixels: gigabytes once decoded) is refused before the decoder allocates its
output. :func:`runtimes.preprocess.decode_image` checks every image this way; the dataset
import (``desktop_app.core.image_check``) uses the same reader.
"""

from __future__ import annotations

from typing import Literal

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, JPEG, GIF, BMP, WebP or TIFF header, without decoding.

    Returns None when the bytes are none of these or the header is cut short.
    """
    try:
        if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
            return _u32be(data, 16), _u32be(data, 20)
        if data[:3] == JPEG_SOI:
            return _jpeg_size(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _u16le(data, 6), _u16le(data, 8)
        if data[:2] == b"BM" and len(data) >= 26:
            if _u32le(data, 14) == 12:  # OS/2 BITMAPCOREHEADER
                return _u16le(data, 18), _u16le(data, 20)
            w = int.from_bytes(data[18:22], "little", signed=True)
            h = int.from_bytes(data[22:26], "little", signed=True)
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except (IndexError, ValueError):
        return None
    return None


JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(data)
    while i + 3 < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i + 2 >= n:
            return None
        marker = data[i]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, or image data before any frame header
            return None
        if marker in JPEG_SOF:
            if i + 8 > n:
                return None
            return _u16be(data, i + 6), _u16be(data, i + 4)
        i += 1 + _u16be(data, i + 1)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return _u16le(data, 26) & 0x3FFF, _u16le(data, 28) & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = _u32le(data, 21)
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"

    def num(offset: int, size: int) -> int:
        return read_uint(data, offset, size, order)

    ifd = num(4, 4)
    found: dict[int, int] = {}
    for k in range(num(ifd, 2)):
        entry = ifd + 2 + 12 * k
        tag, kind = num(entry, 2), num(entry + 2, 2)
        if tag in (256, 257):
            found[tag] = num(entry + 8, 2) if kind == 3 else num(entry + 8, 4)
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _u16be(data: bytes, i: int) -> int:
    return read_uint(data, i, 2, "big")


def _u32be(data: bytes, i: int) -> int:
    return read_uint(data, i, 4, "big")


def _u16le(data: bytes, i: int) -> int:
    return read_uint(data, i, 2, "little")


def _u32le(data: bytes, i: int) -> int:
    return read_uint(data, i, 4, "little")


def read_uint(data: bytes, i: int, size: int, order: Literal["little", "big"]) -> int:
    if i + size > len(data):
        raise IndexError(i)
    return int.from_bytes(data[i : i + size], order)
