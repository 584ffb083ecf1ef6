"""A small, deterministic, labelled detection dataset of drawn shapes (for demos and tests).

The same seed gives byte-identical images and labels on the same OpenCV build: every random
choice comes from one ``numpy.random.Generator(PCG64(seed))`` consumed in a fixed order, and
JPEGs are encoded with a fixed quality.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from desktop_app.core.errors import DestinationNotEmptyError, InvalidArgumentError
from runtimes.fileio import atomic_write_bytes, atomic_write_text

CLASS_NAMES = ("circle", "square", "triangle")
MARKER = ".outpost-sample.json"
JPEG_QUALITY = 90
_MAX_OBJECTS = 4
_MIN_CONTRAST = 90.0

PixelBox = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`write_sample_dataset` wrote."""

    out_dir: Path
    data_yaml: Path
    images: int
    boxes: int
    class_names: tuple[str, ...] = CLASS_NAMES
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {
            "out_dir": str(self.out_dir),
            "data_yaml": str(self.data_yaml),
            "images": self.images,
            "boxes": self.boxes,
            "classes": list(self.class_names),
            "boxes_per_class": dict(self.boxes_per_class),
            "seed": self.seed,
        }


def write_sample_dataset(
    out_dir: Path | str, seed: int = 0, count: int = 64, size: int = 160
) -> SampleSummary:
    """Write a YOLO-layout detection dataset of circles, squares and triangles.

    Layout: ``images/sample_0000.jpg``, ``labels/sample_0000.txt`` (``cls cx cy w h``,
    normalised), ``data.yaml``, ``classes.txt``. Each image has 1–4 shapes of varied colour
    and size on a gradient, texture, stripe or solid background.

    Args:
        out_dir: A new or empty folder, or one that holds an earlier sample (replaced).
        seed: Seed of every random choice.
        count: Number of images.
        size: Width and height of each image in pixels.

    Returns:
        A summary with the counts and the path of ``data.yaml``.

    Raises:
        DestinationNotEmptyError: ``out_dir`` holds something other than a sample.
        InvalidArgumentError: ``count`` or ``size`` is out of range.
    """
    if not 1 <= count <= 100_000:
        raise InvalidArgumentError(f"count must be between 1 and 100000, got {count}")
    if not 48 <= size <= 4096:
        raise InvalidArgumentError(f"size must be between 48 and 4096 pixels, got {size}")
    out = Path(out_dir).expanduser().resolve()
    _prepare(out)
    rng = np.random.Generator(np.random.PCG64(seed))
    per_class = dict.fromkeys(CLASS_NAMES, 0)
    total = 0
    for i in range(count):
        img, labels = _draw_image(rng, size, first_class=i % len(CLASS_NAMES))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG; reinstall opencv-python-headless")
        atomic_write_bytes(out / "images" / f"sample_{i:04d}.jpg", buf.tobytes())
        atomic_write_text(
            out / "labels" / f"sample_{i:04d}.txt", "".join(f"{line}\n" for line in labels)
        )
        for line in labels:
            per_class[CLASS_NAMES[int(line.split()[0])]] += 1
        total += len(labels)
    data_yaml = _write_metadata(out, seed, count, size)
    return SampleSummary(out, data_yaml, count, total, CLASS_NAMES, per_class, seed)


def _prepare(out: Path) -> None:
    """Refuse a foreign non-empty folder; clear the images and labels of an earlier sample."""
    if out.exists() and not out.is_dir():
        raise DestinationNotEmptyError(
            f"{out} is a file; choose a new or empty folder for the sample"
        )
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DestinationNotEmptyError(
                f"{out} is not empty and is not an Outpost sample; choose a new or empty folder"
            )
        for sub, pattern in (("images", "sample_*.jpg"), ("labels", "sample_*.txt")):
            for old in (out / sub).glob(pattern):
                old.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)


def _write_metadata(out: Path, seed: int, count: int, size: int) -> Path:
    names = dict(enumerate(CLASS_NAMES))
    data = {"path": str(out), "train": "images", "val": "images", "nc": len(names), "names": names}
    data_yaml = out / "data.yaml"
    header = f"# Outpost sample dataset: {count} images of drawn shapes (seed {seed})\n"
    atomic_write_text(data_yaml, header + yaml.safe_dump(data, sort_keys=False))
    atomic_write_text(out / "classes.txt", "".join(f"{n}\n" for n in CLASS_NAMES))
    marker = {
        "generator": "outpost-sample",
        "format": 1,
        "seed": seed,
        "count": count,
        "size": size,
    }
    atomic_write_text(out / MARKER, json.dumps(marker, sort_keys=True) + "\n")
    return data_yaml


