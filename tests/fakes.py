"""Test doubles shared across test folders: a tiny detector ONNX model and its package.

The fake detector ignores its input (it adds ``0 * ReduceMean(images)`` so ONNX Runtime
still runs a real graph over it) and always emits the raw YOLO head ``[1, 4 + nc, A]``
given by ``rows``. With the defaults and a square ``imgsz`` input image, every prediction
yields exactly :data:`EXPECTED` after NMS.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtimes.package import utc_now, write_package

CLASS_NAMES = ("circle", "square")

# (cx, cy, w, h, class_id, score) in model-input pixels of a 64 x 64 input.
DEFAULT_ROWS: tuple[tuple[float, float, float, float, int, float], ...] = (
    (16.0, 16.0, 16.0, 16.0, 0, 0.9),  # kept: circle
    (44.0, 44.0, 20.0, 20.0, 1, 0.8),  # kept: square
    (17.0, 16.0, 16.0, 16.0, 0, 0.7),  # suppressed by NMS (IoU ~0.88 with the first)
    (40.0, 10.0, 8.0, 8.0, 1, 0.1),  # below the default confidence threshold
)

# What a prediction on a 64 x 64 image returns with DEFAULT_ROWS (xyxy in image pixels).
EXPECTED = (
    {"class_id": 0, "class_name": "circle", "confidence": 0.9, "xyxy": [8.0, 8.0, 24.0, 24.0]},
    {"class_id": 1, "class_name": "square", "confidence": 0.8, "xyxy": [34.0, 34.0, 54.0, 54.0]},
)


def make_detect_onnx(
    path: Path,
    imgsz: int = 64,
    class_names: Sequence[str] = CLASS_NAMES,
    rows: Sequence[tuple[float, float, float, float, int, float]] = DEFAULT_ROWS,
) -> Path:
    """Write a valid ONNX detector: input ``images`` [1,3,imgsz,imgsz], output ``output0``."""
    nc = len(class_names)
    head = np.zeros((1, 4 + nc, len(rows)), np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(rows):
        head[0, :4, a] = (cx, cy, w, h)
        head[0, 4 + int(cls), a] = score
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["head", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_detect",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(head.shape))],
        initializer=[
            numpy_helper.from_array(head, "head"),
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="outpost-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def manifest_fields(
    name: str = "shapes",
    version: str = "1",
    imgsz: int = 64,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, Any]:
    """A complete manifest (without ``files``) for the fake detector."""
    return {
        "name": name,
        "version": version,
        "created_at": utc_now(),
        "model": {
            "framework": "test",
            "task": "detect",
            "architecture": "fake",
            "class_names": list(class_names),
            "input": {
                "name": "images",
                "shape": [1, 3, imgsz, imgsz],
                "dtype": "float32",
                "layout": "NCHW",
            },
        },
        "format": {"key": "onnx", "file": "model.onnx", "runtime": "onnxruntime"},
    }


def make_package(
    out_zip: Path,
    name: str = "shapes",
    version: str = "1",
    imgsz: int = 64,
    class_names: Sequence[str] = CLASS_NAMES,
    rows: Sequence[tuple[float, float, float, float, int, float]] = DEFAULT_ROWS,
) -> Path:
    """Write a complete, valid ``.outpost.zip`` holding the fake detector."""
    with tempfile.TemporaryDirectory(prefix="outpost-fake-") as tmp:
        onnx_path = make_detect_onnx(Path(tmp) / "model.onnx", imgsz, class_names, rows)
        write_package(
            Path(out_zip),
            manifest_fields(name, version, imgsz, class_names),
            {"model.onnx": onnx_path},
        )
    return Path(out_zip)


def rewrite_package(
    src: Path,
    dst: Path,
    *,
    manifest: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    files: Callable[[str, bytes], bytes | None] | None = None,
) -> Path:
    """Copy a package zip, editing its manifest and files on the way (for broken packages).

    ``manifest(data)`` returns the new manifest dict, or None to drop ``manifest.json``.
    ``files(name, data)`` returns new bytes, or None to drop the entry. Digests are NOT
    recomputed: that is the point.
    """
    with zipfile.ZipFile(src) as zin:
        entries = {info.filename: zin.read(info) for info in zin.infolist()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zout:
        for arcname, data in entries.items():
            new: bytes | None = data
            if arcname == "manifest.json":
                if manifest is not None:
                    edited = manifest(json.loads(data))
                    new = None if edited is None else json.dumps(edited).encode()
            elif files is not None:
                new = files(arcname, data)
            if new is not None:
                zout.writestr(arcname, new)
    Path(dst).write_bytes(buf.getvalue())
    return Path(dst)


def flip_last_byte(name: str, data: bytes) -> bytes:
    """A ``files`` editor for :func:`rewrite_package`: same size, different sha256."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def make_image_bytes(width: int = 64, height: int = 64, ext: str = ".png") -> bytes:
    """An encoded image (PNG by default) with a little content."""
    img = np.full((height, width, 3), 200, np.uint8)
    cv2.circle(img, (width // 4, height // 4), max(2, width // 8), (0, 0, 255), -1)
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise RuntimeError(f"cv2 could not encode {ext}")
    return buf.tobytes()


def header_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A 16x16 JPEG whose frame header claims ``width`` x ``height`` pixels (a few hundred
    bytes: a decoder would allocate width * height * 3 bytes before it found the data short)."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)
