#!/usr/bin/env python3
"""Standalone client for one Outpost model package, generated from its manifest.

Needs numpy and the model's runtime only: ``onnxruntime`` for ONNX, ``openvino`` for
OpenVINO IR. OpenCV (``cv2``), when installed, decodes any image and resizes exactly as
``outpost predict`` does; without it the client reads PNG and binary PPM files itself and
resizes with a numpy port of the same bilinear filter (boxes may then differ by a fraction of
a pixel). Pillow, when installed, does the Pillow-bilinear resize of a timm classifier.

Usage (from the package folder, or with --model)::

    python wrappers/python/outpost_predict.py image.png [--model onnx/model.onnx] [--conf 0.25]

Prints JSON: ``{"detections": [{"class_id", "class_name", "confidence", "xyxy"}]}`` (boxes in
original-image pixels, after NMS), or ``{"classification": [...top-k...]}`` for a classifier.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

# Generated from the package manifest: do not edit by hand, re-export the model instead.
CONFIG = json.loads(r"""__OUTPOST_CONFIG__""")

MAX_WH = 7680  # class offset for batched NMS
MAX_NMS = 30000  # candidates kept before NMS
PIL_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling


def _cv2():
    if os.environ.get("OUTPOST_WRAPPER_NO_OPENCV"):
        return None
    try:
        import cv2
    except ImportError:
        return None
    return cv2


# --- images ---------------------------------------------------------------------------------


def _png_unfilter(raw: bytes, width: int, height: int, bpp: int) -> np.ndarray:
    stride = width * bpp
    data = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        kind, line = data[y, 0], data[y, 1:].astype(np.int32)
        row = np.zeros(stride, np.int32)
        if kind == 0:
            row = line
        elif kind == 2:
            row = (line + prev) & 255
        else:
            for x in range(stride):
                a = row[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[x] = (line[x] + pred) & 255
        out[y] = row
        prev = row
    return out


def _read_png(data: bytes) -> np.ndarray:
    pos, chunks, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    if header is None:
        raise ValueError("not a PNG file")
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError("only 8-bit, non-interlaced grey/RGB(A) PNG files are read without OpenCV")
    pixels = _png_unfilter(zlib.decompress(b"".join(chunks)), width, height, channels)
    img = pixels.reshape(height, width, channels)
    rgb = np.repeat(img[:, :, :1], 3, axis=2) if channels <= 2 else img[:, :, :3]
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _read_ppm(data: bytes) -> np.ndarray:
    fields, pos = [], 2
    while len(fields) < 3:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(int(data[pos:end]))
        pos = end
    width, height, _ = fields
    rgb = np.frombuffer(data[pos + 1 : pos + 1 + width * height * 3], np.uint8)
    return np.ascontiguousarray(rgb.reshape(height, width, 3)[:, :, ::-1])


def read_image(path: Path) -> np.ndarray:
    """The image as BGR uint8 (OpenCV's decoder when installed)."""
    cv2 = _cv2()
    if cv2 is not None:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path} could not be decoded")
        return img
    data = Path(path).read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _read_png(data)
    if data[:2] == b"P6":
        return _read_ppm(data)
    raise ValueError(f"{path}: without OpenCV only PNG and binary PPM images are read")


def _linear_axis(img: np.ndarray, out: int, axis: int) -> np.ndarray:
    size = img.shape[axis]
    pos = (np.arange(out, dtype=np.float64) + 0.5) * (size / out) - 0.5
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo).astype(np.float32)
    frac[lo < 0] = 0.0
    lo = np.clip(lo, 0, size - 1)
    hi = np.minimum(lo + 1, size - 1)
    frac[lo >= size - 1] = 0.0
    a = np.take(img, lo, axis=axis).astype(np.float32)
    b = np.take(img, hi, axis=axis).astype(np.float32)
    shape = [1] * img.ndim
    shape[axis] = out
    f = frac.reshape(shape)
    return a * (1 - f) + b * f


def resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (half-pixel centres), as OpenCV's INTER_LINEAR."""
    cv2 = _cv2()
    if cv2 is not None:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    out = _linear_axis(_linear_axis(img, width, 1), height, 0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pil_axis(img: np.ndarray, out: int, axis: int) -> np.ndarray:
    size = img.shape[axis]
    scale = size / out
    fscale = max(scale, 1.0)
    support = fscale
    ksize = int(np.ceil(support)) * 2 + 1
    starts = np.zeros(out, np.int64)
    weights = np.zeros((out, ksize), np.int64)
    for i in range(out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), size) - lo
        w = np.clip(1.0 - np.abs((np.arange(n) + lo - center + 0.5) / fscale), 0.0, None)
        w = w / w.sum() if w.sum() else w
        starts[i] = lo
        weights[i, :n] = np.where(
            w < 0, np.trunc(-0.5 + w * (1 << PIL_BITS)), np.trunc(0.5 + w * (1 << PIL_BITS))
        )
    src = np.moveaxis(img, axis, 0).astype(np.int64)
    acc = np.full((out, *src.shape[1:]), 1 << (PIL_BITS - 1), np.int64)
    for k in range(ksize):
        acc += src[np.minimum(starts + k, size - 1)] * weights[:, k].reshape(
            out, *(1,) * (src.ndim - 1)
        )
    return np.moveaxis(np.clip(acc >> PIL_BITS, 0, 255).astype(np.uint8), 0, axis)


def resize_pil(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow's bilinear resize (Pillow itself when installed)."""
    try:
        from PIL import Image
    except ImportError:
        Image = None  # noqa: N806
    if Image is not None:
        rgb = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
        return np.ascontiguousarray(
            np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR))[:, :, ::-1]
        )
    if height / img.shape[0] < width / img.shape[1]:
        return _pil_axis(_pil_axis(img, height, 0), width, 1)
    return _pil_axis(_pil_axis(img, width, 1), height, 0)


def letterbox(img: np.ndarray, hw: tuple[int, int], pad: int, interpolation: str | None):
    """Resize keeping the aspect ratio, pad to ``hw`` centred; returns the image, gain, pad."""
    h0, w0 = img.shape[:2]
    nh, nw = hw
    r = min(nh / h0, nw / w0)
    uw, uh = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = (nw - uw) / 2, (nh - uh) / 2
    if (w0, h0) != (uw, uh):
        img = (
            resize_pil(img, uw, uh)
            if interpolation == "pil_bilinear"
            else resize_linear(img, uw, uh)
        )
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = np.full((uh + top + bottom, uw + left + right, 3), pad, np.uint8)
    out[top : top + uh, left : left + uw] = img
    return out, (uw / w0, uh / h0), (left, top)


def center_crop(img: np.ndarray, hw: tuple[int, int]):
    """Shortest side to the input size, then the centred crop."""
    h0, w0 = img.shape[:2]
    th, tw = hw
    size = min(th, tw)
    nh, nw = (
        (size, max(int(size * w0 / h0), 1)) if h0 <= w0 else (max(int(size * h0 / w0), 1), size)
    )
    if (nh, nw) != (h0, w0):
        cv2 = _cv2()
        shrink = nh < h0 or nw < w0
        if cv2 is not None:
            img = cv2.resize(
                img, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            )
        else:
            img = resize_linear(img, nw, nh)
    top, left = max(int(round((nh - th) / 2.0)), 0), max(int(round((nw - tw) / 2.0)), 0)
    crop = np.zeros((th, tw, 3), np.uint8)
    part = img[top : top + th, left : left + tw]
    crop[: part.shape[0], : part.shape[1]] = part
    return crop, (nw / w0, nh / h0), (-left, -top)


def to_tensor(img: np.ndarray) -> np.ndarray:
    pre = CONFIG["preprocessing"]
    chw = img[:, :, ::-1].transpose(2, 0, 1) if pre["color"] == "RGB" else img.transpose(2, 0, 1)
    out = np.ascontiguousarray(chw[None], dtype=np.float32)
    divisor = 1.0 / pre["scale"]
    if abs(divisor - round(divisor)) < 1e-6:
        out /= np.float32(round(divisor))
    else:
        out *= np.float32(pre["scale"])
    if pre.get("mean") is not None:
        out -= np.asarray(pre["mean"], np.float32).reshape(1, -1, 1, 1)
    if pre.get("std") is not None:
        out /= np.asarray(pre["std"], np.float32).reshape(1, -1, 1, 1)
    return out


# --- model ----------------------------------------------------------------------------------