# ---- drawing ---------------------------------------------------------------------------


def _draw_image(
    rng: np.random.Generator, size: int, first_class: int
) -> tuple[np.ndarray, list[str]]:
    img = _background(rng, size)
    placed: list[PixelBox] = []
    labels: list[str] = []
    n_objects = int(rng.integers(1, _MAX_OBJECTS + 1))
    for j in range(n_objects):
        cls = first_class if j == 0 else int(rng.integers(0, len(CLASS_NAMES)))
        box = _place(rng, size, placed)
        if box is None:
            continue
        color = _contrasting_color(rng, img, box)
        drawn = _draw_shape(img, rng, cls, box, color)
        placed.append(drawn)
        labels.append(_label_line(cls, drawn, size))
    noise = rng.normal(0.0, float(rng.uniform(1.5, 5.0)), img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img, labels


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = int(rng.integers(0, 4))
    c1, c2 = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # linear gradient at a random angle
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        out = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == 1:  # smooth texture: coarse noise upsampled and blurred
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        out = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=size / 24)
    elif kind == 2:  # stripes, soft or hard, at a random angle and period
        a = rng.uniform(0, math.pi)
        period = rng.uniform(0.06, 0.25)
        wave = np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
        t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2
        out = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:  # solid colour
        out = np.broadcast_to(c1, (size, size, 3)).copy()
    clipped: np.ndarray = np.clip(out, 0, 255).astype(np.uint8)
    return clipped


def _place(rng: np.random.Generator, size: int, placed: list[PixelBox]) -> PixelBox | None:
    """A free square region for the next shape (little overlap with those placed), or None."""
    for _ in range(40):
        side = int(rng.uniform(0.16, 0.38) * size)
        x0 = int(rng.integers(1, size - side - 1))
        y0 = int(rng.integers(1, size - side - 1))
        box = (x0, y0, x0 + side, y0 + side)
        if all(_overlap(box, other) < 0.1 for other in placed):
            return box
    return None


def _overlap(a: PixelBox, b: PixelBox) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _contrasting_color(
    rng: np.random.Generator, img: np.ndarray, box: PixelBox
) -> tuple[int, int, int]:
    bg = img[box[1] : box[3], box[0] : box[2]].reshape(-1, 3).mean(axis=0)
    color = rng.integers(0, 256, 3)
    for _ in range(20):
        if float(np.linalg.norm(color - bg)) >= _MIN_CONTRAST:
            break
        color = rng.integers(0, 256, 3)
    else:
        color = np.where(bg > 127, 20, 235)
    return int(color[0]), int(color[1]), int(color[2])


def _draw_shape(
    img: np.ndarray, rng: np.random.Generator, cls: int, box: PixelBox, color: tuple[int, int, int]
) -> PixelBox:
    """Draw one filled shape inside ``box``; return its tight pixel box."""
    x0, y0, x1, y1 = box
    side = x1 - x0
    if CLASS_NAMES[cls] == "circle":
        r = side // 2
        cx, cy = x0 + r, y0 + r
        cv2.circle(img, (cx, cy), r, color, -1, cv2.LINE_AA)
        return cx - r, cy - r, cx + r + 1, cy + r + 1
    if CLASS_NAMES[cls] == "square":  # squares and rectangles
        w = side
        h = max(4, int(side * rng.uniform(0.55, 1.0)))
        if rng.random() < 0.5:
            w, h = h, w
        cv2.rectangle(img, (x0, y0), (x0 + w - 1, y0 + h - 1), color, -1)
        return x0, y0, x0 + w, y0 + h
    apex_x = x0 + int(rng.uniform(0.2, 0.8) * (side - 1))
    top, bottom = (y0, y0 + side - 1) if rng.random() < 0.5 else (y0 + side - 1, y0)
    pts = np.array([[apex_x, top], [x0, bottom], [x0 + side - 1, bottom]], np.int32)
    cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
    return (
        int(pts[:, 0].min()),
        int(pts[:, 1].min()),
        int(pts[:, 0].max()) + 1,
        int(pts[:, 1].max()) + 1,
    )


def _label_line(cls: int, box: PixelBox, size: int) -> str:
    x0, y0, x1, y1 = (min(max(v, 0), size) for v in box)
    cx, cy = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size
    w, h = (x1 - x0) / size, (y1 - y0) / size
    return f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
