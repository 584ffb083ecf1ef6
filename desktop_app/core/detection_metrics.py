"""COCO-style detection metrics on plain arrays (pure numpy).

:func:`evaluate_detections` follows ``pycocotools.cocoeval.COCOeval`` for boxes, area range
"all": per image and class, detections sorted by score (at most ``max_dets``, 100 like
COCO) are greedily matched to ground truth at each IoU threshold 0.50:0.05:0.95; crowd
ground truth (``iscrowd``) is matched by intersection over the detection's area, may absorb
any number of detections, and neither counts as a miss nor makes its matches true or false
positives (they are ignored). Precision is interpolated at 101 recall points (COCO's
envelope and ``searchsorted`` lookup). mAP50-95 is the mean over thresholds, recall points
and classes that have ground truth; mAP50 and mAP75 use one threshold.

Beyond COCO's numbers it gives, per class, the precision and recall at one confidence
threshold: the one that maximises the mean F1 over classes (IoU 0.50, on a 1000-step
confidence grid, like Ultralytics), the 101-point PR curve at IoU 0.50, and a confusion
matrix like Ultralytics' (IoU > 0.45, confidence > 0.25, class-agnostic matching; rows are
the predicted class, columns the true class, the last row and column are background; crowd
ground truth is left out of it).

Boxes are ``xyxy`` in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "DetectionMetrics",
    "GroundTruth",
    "Predictions",
    "box_iou",
    "confusion_matrix",
    "evaluate_detections",
]

# The same grids as COCOeval (built the same way, so the floats compare equal).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
CONFIDENCE_GRID = np.linspace(0.0, 1.0, 1000)


@dataclass(frozen=True)
class GroundTruth:
    """The true objects of one image.

    Attributes:
        xyxy: ``(N, 4)`` corners in pixels.
        cls: ``(N,)`` class ids.
        iscrowd: ``(N,)`` booleans, True for a crowd region (COCO ``iscrowd=1``).
    """

    xyxy: np.ndarray
    cls: np.ndarray
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    def __post_init__(self) -> None:
        n = len(self.cls)
        object.__setattr__(self, "xyxy", np.asarray(self.xyxy, np.float64).reshape(-1, 4))
        object.__setattr__(self, "cls", np.asarray(self.cls, np.int64).reshape(-1))
        crowd = np.asarray(self.iscrowd, bool).reshape(-1)
        object.__setattr__(self, "iscrowd", crowd if len(crowd) else np.zeros((n,), bool))
        if len(self.xyxy) != n or len(self.iscrowd) != n:
            raise ValueError("ground truth xyxy, cls and iscrowd must have the same length")


@dataclass(frozen=True)
class Predictions:
    """A model's detections on one image.

    Attributes:
        xyxy: ``(N, 4)`` corners in pixels.
        cls: ``(N,)`` class ids.
        score: ``(N,)`` confidences.
    """

    xyxy: np.ndarray
    cls: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "xyxy", np.asarray(self.xyxy, np.float64).reshape(-1, 4))
        object.__setattr__(self, "cls", np.asarray(self.cls, np.int64).reshape(-1))
        object.__setattr__(self, "score", np.asarray(self.score, np.float64).reshape(-1))
        if not len(self.xyxy) == len(self.cls) == len(self.score):
            raise ValueError("predictions xyxy, cls and score must have the same length")


@dataclass(frozen=True)
class DetectionMetrics:
    """Everything :func:`evaluate_detections` measured.

    Attributes:
        map50_95: COCO mAP over IoU 0.50:0.95 (-1 when no class has ground truth).
        map50: mAP at IoU 0.50.
        map75: mAP at IoU 0.75.
        precision: ``(T, R, K)`` interpolated precision (-1 for a class without ground
            truth), T IoU thresholds, R = 101 recall points, K classes.
        recall: ``(T, K)`` the highest recall reached (-1 for a class without ground truth).
        images: ``(K,)`` images with at least one (non-crowd) object of each class.
        instances: ``(K,)`` non-crowd objects of each class.
        f1_confidence: the confidence threshold maximising the mean F1 (IoU 0.50).
        p_at_conf: ``(K,)`` precision of each class at ``f1_confidence``.
        r_at_conf: ``(K,)`` recall of each class at ``f1_confidence``.
        confusion: ``(K + 1, K + 1)`` counts; rows predicted, columns true, index K is
            background.
        num_images: images evaluated.
        num_predictions: predictions given (before the ``max_dets`` cut).
    """

    map50_95: float
    map50: float
    map75: float
    precision: np.ndarray
    recall: np.ndarray
    images: np.ndarray
    instances: np.ndarray
    f1_confidence: float
    p_at_conf: np.ndarray
    r_at_conf: np.ndarray
    confusion: np.ndarray
    num_images: int
    num_predictions: int

    def class_ap(self, k: int) -> tuple[float | None, float | None]:
        """``(AP50, AP50-95)`` of class ``k``; None for a class without ground truth."""
        p = self.precision[:, :, k]
        if not (p > -1).any():
            return None, None
        return float(np.mean(p[0])), float(np.mean(p))

    def per_class(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        """One row per class: images, instances, P, R (at ``f1_confidence``), AP50, AP50-95."""
        rows = []
        for k, name in enumerate(class_names):
            ap50, ap = self.class_ap(k)
            has_gt = ap is not None
            rows.append(
                {
                    "class": name,
                    "class_id": k,
                    "images": int(self.images[k]),
                    "instances": int(self.instances[k]),
                    "precision": _r(self.p_at_conf[k]) if has_gt else None,
                    "recall": _r(self.r_at_conf[k]) if has_gt else None,
                    "ap50": _r(ap50),
                    "ap50_95": _r(ap),
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """The headline numbers (``precision``/``recall``: means over classes with ground truth)."""
        has_gt = self.instances > 0
        return {
            "map50_95": _r(self.map50_95),
            "map50": _r(self.map50),
            "map75": _r(self.map75),
            "precision": _r(float(self.p_at_conf[has_gt].mean())) if has_gt.any() else None,
            "recall": _r(float(self.r_at_conf[has_gt].mean())) if has_gt.any() else None,
            "f1_confidence": _r(self.f1_confidence),
            "images": self.num_images,
            "instances": int(self.instances.sum()),
            "predictions": self.num_predictions,
        }

    def curves(self, class_names: Sequence[str]) -> dict[str, Any]:
        """PR curves at IoU 0.50: the 101 recall points and each class's precision there."""
        return {
            "iou": 0.5,
            "recall": [_r(float(v)) for v in RECALL_THRESHOLDS],
            "precision": {
                name: [_r(float(v)) for v in self.precision[0, :, k]]
                for k, name in enumerate(class_names)
                if self.instances[k] > 0 or (self.precision[0, :, k] > -1).any()
            },
        }


