"""Typed prediction results: arrays with their units in their names.

One :class:`Detections` type serves every task: boxes for detect, boxes + per-detection
binary masks for segment, boxes + keypoints for pose, and class probabilities (no boxes)
for classify. The optional fields are ``None`` where the task has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_TOP_K = 1000  # the most classes an answer lists (Detections.top_k's k, asked by a client)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """A binary ``(H, W)`` mask as COCO's uncompressed RLE: ``{"size": [H, W], "counts": [...]}``.

    Counts run over the mask in column-major order and start with a run of zeros (possibly
    empty), as ``pycocotools.mask.frPyObjects`` reads them. Only the box around the mask's
    pixels is read in that order: a detection's mask in a 12-megapixel photo is encoded in the
    time its box takes, not the photo's.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = (int(v) for v in mask.shape)
    size = [h, w]
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return {"size": size, "counts": [h * w] if h * w else []}
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if 3 * (y1 - y0) * (x1 - x0) > h * w:  # a box that large: read the whole mask (faster)
        flat = mask.ravel(order="F")
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        counts = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
        return {"size": size, "counts": [0, *counts] if flat[0] else counts}
    # the box with a row of zeros above and below, so every run starts and ends inside it
    tall = y1 - y0 + 2
    padded = np.zeros((tall, x1 - x0), np.int8)
    padded[1:-1] = mask[y0:y1, x0:x1]
    change = np.diff(padded.ravel(order="F"))
    starts, ends = np.flatnonzero(change == 1) + 1, np.flatnonzero(change == -1) + 1
    edges = np.empty(2 * len(starts), np.int64)  # in the padded box's column-major order
    edges[0::2], edges[1::2] = starts, ends
    # → the whole mask's column-major order (a run ending on the last row of a column and one
    # starting on the first row of the next are one run there)
    edges = (x0 + edges // tall) * h + (y0 + edges % tall - 1)
    joined = np.flatnonzero(edges[1:-1:2] == edges[2::2])
    if joined.size:
        edges = np.delete(edges, np.concatenate([2 * joined + 1, 2 * joined + 2]))
    counts = np.diff(np.concatenate(([0], edges, [h * w]))).tolist()
    if counts[-1] == 0:  # the mask ends with a run of ones
        counts.pop()
    return {"size": size, "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`mask_to_rle`: a ``(H, W)`` bool mask."""
    h, w = (int(v) for v in rle["size"])
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(rle["counts"], dtype=np.int64))
    if flat.size != h * w:
        raise ValueError(f"RLE counts cover {flat.size} pixels, not {h}x{w}")
    return flat.reshape((h, w), order="F")


@dataclass(frozen=True)
class Detections:
    """The prediction for one image, in original-image pixels.

    Attributes:
        xyxy: ``(N, 4)`` float32 corners ``x1, y1, x2, y2`` in pixels of the input image.
        confidence: ``(N,)`` float32 scores in ``[0, 1]``.
        class_id: ``(N,)`` int64 indices into ``class_names``.
        class_names: the model's class names.
        masks: segment only: ``(N, H, W)`` bool masks at the original image size, each
            cropped to its box.
        keypoints: pose only: ``(N, K, 3)`` float32 ``x, y`` (original-image pixels) and a
            visibility confidence in ``[0, 1]`` (``(N, K, 2)`` for a model without one).
        probs: classify only: ``(C,)`` float32 class probabilities (``N`` is 0).
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_names: tuple[str, ...] = field(default_factory=tuple)
    masks: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must be (N, 4), got {self.xyxy.shape}")
        if self.confidence.shape != (n,) or self.class_id.shape != (n,):
            raise ValueError("confidence and class_id must be (N,) like xyxy")
        if self.masks is not None and (self.masks.ndim != 3 or len(self.masks) != n):
            raise ValueError(f"masks must be (N, H, W) with N = {n}, got {self.masks.shape}")
        if self.keypoints is not None and (self.keypoints.ndim != 3 or len(self.keypoints) != n):
            raise ValueError(
                f"keypoints must be (N, K, 2|3) with N = {n}, got {self.keypoints.shape}"
            )
        if self.probs is not None and self.probs.ndim != 1:
            raise ValueError(f"probs must be (C,), got {self.probs.shape}")

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls, class_names: tuple[str, ...] = ()) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0,), np.int64),
            class_names,
        )

    def _name(self, cls: int) -> str:
        return self.class_names[cls] if 0 <= cls < len(self.class_names) else str(cls)

    def top_k(self, k: int = 5) -> list[dict[str, Any]]:
        """Classify: the ``k`` most probable classes, most probable first (empty otherwise)."""
        if self.probs is None:
            return []
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [
            {
                "class_id": int(i),
                "class_name": self._name(int(i)),
                "confidence": round(float(self.probs[i]), 6),
            }
            for i in order
        ]

    def to_list(self) -> list[dict[str, Any]]:
        """The detections as JSON-able dicts; masks as COCO RLE, keypoints as ``[[x, y, conf], ...]``."""
        out = []
        for i, (box, score, cls) in enumerate(
            zip(self.xyxy.tolist(), self.confidence.tolist(), self.class_id.tolist(), strict=True)
        ):
            item: dict[str, Any] = {
                "class_id": int(cls),
                "class_name": self._name(int(cls)),
                "confidence": round(float(score), 6),
                "xyxy": [round(float(v), 3) for v in box],
            }
            if self.masks is not None:
                item["mask"] = mask_to_rle(self.masks[i])
            if self.keypoints is not None:
                item["keypoints"] = [[round(float(v), 3) for v in kp] for kp in self.keypoints[i]]
            out.append(item)
        return out
