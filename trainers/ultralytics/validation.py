"""The end-of-run ``validation`` event from Ultralytics' final validator (see VALIDATION_KEYS).

Ultralytics validates ``best.pt`` once more when training ends; its validator keeps the
per-class results, the confusion matrix and the PR curves. This module turns them into the
plain data of the protocol's ``validation`` event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PRIMARY_METRIC = {
    "detect": "metrics/mAP50-95(B)",
    "segment": "metrics/mAP50-95(M)",
    "pose": "metrics/mAP50-95(P)",
    "classify": "metrics/accuracy_top1",
}
# Which of the validator's results describe the task's own output (masks, keypoints, boxes).
_PART = {"detect": ("box", "(B)"), "segment": ("seg", "(M)"), "pose": ("pose", "(P)")}
RECALL_POINTS = 101


def _names(validator: Any, metrics: Any) -> list[str]:
    names = getattr(metrics, "names", None) or getattr(validator, "names", None) or {}
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN → None


def _files(save_dir: Path) -> tuple[list[str], list[str]]:
    plots = sorted(str(p) for p in save_dir.glob("*.png"))
    samples = sorted(str(p) for p in save_dir.glob("val_batch*_pred.jpg"))
    return plots, samples


def _matrix(validator: Any) -> list[list[int]] | None:
    cm = getattr(validator, "confusion_matrix", None)
    matrix = getattr(cm, "matrix", None)
    if matrix is None:
        return None
    return [[int(round(float(v))) for v in row] for row in matrix]


def _pr_curve(metrics: Any, suffix: str, names: list[str], classes: list[int]) -> dict[str, Any]:
    import numpy as np

    wanted = f"Precision-Recall{suffix}"
    for name, result in zip(
        getattr(metrics, "curves", []), getattr(metrics, "curves_results", []), strict=False
    ):
        if name != wanted:
            continue
        recall, precision = np.asarray(result[0], dtype=float), np.asarray(result[1], dtype=float)
        grid = np.linspace(0.0, 1.0, RECALL_POINTS)
        per_class = {
            names[c] if c < len(names) else str(c): [
                round(float(v), 5) for v in np.interp(grid, recall, precision[i])
            ]
            for i, c in enumerate(classes)
            if i < len(precision)
        }
        return {"pr": {"recall": [round(float(v), 5) for v in grid], "precision": per_class}}
    return {}


def _detection_like(trainer: Any, task: str) -> dict[str, Any]:
    validator = trainer.validator
    metrics = validator.metrics
    names = _names(validator, metrics)
    attr, suffix = _PART[task]
    part = getattr(metrics, attr)
    box = metrics.box
    classes = [int(c) for c in getattr(metrics, "ap_class_index", [])]
    position = {c: i for i, c in enumerate(classes)}
    instances = getattr(metrics, "nt_per_class", None)
    images = getattr(metrics, "nt_per_image", None)
    per_class: list[dict[str, Any]] = []
    for c, name in enumerate(names):
        i = position.get(c)
        row: dict[str, Any] = {
            "class": name,
            "images": int(images[c]) if images is not None and c < len(images) else None,
            "instances": int(instances[c])
            if instances is not None and c < len(instances)
            else None,
        }
        for key, values in (
            ("precision", part.p),
            ("recall", part.r),
            ("ap50", part.ap50),
            ("ap", part.ap),
        ):
            row[key] = _num(values[i]) if i is not None and i < len(values) else None
        if attr != "box":
            row["box_ap50"] = _num(box.ap50[i]) if i is not None and i < len(box.ap50) else None
            row["box_ap"] = _num(box.ap[i]) if i is not None and i < len(box.ap) else None
        per_class.append(row)
    matrix = _matrix(validator)
    return {
        "per_class": per_class,
        "confusion_matrix": None
        if matrix is None
        else {"names": [*names, "background"], "matrix": matrix},
        "curves": _pr_curve(metrics, suffix, names, classes),
    }


def _classification(trainer: Any) -> dict[str, Any]:
    validator = trainer.validator
    names = _names(validator, validator.metrics)
    matrix = _matrix(validator)
    per_class: list[dict[str, Any]] = []
    if matrix is not None:
        n = len(matrix)
        for c in range(min(n, len(names))):
            predicted = sum(matrix[c])  # row: predicted as c
            true = sum(matrix[r][c] for r in range(n))  # column: truly c
            hit = matrix[c][c]
            per_class.append(
                {
                    "class": names[c],
                    "images": true,
                    "precision": hit / predicted if predicted else None,
                    "recall": hit / true if true else None,
                    "top1": hit / true if true else None,
                }
            )
    return {
        "per_class": per_class,
        "confusion_matrix": None if matrix is None else {"names": names, "matrix": matrix},
        "curves": {},
        "top1": _num(validator.metrics.top1),
        "top5": _num(validator.metrics.top5),
    }


def validation_payload(trainer: Any, task: str, metrics: dict[str, float]) -> dict[str, Any]:
    """The ``validation`` event's fields for a finished Ultralytics training.

    Args:
        trainer: The Ultralytics trainer after its final validation.
        task: detect, segment, classify or pose.
        metrics: The final validation's metrics (``trainer.metrics``).
    """
    key = PRIMARY_METRIC[task]
    body = _classification(trainer) if task == "classify" else _detection_like(trainer, task)
    plots, samples = _files(Path(trainer.save_dir))
    return {
        "primary_metric": {"key": key, "value": metrics.get(key)},
        **body,
        "plots": plots,
        "samples": samples,
    }