def _r(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of xyxy boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(union > 0, inter / union, 0.0), np.float64)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter: np.ndarray = np.clip(w, 0, None) * np.clip(h, 0, None)
    return inter


def _coco_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCO's box IoU: a crowd ground truth divides by the detection's area alone."""
    inter = _intersection(dt, gt)
    area_d = (dt[:, 2] - dt[:, 0]) * (dt[:, 3] - dt[:, 1])
    area_g = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    union = np.where(crowd[None, :], area_d[:, None], area_d[:, None] + area_g[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass
class _ImageClass:
    """COCOeval's ``evaluateImg`` result for one image and class."""

    scores: np.ndarray  # (D,) sorted descending, cut at max_dets
    matched: np.ndarray  # (T, D) bool
    ignored: np.ndarray  # (T, D) bool
    gt_ignored: np.ndarray  # (G,) bool


def _match(
    gt: GroundTruth, gsel: np.ndarray, pred: Predictions, dsel: np.ndarray, max_dets: int
) -> _ImageClass:
    g_xyxy, g_crowd = gt.xyxy[gsel], gt.iscrowd[gsel]
    order_g = np.argsort(g_crowd.astype(np.int64), kind="mergesort")  # not ignored first
    g_xyxy, g_crowd = g_xyxy[order_g], g_crowd[order_g]
    d_xyxy, d_score = pred.xyxy[dsel], pred.score[dsel]
    order_d = np.argsort(-d_score, kind="mergesort")[:max_dets]
    d_xyxy, d_score = d_xyxy[order_d], d_score[order_d]
    n_t, n_d, n_g = len(IOU_THRESHOLDS), len(d_score), len(g_crowd)
    matched = np.zeros((n_t, n_d), bool)
    ignored = np.zeros((n_t, n_d), bool)
    if n_d and n_g:
        ious = _coco_iou(d_xyxy, g_xyxy, g_crowd).tolist()
        crowd = g_crowd.tolist()
        for t, thr in enumerate(IOU_THRESHOLDS.tolist()):
            taken = [False] * n_g
            for d in range(n_d):
                best = min(thr, 1 - 1e-10)
                m = -1
                row = ious[d]
                for g in range(n_g):
                    if taken[g] and not crowd[g]:
                        continue
                    # A real match found: stop before the ignored (crowd) ground truth.
                    if m > -1 and not crowd[m] and crowd[g]:
                        break
                    if row[g] < best:
                        continue
                    best = row[g]
                    m = g
                if m == -1:
                    continue
                ignored[t, d] = crowd[m]
                matched[t, d] = True
                taken[m] = True
    return _ImageClass(d_score, matched, ignored, g_crowd)


