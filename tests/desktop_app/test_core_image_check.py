"""The import's image check without decoding: a PNG's chunks and CRCs, a JPEG's segments.

Each whole file must give the size OpenCV decodes (EXIF orientation included); each cut or
damaged one must be refused, and the import must name the file and the problem.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from desktop_app.core.dataset_records import SourceImage, inspect_images
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.image_check import ImageStructureError, check_structure


def _encoded(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return bytes(buf.tobytes())


def _decoded_size(data: bytes) -> tuple[int, int]:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return int(img.shape[1]), int(img.shape[0])


def _with_orientation(jpeg: bytes, orientation: int, order: str) -> bytes:
    """``jpeg`` with an APP1 EXIF segment whose IFD0 holds only the orientation tag."""
    fmt = "<" if order == "II" else ">"
    head = b"II*\x00" if order == "II" else b"MM\x00*"
    tiff = (
        head
        + struct.pack(f"{fmt}I", 8)
        + struct.pack(f"{fmt}H", 1)
        + struct.pack(f"{fmt}HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack(f"{fmt}I", 0)
    )
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _chunks(png: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of each chunk."""
    out, i = [], 8
    while i < len(png):
        length = struct.unpack(">I", png[i : i + 4])[0]
        out.append((i, png[i + 4 : i + 8]))
        i += 12 + length
    return out


