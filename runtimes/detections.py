"""Typed detection results: arrays with their units in their names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Boxes of one image in original-image pixels.

    Attributes:
        xyxy: ``(N, 4)`` float32 corners ``x1, y1, x2, y2`` in pixels of the input image.
        confidence: ``(N,)`` float32 scores in ``[0, 1]``.
        class_id: ``(N,)`` int64 indices into ``class_names``.
        class_names: the model's class names.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must be (N, 4), got {self.xyxy.shape}")
        if self.confidence.shape != (n,) or self.class_id.shape != (n,):
            raise ValueError("confidence and class_id must be (N,) like xyxy")

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

    def to_list(self) -> list[dict[str, Any]]:
        out = []
        for box, score, cls in zip(
            self.xyxy.tolist(), self.confidence.tolist(), self.class_id.tolist(), strict=True
        ):
            name = self.class_names[cls] if 0 <= cls < len(self.class_names) else str(cls)
            out.append(
                {
                    "class_id": int(cls),
                    "class_name": name,
                    "confidence": round(float(score), 6),
                    "xyxy": [round(float(v), 3) for v in box],
                }
            )
        return out
