"""Decoded frames (``.npy``): read without a copy or a pickle, refused with one line when they
are not uint8 pixels, and predicted exactly as the image they were decoded from."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtimes.errors import ImageDecodeError
from runtimes.predictor import Predictor
from runtimes.preprocess import decode_frame, decode_image, encode_frame, encode_frame_png
from tests.fakes import make_package


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def header_only(shape: tuple[int, ...], descr: str = "|u1", version: int = 1) -> bytes:
    """An ``.npy`` header for ``shape`` and nothing after it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin-1")
    length_size = 2 if version == 1 else 4
    pad = -(6 + 2 + length_size + len(text) + 1) % 64
    head = text + b" " * pad + b"\n"
    size = struct.pack("<H" if version == 1 else "<I", len(head))
    return b"\x93NUMPY" + bytes([version, 0]) + size + head


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)


def test_a_frame_round_trips_in_every_layout(frame: np.ndarray) -> None:
    got = decode_frame(npy(frame))
    assert np.array_equal(got, frame) and got.shape == (45, 70, 3)
    assert not got.flags.owndata and not got.flags.writeable  # the body itself, not a copy
    assert np.array_equal(decode_frame(npy(np.asfortranarray(frame))), frame)
    assert np.array_equal(decode_frame(npy(frame[:, ::-1])), frame[:, ::-1])  # a strided view
    grey = frame[:, :, 1].copy()
    as_bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    assert np.array_equal(decode_frame(npy(grey)), as_bgr)
    assert np.array_equal(decode_frame(npy(grey[:, :, None])), as_bgr)
    with_alpha = np.dstack([frame, np.full(frame.shape[:2], 9, np.uint8)])
    assert np.array_equal(decode_frame(npy(with_alpha)), frame)  # alpha dropped
    for layout in (frame, np.asfortranarray(frame), frame[:, ::-1], frame[:, :, :1]):
        assert encode_frame(layout) == npy(layout)  # np.save's bytes
    assert np.array_equal(
        decode_frame(header_only((1, 2, 3), version=2) + bytes(6)), np.zeros((1, 2, 3))
    )


@pytest.mark.parametrize("channels", ["bgr", "rgb"])
@pytest.mark.parametrize("shape", [(45, 70, 3), (45, 70), (45, 70, 4)])
def test_the_png_of_a_frame_decodes_to_its_bgr_pixels(
    frame: np.ndarray, channels: str, shape: tuple[int, ...]
) -> None:
    """What the desktop sends an agent that takes no frames: the same pixels, lossless."""
    pixels = frame if len(shape) == 3 and shape[2] == 3 else frame[:, :, 0].copy()
    if len(shape) == 3 and shape[2] == 4:
        pixels = np.dstack([frame, frame[:, :, :1]])
    sent = pixels
    if channels == "rgb" and pixels.ndim == 3:
        sent = np.ascontiguousarray(np.concatenate([pixels[:, :, 2::-1], pixels[:, :, 3:]], 2))
    want = decode_frame(npy(pixels))
    assert np.array_equal(decode_image(encode_frame_png(sent, channels)), want)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "the frame is not NumPy .npy bytes"),
        (b"", "the frame is not NumPy .npy bytes"),
        (npy(np.zeros((4, 4, 3), np.float32)), "pixels are float32, not uint8"),
        (npy(np.zeros((4, 4, 3), np.uint16)), "pixels are uint16, not uint8"),
        (npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), "pixels are object"),
        (npy(np.zeros((4, 4, 2), np.uint8)), "shape is (4, 4, 2)"),
        (npy(np.zeros((1, 4, 4, 3), np.uint8)), "shape is (1, 4, 4, 3)"),
        (npy(np.zeros((0, 4, 3), np.uint8)), "shape is (0, 4, 3)"),
        (npy(np.zeros(12, np.uint8)), "shape is (12,)"),
        (npy(np.zeros((4, 4, 3), np.uint8))[:-1], "47 bytes of pixels where its header says"),
        (npy(np.zeros((4, 4, 3), np.uint8)) + b"\0", "49 bytes of pixels where its header says"),
        (header_only((30000, 30000, 3)), "over the 100-megapixel limit"),
        (b"\x93NUMPY\x01\x00\x06\x00{'a':\n", "header does not parse"),
        (b"\x93NUMPY\x01\x00\x10\x00__import__('os')\n", "header does not parse"),
        (b"\x93NUMPY\x09\x00" + bytes(8), "header does not parse"),
    ],
)
def test_a_bad_frame_is_refused_with_one_line(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError) as refused:
        decode_frame(data)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_sender_refuses_what_the_agent_would(frame: np.ndarray) -> None:
    for bad in (frame.astype(np.float32), frame[:, :, :2]):
        with pytest.raises(ImageDecodeError):
            encode_frame(bad)
        with pytest.raises(ImageDecodeError):
            encode_frame_png(bad)
    with pytest.raises(ValueError, match="channels must be one of"):
        encode_frame_png(frame, "bgra")


@pytest.mark.parametrize("hw", [(64, 64), (45, 70), (100, 30)])
def test_a_frame_is_predicted_as_its_image(
    tmp_path: Path, frame: np.ndarray, hw: tuple[int, int]
) -> None:
    """BGR as it is, RGB with the channels swapped in the tensor: the model's input is the same
    float32s as for the PNG of the frame, bit for bit, and so are the detections."""
    predictor = Predictor.from_path(make_package(tmp_path / "shapes.outpost.zip"))
    try:
        bgr = cv2.resize(frame, hw[::-1], interpolation=cv2.INTER_NEAREST)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        png = encode_frame_png(bgr)
        want, info = predictor.prepare(decode_image(png))
        for pixels, order in ((bgr, "bgr"), (rgb, "rgb")):
            got, got_info = predictor.prepare(decode_frame(npy(pixels)), rgb_input=order == "rgb")
            assert np.array_equal(got, want) and got_info == info
            dets, timing = predictor.predict_frame_bytes(npy(pixels), channels=order)
            assert dets.to_list() == predictor.predict_bytes(png)[0].to_list()
            assert timing.decode_ms >= 0
        with pytest.raises(ValueError, match="channels must be one of"):
            predictor.predict_frame_bytes(npy(bgr), channels="BGR ")
    finally:
        predictor.close()
