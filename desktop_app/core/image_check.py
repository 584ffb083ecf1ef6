"""What an import learns from an image file without decoding it: its size, and whether it is whole.

:func:`image_header_size` reads ``(width, height)`` from the header of the common formats, so
a decompression bomb is refused before any pixel is decoded.

:func:`check_structure` walks a PNG's chunks (every CRC-32 checked) or a JPEG's segments up
to its image data (and looks for the end marker after it), and returns the size the image
shows (a JPEG's EXIF orientation applied, as OpenCV applies it when it decodes). A PNG whose
chunks all carry their checksums is the file its encoder wrote, bit for bit; a cut or
damaged one is named with what is wrong. This is the check Pillow's ``verify()`` makes and
what Ultralytics runs before training (``verify()`` plus a JPEG end-marker test), at a
fraction of a decode's cost (about 4 µs against 60-70 µs for a small PNG). Anything else
(a WebP, a TIFF, a 12-bit or arithmetic-coded JPEG, ...) gets ``None``: decode it.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Literal

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"


class ImageStructureError(ValueError):
    """The file is not a whole image: ``truncated`` tells a cut file from a damaged one."""

    def __init__(self, kind: str, reason: str, *, truncated: bool = False) -> None:
        super().__init__(reason)
        self.kind = kind  # "PNG" or "JPEG"
        self.reason = reason
        self.truncated = truncated


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, JPEG, GIF, BMP, WebP or TIFF header, without decoding.

    Returns None when the bytes are none of these or the header is cut short.
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return _u32be(data, 16), _u32be(data, 20)
        if data[:3] == b"\xff\xd8\xff":
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


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


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
        if marker in _JPEG_SOF:
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
        return _num(data, offset, size, order)

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
    return _num(data, i, 2, "big")


def _u32be(data: bytes, i: int) -> int:
    return _num(data, i, 4, "big")


def _u16le(data: bytes, i: int) -> int:
    return _num(data, i, 2, "little")


def _u32le(data: bytes, i: int) -> int:
    return _num(data, i, 4, "little")


def _num(data: bytes, i: int, size: int, order: Literal["little", "big"]) -> int:
    if i + size > len(data):
        raise IndexError(i)
    return int.from_bytes(data[i : i + size], order)


# ---- structure ---------------------------------------------------------------------------


def check_structure(data: bytes) -> tuple[int, int] | None:
    """The ``(width, height)`` a PNG or baseline/progressive 8-bit JPEG shows, once its
    structure is checked; None for any other file (decode it to check it).

    Raises:
        ImageStructureError: the PNG or JPEG is cut short or damaged (the reason says where).
    """
    if data[:8] == PNG_SIGNATURE:
        return _check_png(data)
    if data[:3] == JPEG_SOI:
        return _check_jpeg(data)
    return None


_CHUNK_HEAD = struct.Struct(">I4s")
_SIZE = struct.Struct(">II")
_CRC = struct.Struct(">I")
# colour type → the bit depths the PNG specification allows for it
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _check_png(data: bytes) -> tuple[int, int]:
    n = len(data)
    if n < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d":
        raise ImageStructureError("PNG", "it has no IHDR header", truncated=n < 33)
    w, h = _SIZE.unpack_from(data, 16)
    depth, colour, method, filt, interlace = data[24:29]
    if (
        not w
        or not h
        or depth not in _PNG_DEPTHS.get(colour, ())
        or method
        or filt
        or interlace > 1
    ):
        raise ImageStructureError("PNG", "its IHDR header holds invalid values")
    view = memoryview(data)
    crc32, head, stated = zlib.crc32, _CHUNK_HEAD.unpack_from, _CRC.unpack_from
    i, image_data, palette = 8, False, False
    while i + 12 <= n:
        length, kind = head(data, i)
        end = i + 12 + length
        if end > n:
            raise ImageStructureError(
                "PNG", f"its {kind.decode('latin-1')} chunk is cut short", truncated=True
            )
        if crc32(view[i + 4 : end - 4]) != stated(data, end - 4)[0]:
            raise ImageStructureError(
                "PNG", f"its {kind.decode('latin-1')} chunk fails its CRC check"
            )
        if kind == b"IDAT":
            if colour == 3 and not palette:
                raise ImageStructureError("PNG", "it is palette-coloured but has no PLTE chunk")
            image_data = True
        elif kind == b"PLTE":
            palette = True
        elif kind == b"IEND":
            if not image_data:
                raise ImageStructureError("PNG", "it holds no IDAT image data")
            return w, h
        i = end
    raise ImageStructureError("PNG", "no IEND chunk", truncated=True)


# SOF0 (baseline), SOF1 (extended) and SOF2 (progressive) Huffman frames, which every
# decoder reads; other frame types (lossless, arithmetic-coded, hierarchical) are decoded
_JPEG_CHECKED_SOF = frozenset({0xC0, 0xC1, 0xC2})
_EXIF = b"Exif\x00\x00"
_FILL = re.compile(rb"\xff+")
_JPEG_MAX_SEGMENTS = 4096  # segments walked before the image data (real files: a few dozen)


def _check_jpeg(data: bytes) -> tuple[int, int] | None:
    n = len(data)
    i, size, orientation = 2, None, 1
    for _ in range(_JPEG_MAX_SEGMENTS):
        if i >= n:
            raise ImageStructureError("JPEG", "it ends before its image data", truncated=True)
        fill = _FILL.match(data, i)  # a marker's 0xFF, and any fill bytes before it
        if fill is None:
            raise ImageStructureError("JPEG", f"no segment marker at byte {i}")
        i = fill.end()
        if i >= n:
            raise ImageStructureError("JPEG", "it ends before its image data", truncated=True)
        marker = data[i]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            i += 1
            continue
        if marker in (0xD8, 0xD9):
            raise ImageStructureError("JPEG", f"marker 0x{marker:02X} before its image data")
        if i + 3 > n:
            raise ImageStructureError("JPEG", "it ends before its image data", truncated=True)
        length = _u16be(data, i + 1)
        if length < 2:
            raise ImageStructureError("JPEG", f"segment 0x{marker:02X} has length {length}")
        if i + 1 + length > n:
            raise ImageStructureError(
                "JPEG", f"segment 0x{marker:02X} is cut short", truncated=True
            )
        start = i + 3  # the segment's payload
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            break
        if marker in _JPEG_SOF:
            if marker not in _JPEG_CHECKED_SOF or length < 8 or data[start] != 8:
                return None  # not a frame this check vouches for: decode it
            h, w = _u16be(data, start + 1), _u16be(data, start + 3)
            if not w or not h:
                return None  # height set later by a DNL marker: decode it
            size = (w, h)
        elif marker == 0xE1 and data[start : start + 6] == _EXIF:
            orientation = _exif_orientation(data[start + 6 : i + 1 + length])
        i += 1 + length
    else:  # thousands of segments before the image data: no camera writes that; decode it
        return None
    if size is None:
        raise ImageStructureError("JPEG", "its image data comes before any frame header")
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ImageStructureError("JPEG", "no end marker after its image data", truncated=True)
    w, h = size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _exif_orientation(tiff: bytes) -> int:
    """The EXIF orientation tag (1-8) of a TIFF block, 1 when absent or unreadable."""
    try:
        order: Literal["little", "big"]
        if tiff[:4] == b"II*\x00":
            order = "little"
        elif tiff[:4] == b"MM\x00*":
            order = "big"
        else:
            return 1
        ifd = _num(tiff, 4, 4, order)
        entries = min(_num(tiff, ifd, 2, order), (len(tiff) - ifd - 2) // 12)  # what is there
        for k in range(entries):
            entry = ifd + 2 + 12 * k
            if _num(tiff, entry, 2, order) == 0x0112:
                value = _num(tiff, entry + 8, 2, order)
                return value if 1 <= value <= 8 else 1
    except IndexError:
        return 1
    return 1
