"""Segmentation answers on large photos: a detection's mask at the photo's own size, as JSON.

Each case is N masks at the model input (640 px, cropped to boxes from 5 to 35 % of the
photo's side, as a segmentation model's output after NMS), letterboxed from a photo of the
given size. Timed side by side in one run:

- ours: ``runtimes.postprocess.scale_masks`` (each mask resized where its box reaches) and
  ``runtimes.detections.mask_to_rle`` (each mask's box read in column-major order), what the
  agent and ``outpost predict`` do per answer;
- the reference: Ultralytics' ``ops.scale_masks`` (``F.interpolate`` of every whole mask to
  the photo's size, as ``retina_masks``/plotting do; torch's default threads) and
  ``pycocotools.mask.encode`` of each, the usual way to ship such masks.

Also the same two steps as this project did them before (every mask resized whole with
OpenCV, every mask read whole), for scale. Prints p50 ms per case and ratios (reference /
ours), and checks both give the same pixels.

    .venv/bin/python benchmarks/mask_answer.py [--runs 5]
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtimes.detections import mask_to_rle  # noqa: E402
from runtimes.latency import benchmark  # noqa: E402
from runtimes.postprocess import crop_to_boxes, scale_masks  # noqa: E402
from runtimes.preprocess import LetterboxInfo, letterbox  # noqa: E402

INPUT = 640


def model_masks(n: int, info: LetterboxInfo, seed: int = 0) -> np.ndarray:
    """``n`` blob masks at the model input, each cropped to a box inside the photo's area."""
    rng = np.random.default_rng(seed)
    left, top = info.pad_xy
    width = round(info.orig_hw[1] * info.gain_xy[0])
    height = round(info.orig_hw[0] * info.gain_xy[1])
    blobs = rng.uniform(0, 1, (n, 10, 10)).astype(np.float32)
    planes = np.stack([cv2.resize(b, (INPUT, INPUT)) for b in blobs]) > 0.45
    sides = rng.uniform(0.05, 0.35, (n, 2)) * (width, height)
    x0 = left + rng.uniform(0, 1, n) * (width - sides[:, 0])
    y0 = top + rng.uniform(0, 1, n) * (height - sides[:, 1])
    boxes = np.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], axis=1).astype(np.float32)
    return crop_to_boxes(planes.astype(np.uint8), boxes)


def before(masks: np.ndarray, info: LetterboxInfo) -> list[dict[str, object]]:
    """This project's earlier way: each mask resized whole (OpenCV), each read whole."""
    h0, w0 = info.orig_hw
    left, top = info.pad_xy
    bottom = top + max(round(h0 * info.gain_xy[1]), 1)
    right = left + max(round(w0 * info.gain_xy[0]), 1)
    content = masks[:, top:bottom, left:right].astype(np.float32)
    full = np.stack(
        [cv2.resize(m, (w0, h0), interpolation=cv2.INTER_LINEAR) > 0.5 for m in content]
    )
    out = []
    for mask in full:
        flat = mask.ravel(order="F")
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        counts = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
        out.append({"size": [h0, w0], "counts": [0, *counts] if flat[0] else counts})
    return out


def ours(masks: np.ndarray, info: LetterboxInfo) -> list[dict[str, object]]:
    return [mask_to_rle(m) for m in scale_masks(masks, info)]


def reference_masks(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Ultralytics' masks at the photo's size, as bool (N, H, W)."""
    import torch
    from ultralytics.utils import ops

    full = ops.scale_masks(torch.from_numpy(masks)[None].float(), hw)[0] > 0.5
    return np.asarray(full.numpy())


def reference(masks: np.ndarray, hw: tuple[int, int]) -> list[object]:
    from pycocotools import mask as mask_utils

    planes = np.asfortranarray(reference_masks(masks, hw).transpose(1, 2, 0).astype(np.uint8))
    return list(mask_utils.encode(planes))


def p50_ms(fn: Callable[[], object], runs: int) -> float:
    return benchmark(fn, warmup=1, runs=runs)["p50"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (5)")
    args = parser.parse_args()
    print(f"{'photo':>11} {'masks':>5} {'ours ms':>9} {'reference':>10} {'ratio':>7} {'before':>8}")
    for h0, w0 in ((1080, 1920), (3000, 4000)):
        _, info = letterbox(np.zeros((h0, w0, 3), np.uint8), (INPUT, INPUT))
        for n in (10, 50):
            masks = model_masks(n, info)
            differ = int((scale_masks(masks, info) != reference_masks(masks, (h0, w0))).sum())
            t_ours = p50_ms(functools.partial(ours, masks, info), args.runs)
            t_ref = p50_ms(functools.partial(reference, masks, (h0, w0)), args.runs)
            t_before = p50_ms(functools.partial(before, masks, info), args.runs)
            print(
                f"{w0:>5}x{h0:<5} {n:>5} {t_ours:>9.1f} {t_ref:>10.1f} {t_ref / t_ours:>6.1f}x "
                f"{t_before:>8.1f}   pixels that differ from the reference: {differ}"
            )
    print("ratio: reference / ours (higher is better for ours); before: this project's old way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