class Model:
    """The package's model on the first runtime installed here (or the one ``path`` names)."""

    def __init__(self, root: Path, path: Path | None = None) -> None:
        candidates = [path] if path else [root / f["file"] for f in CONFIG["formats"]]
        errors = []
        for candidate in candidates:
            try:
                self._load(Path(candidate))
                return
            except ImportError as exc:
                errors.append(f"{Path(candidate).name}: {exc}")
        raise SystemExit("no runtime here runs this package (" + "; ".join(errors) + ")")

    def _load(self, path: Path) -> None:
        if path.suffix == ".onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self.run = lambda x: session.run(None, {name: x})[0]
        elif path.suffix == ".xml":
            import openvino as ov

            hint = "f32" if CONFIG["precision"] == "fp32" else None
            config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
            compiled = ov.Core().compile_model(str(path), "CPU", config)
            self.run = lambda x: np.asarray(compiled(x)[0])
        else:
            raise ImportError(f"no client for {path.suffix} models in this wrapper")
        self.path = path


# --- post-processing --------------------------------------------------------------------------


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    thr = np.float32(iou)
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        order = rest[~(inter / (areas[i] + areas[rest] - inter) > thr)]
    return np.asarray(keep, np.int64)


def decode(output: np.ndarray, conf: float, iou: float):
    """Raw YOLO output → (xyxy, scores, class ids) in model-input pixels."""
    post = CONFIG["postprocessing"]
    nc = len(CONFIG["class_names"])
    pred = np.asarray(output)
    pred = pred[0] if pred.ndim == 3 else pred
    if post["output_layout"] == "xyxy_score_class":
        rows = pred[pred[:, 4] > conf][: post["max_det"]]
        return (
            rows[:, :4].astype(np.float32),
            rows[:, 4].astype(np.float32),
            rows[:, 5].astype(np.int64),
        )
    x = pred.T.astype(np.float32, copy=False)
    scores = x[:, 4 : 4 + nc].max(axis=1)
    keep = scores > conf
    x, scores = x[keep], scores[keep]
    cls = x[:, 4 : 4 + nc].argmax(axis=1)
    xy, wh = x[:, :2], x[:, 2:4] / 2
    boxes = np.concatenate([xy - wh, xy + wh], axis=1)
    if len(x) > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        boxes, scores, cls = boxes[top], scores[top], cls[top]
    offset = (
        np.float32(0)
        if post["agnostic_nms"]
        else cls.astype(np.float32)[:, None] * np.float32(MAX_WH)
    )
    kept = nms(boxes + offset, scores, iou)[: post["max_det"]]
    if post["box_units"] == "normalized":
        h, w = CONFIG["input_hw"]
        boxes = boxes * np.array([w, h, w, h], np.float32)
    return boxes[kept], scores[kept], cls[kept]


def predict(
    model: Model, img: np.ndarray, conf: float | None = None, iou: float | None = None
) -> dict:
    pre, post = CONFIG["preprocessing"], CONFIG["postprocessing"]
    hw = tuple(CONFIG["input_hw"])
    if pre["resize"] == "center_crop":
        placed, gain, pad = center_crop(img, hw)
    else:
        placed, gain, pad = letterbox(img, hw, pre["pad_value"], pre.get("interpolation"))
    output = model.run(to_tensor(placed))
    names = CONFIG["class_names"]
    if post["kind"] == "classify":
        probs = np.asarray(output, np.float32).reshape(-1)
        if np.any(probs < 0) or abs(float(probs.sum()) - 1.0) > 1e-3:
            e = np.exp(probs - probs.max())
            probs = e / e.sum()
        order = np.argsort(-probs, kind="stable")[: post["top_k"]]
        return {
            "classification": [
                {"class_id": int(i), "class_name": names[i], "confidence": float(probs[i])}
                for i in order
            ]
        }
    boxes, scores, cls = decode(
        output,
        post["conf_threshold"] if conf is None else conf,
        post["iou_threshold"] if iou is None else iou,
    )
    boxes = boxes.copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pad[0]) / gain[0]
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - pad[1]) / gain[1]
    h0, w0 = img.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w0)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h0)
    return {
        "detections": [
            {
                "class_id": int(c),
                "class_name": names[int(c)] if int(c) < len(names) else str(int(c)),
                "confidence": float(s),
                "xyxy": [float(v) for v in b],
            }
            for b, s, c in zip(boxes, scores, cls, strict=True)
        ]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Run the Outpost package {CONFIG['name']}.")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument(
        "--model", type=Path, default=None, help="model file (default: the package's)"
    )
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parents[2], help="package folder"
    )
    parser.add_argument("--conf", type=float, default=None)
    parser.add_argument("--iou", type=float, default=None)
    args = parser.parse_args(argv)
    model = Model(args.root, args.model)
    results = []
    for image in args.images:
        results.append(
            {"image": str(image), **predict(model, read_image(image), args.conf, args.iou)}
        )
    json.dump({"model": str(model.path), "results": results}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