def evaluate_detections(
    ground_truth: Sequence[GroundTruth],
    predictions: Sequence[Predictions],
    num_classes: int,
    *,
    max_dets: int = 100,
    confusion_conf: float = 0.25,
    confusion_iou: float = 0.45,
) -> DetectionMetrics:
    """COCO mAP and the rest for images given as arrays (one entry per image, same order).

    Args:
        ground_truth: The true objects of each image.
        predictions: The detections of each image (class ids in the same class space).
        num_classes: K; class ids are ``0..K-1``.
        max_dets: Detections kept per image and class, best first (COCO: 100).
        confusion_conf: Detections below this confidence stay out of the confusion matrix.
        confusion_iou: IoU above which a detection and a true object match there.

    Raises:
        ValueError: the lists differ in length, or a class id is outside ``0..K-1``.
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(
            f"{len(ground_truth)} ground-truth images but {len(predictions)} prediction images"
        )
    for what, items in (("ground truth", ground_truth), ("prediction", predictions)):
        for item in items:
            if len(item.cls) and (item.cls.min() < 0 or item.cls.max() >= num_classes):
                raise ValueError(f"a {what} class id is outside 0..{num_classes - 1}")
    n_t, n_r = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((n_t, n_r, num_classes))
    recall = -np.ones((n_t, num_classes))
    images = np.zeros(num_classes, np.int64)
    instances = np.zeros(num_classes, np.int64)
    # Confidence sweep at IoU 0.50 (index 0): tp/fp counts per class at each grid step.
    tp_at = np.zeros((num_classes, len(CONFIDENCE_GRID)))
    fp_at = np.zeros((num_classes, len(CONFIDENCE_GRID)))
    for k in range(num_classes):
        evals: list[_ImageClass] = []
        for gt, pred in zip(ground_truth, predictions, strict=True):
            gsel = gt.cls == k
            dsel = pred.cls == k
            if not gsel.any() and not dsel.any():
                continue
            real = int((gsel & ~gt.iscrowd).sum())
            images[k] += real > 0
            instances[k] += real
            evals.append(_match(gt, gsel, pred, dsel, max_dets))
        if not evals:
            continue
        scores = np.concatenate([e.scores for e in evals])
        order = np.argsort(-scores, kind="mergesort")
        scores = scores[order]
        matched = np.concatenate([e.matched for e in evals], axis=1)[:, order]
        ignored = np.concatenate([e.ignored for e in evals], axis=1)[:, order]
        n_pos = int(sum(int((~e.gt_ignored).sum()) for e in evals))
        if n_pos == 0:
            continue
        tps = matched & ~ignored
        fps = ~matched & ~ignored
        tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
        fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
        for t in range(n_t):
            tp, fp = tp_sum[t], fp_sum[t]
            nd = len(tp)
            rc = tp / n_pos
            pr = tp / (fp + tp + np.spacing(1))
            recall[t, k] = rc[-1] if nd else 0
            q = np.zeros(n_r)
            pr_list = pr.tolist()
            for i in range(nd - 1, 0, -1):
                if pr_list[i] > pr_list[i - 1]:
                    pr_list[i - 1] = pr_list[i]
            inds = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
            for ri, pi in enumerate(inds):
                if pi >= nd:
                    break
                q[ri] = pr_list[pi]
            precision[t, :, k] = q
        # Counts of true and false positives with a score at or above each grid step.
        n_above = np.searchsorted(-scores, -CONFIDENCE_GRID, side="right")
        tp_at[k] = np.concatenate([[0.0], tp_sum[0]])[n_above]
        fp_at[k] = np.concatenate([[0.0], fp_sum[0]])[n_above]

    def _mean(values: np.ndarray) -> float:
        kept = values[values > -1]
        return float(np.mean(kept)) if kept.size else -1.0

    has_gt = instances > 0
    p_curve = tp_at / np.maximum(tp_at + fp_at, 1e-16)
    r_curve = tp_at / np.maximum(instances[:, None], 1)
    f1 = 2 * p_curve * r_curve / np.maximum(p_curve + r_curve, 1e-16)
    if has_gt.any():
        best = int(np.argmax(f1[has_gt].mean(axis=0)))
    else:
        best = 0
    t75 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.75)))
    return DetectionMetrics(
        map50_95=_mean(precision),
        map50=_mean(precision[0]),
        map75=_mean(precision[t75]),
        precision=precision,
        recall=recall,
        images=images,
        instances=instances,
        f1_confidence=float(CONFIDENCE_GRID[best]),
        p_at_conf=p_curve[:, best],
        r_at_conf=r_curve[:, best],
        confusion=confusion_matrix(
            ground_truth, predictions, num_classes, conf=confusion_conf, iou=confusion_iou
        ),
        num_images=len(ground_truth),
        num_predictions=int(sum(len(p.score) for p in predictions)),
    )


def confusion_matrix(
    ground_truth: Sequence[GroundTruth],
    predictions: Sequence[Predictions],
    num_classes: int,
    *,
    conf: float = 0.25,
    iou: float = 0.45,
) -> np.ndarray:
    """Ultralytics' detection confusion matrix: rows predicted, columns true, K = background.

    Detections with confidence above ``conf`` are matched to the (non-crowd) true objects
    of their image regardless of class, pairs with IoU above ``iou``, each detection and
    each object at most once, highest IoU first. A matched pair counts at (predicted,
    true), an unmatched object at (background, true), an unmatched detection at
    (predicted, background).
    """
    k = num_classes
    matrix = np.zeros((k + 1, k + 1), np.int64)
    for gt, pred in zip(ground_truth, predictions, strict=True):
        keep_g = ~gt.iscrowd
        g_cls, g_xyxy = gt.cls[keep_g], gt.xyxy[keep_g]
        keep_d = pred.score > conf
        d_cls, d_xyxy = pred.cls[keep_d], pred.xyxy[keep_d]
        if not len(d_cls):
            for c in g_cls.tolist():
                matrix[k, c] += 1
            continue
        if not len(g_cls):
            for c in d_cls.tolist():
                matrix[c, k] += 1
            continue
        ious = box_iou(g_xyxy, d_xyxy)
        gi, di = np.nonzero(ious > iou)
        pairs = np.stack([gi, di, ious[gi, di]], axis=1)
        if len(pairs) > 1:
            pairs = pairs[np.argsort(-pairs[:, 2], kind="stable")]
            pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
            pairs = pairs[np.argsort(-pairs[:, 2], kind="stable")]
            pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
        g_of = pairs[:, 0].astype(np.int64)
        d_of = pairs[:, 1].astype(np.int64)
        for i, c in enumerate(g_cls.tolist()):
            hit = np.nonzero(g_of == i)[0]
            if len(hit) == 1:
                matrix[int(d_cls[d_of[hit[0]]]), c] += 1
            else:
                matrix[k, c] += 1
        for j, c in enumerate(d_cls.tolist()):
            if not (d_of == j).any():
                matrix[c, k] += 1
    return matrix