RNG = np.random.default_rng(7)
COLOUR = RNG.integers(0, 255, (30, 50, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "data",
    [
        _encoded(".png", COLOUR),
        _encoded(".png", COLOUR[:, :, 0]),  # grey
        _encoded(".png", COLOUR.astype(np.uint16) * 200),  # 16 bits
        _encoded(".png", np.dstack([COLOUR, COLOUR[:, :, :1]])),  # with alpha
        _encoded(".png", COLOUR, cv2.IMWRITE_PNG_COMPRESSION, 0),
        _encoded(".jpg", COLOUR),
        _encoded(".jpg", COLOUR[:, :, 0]),
        _encoded(".jpg", COLOUR, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        _encoded(".jpg", COLOUR, cv2.IMWRITE_JPEG_OPTIMIZE, 1),
    ],
    ids=["png", "grey", "png16", "rgba", "stored", "jpg", "jpg-grey", "progressive", "optimised"],
)
def test_whole_files_give_the_size_opencv_decodes(data: bytes) -> None:
    assert check_structure(data) == _decoded_size(data) == (50, 30)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("order", ["II", "MM"])
def test_exif_orientation_turns_the_size_as_opencv_does(orientation: int, order: str) -> None:
    data = _with_orientation(_encoded(".jpg", COLOUR), orientation, order)
    size = check_structure(data)
    assert size == _decoded_size(data)
    assert size == ((30, 50) if orientation >= 5 else (50, 30))


def test_other_files_are_left_to_the_decoder() -> None:
    for ext in (".bmp", ".webp", ".tif"):
        assert check_structure(_encoded(ext, COLOUR)) is None
    assert check_structure(b"plain text") is None
    jpeg = bytearray(_encoded(".jpg", COLOUR))
    sof = bytes(jpeg).index(b"\xff\xc0")
    jpeg[sof + 1] = 0xC3  # a lossless frame: decoded, not vouched for
    assert check_structure(bytes(jpeg)) is None


def test_every_cut_of_a_png_is_refused_as_truncated() -> None:
    data = _encoded(".png", COLOUR)
    for end in range(8, len(data)):
        with pytest.raises(ImageStructureError) as info:
            check_structure(data[:end])
        assert info.value.kind == "PNG"
        assert info.value.truncated or "IHDR" in info.value.reason


def test_every_damaged_byte_of_a_png_chunk_is_caught() -> None:
    data = _encoded(".png", COLOUR)
    for offset, kind in _chunks(data):
        length = struct.unpack(">I", data[offset : offset + 4])[0]
        for at in {offset + 4, offset + 8, offset + 8 + length // 2, offset + 8 + length}:
            if at >= len(data) or (kind == b"IEND" and at >= offset + 8 + length):
                continue
            bad = bytearray(data)
            bad[at] ^= 0x10
            with pytest.raises(ImageStructureError):
                check_structure(bytes(bad))


def test_png_header_and_palette_problems_are_named() -> None:
    data = bytearray(_encoded(".png", COLOUR))

    def refit(d: bytearray) -> bytes:
        d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)
        return bytes(d)

    bad_depth = bytearray(data)
    bad_depth[24] = 3  # 3 bits per sample is no PNG depth
    with pytest.raises(ImageStructureError, match="IHDR header holds invalid values"):
        check_structure(refit(bad_depth))
    palette = bytearray(data)
    palette[24], palette[25] = 8, 3  # palette colour, but the file has no PLTE chunk
    with pytest.raises(ImageStructureError, match="no PLTE chunk"):
        check_structure(refit(palette))
    no_data = data[:33] + data[-12:]  # IHDR then IEND
    with pytest.raises(ImageStructureError, match="no IDAT"):
        check_structure(bytes(no_data))


def test_cut_and_damaged_jpegs_are_refused() -> None:
    data = _encoded(".jpg", COLOUR)
    sos = data.index(b"\xff\xda")
    for end in (3, 20, sos - 3, sos + 30, len(data) - 2):
        with pytest.raises(ImageStructureError) as info:
            check_structure(data[:end])
        assert info.value.truncated and info.value.kind == "JPEG"
    after_app0 = 4 + struct.unpack(">H", data[4:6])[0]
    garbage = data[:after_app0] + b"\x00" * 20 + data[after_app0:]
    with pytest.raises(ImageStructureError, match="no segment marker"):
        check_structure(garbage)
    early_end = data[:2] + b"\xff\xd9" + data[2:]
    with pytest.raises(ImageStructureError, match="0xD9 before its image data"):
        check_structure(early_end)


def test_an_import_names_the_damaged_file_and_reads_the_rest(tmp_path: Path) -> None:
    from desktop_app.core.dataset_records import Problems

    root = tmp_path.resolve()
    good = root / "good.png"
    good.write_bytes(_encoded(".png", COLOUR))
    data = bytearray(_encoded(".png", COLOUR))
    idat = next(off for off, kind in _chunks(bytes(data)) if kind == b"IDAT")
    data[idat + 20] ^= 0x01
    bad = root / "bad.png"
    bad.write_bytes(bytes(data))
    sources = [SourceImage("good.png", good, None, ()), SourceImage("bad.png", bad, None, ())]
    with pytest.raises(
        DatasetFormatError,
        match=r"bad.png is not a readable image \(a damaged PNG: its IDAT chunk fails its CRC check\); remove or replace it",
    ):
        inspect_images(root, "yolo", ["a"], sources, False)
    scanned = inspect_images(root, "yolo", ["a"], sources, False, problems=Problems(lenient=True))
    assert [img.file_name for img in scanned.images] == ["good.png"]
    assert (scanned.images[0].width, scanned.images[0].height) == (50, 30)
    cut = root / "cut.png"
    cut.write_bytes(_encoded(".png", COLOUR)[:-20])
    with pytest.raises(DatasetFormatError, match=r"cut.png is a truncated PNG"):
        inspect_images(root, "yolo", ["a"], [SourceImage("cut.png", cut, None, ())], False)


def test_hostile_jpeg_headers_end_the_walk_or_are_skipped() -> None:
    """Thousands of empty segments or megabytes of fill bytes before the image data: the walk
    stops (the file goes to the decoder) or skips them in one step."""
    data = _encoded(".jpg", COLOUR)
    many = data[:2] + b"\xff\xfe\x00\x02" * 200_000 + data[2:]  # empty comment segments
    fill = data[:2] + b"\xff" * 5_000_000 + data[2:]
    assert check_structure(many) is None  # left to the decoder
    assert check_structure(fill) == (50, 30)
