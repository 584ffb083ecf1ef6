"""Our COCO-style metrics against pycocotools' COCOeval on the same boxes."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from desktop_app.core.detection_metrics import (
    GroundTruth,
    Predictions,
    confusion_matrix,
    evaluate_detections,
)

TOL = 0.005


def _scene(
    seed: int,
    *,
    images: int = 30,
    classes: int = 4,
    skip_class_predictions: int | None = None,
    crowd: bool = False,
) -> tuple[list[GroundTruth], list[Predictions]]:
    """Random objects, jittered copies as detections, some missed, some false positives."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 500, (n, 2))
        wh = rng.uniform(10, 150, (n, 2))
        g_xyxy = np.concatenate([xy, xy + wh], axis=1)
        g_cls = rng.integers(0, classes, n)
        g_crowd = (rng.random(n) < 0.15) if crowd else np.zeros(n, bool)
        gts.append(GroundTruth(g_xyxy, g_cls, g_crowd))
        kept = rng.random(n) > 0.2  # missed objects
        jitter = rng.normal(0, 0.12, (n, 4)) * np.concatenate([wh, wh], axis=1)
        d_xyxy = (g_xyxy + jitter)[kept]
        d_cls = g_cls[kept].copy()
        flip = rng.random(len(d_cls)) < 0.1  # wrong class now and then
        d_cls[flip] = rng.integers(0, classes, int(flip.sum()))
        m = int(rng.integers(0, 5))  # false positives
        fxy = rng.uniform(0, 500, (m, 2))
        f_xyxy = np.concatenate([fxy, fxy + rng.uniform(5, 120, (m, 2))], axis=1)
        d_xyxy = np.concatenate([d_xyxy, f_xyxy])
        d_cls = np.concatenate([d_cls, rng.integers(0, classes, m)])
        # Duplicates of a few detections (should become false positives).
        dup = rng.random(len(d_cls)) < 0.15
        d_xyxy = np.concatenate([d_xyxy, d_xyxy[dup] + rng.normal(0, 3, (int(dup.sum()), 4))])
        d_cls = np.concatenate([d_cls, d_cls[dup]])
        if skip_class_predictions is not None:
            keep = d_cls != skip_class_predictions
            d_xyxy, d_cls = d_xyxy[keep], d_cls[keep]
        d_xyxy[:, 2:] = np.maximum(d_xyxy[:, 2:], d_xyxy[:, :2] + 1)
        preds.append(Predictions(d_xyxy, d_cls, rng.random(len(d_cls))))
    return gts, preds


def _cocoeval(gts: list[GroundTruth], preds: list[Predictions], classes: int) -> COCOeval:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, (gt, pred) in enumerate(zip(gts, preds, strict=True), start=1):
        images.append({"id": i, "width": 700, "height": 700})
        for box, c, crowd in zip(gt.xyxy, gt.cls, gt.iscrowd, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(c) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(crowd),
                }
            )
        for box, c, s in zip(pred.xyxy, pred.cls, pred.score, strict=True):
            results.append(
                {
                    "image_id": i,
                    "category_id": int(c) + 1,
                    "bbox": [
                        float(box[0]),
                        float(box[1]),
                        float(box[2] - box[0]),
                        float(box[3] - box[1]),
                    ],
                    "score": float(s),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(classes)],
        }
        coco.createIndex()
        dt = coco.loadRes(results) if results else COCO()
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _coco_class_ap(ev: COCOeval, k: int, t: slice | int) -> float | None:
    p = ev.eval["precision"][t, :, k, 0, 2]  # area all, maxDets 100
    p = p[p > -1]
    return float(np.mean(p)) if p.size else None


@pytest.mark.parametrize(
    ("seed", "options"),
    [
        (0, {}),
        (1, {}),
        (2, {"images": 50}),
        (3, {"skip_class_predictions": 2}),
        (4, {"crowd": True}),
        (5, {"crowd": True, "skip_class_predictions": 0, "classes": 3}),
    ],
)
def test_map_agrees_with_pycocotools(seed: int, options: dict[str, Any]) -> None:
    classes = int(options.get("classes", 4))
    gts, preds = _scene(seed, **options)
    ours = evaluate_detections(gts, preds, classes)
    ev = _cocoeval(gts, preds, classes)
    assert abs(ours.map50_95 - ev.stats[0]) <= TOL
    assert abs(ours.map50 - ev.stats[1]) <= TOL
    assert abs(ours.map75 - ev.stats[2]) <= TOL
    # The same algorithm: agreement to float noise, not just within the tolerance.
    assert ours.map50_95 == pytest.approx(ev.stats[0], abs=1e-6)
    assert ours.map50 == pytest.approx(ev.stats[1], abs=1e-6)
    for k in range(classes):
        ap50, ap = ours.class_ap(k)
        ref50, ref = _coco_class_ap(ev, k, 0), _coco_class_ap(ev, k, slice(None))
        if ref is None:
            assert ap is None
            continue
        assert ap is not None and ap50 is not None and ref50 is not None
        assert abs(ap - ref) <= TOL and abs(ap50 - ref50) <= TOL
        np.testing.assert_allclose(
            ours.precision[:, :, k], ev.eval["precision"][:, :, k, 0, 2], atol=1e-9
        )
    np.testing.assert_allclose(ours.recall, ev.eval["recall"][:, :, 0, 2], atol=1e-9)


def test_a_class_without_predictions_scores_zero_and_one_without_truth_is_left_out() -> None:
    gts, preds = _scene(7, skip_class_predictions=1)
    ours = evaluate_detections(gts, preds, 5)  # class 4 never appears at all
    assert ours.class_ap(1) == (0.0, 0.0)
    assert ours.class_ap(4) == (None, None)
    rows = ours.per_class([f"c{k}" for k in range(5)])
    assert rows[1]["instances"] > 0 and rows[1]["recall"] == 0.0
    assert rows[4]["instances"] == 0 and rows[4]["ap50"] is None
    ev = _cocoeval(gts, preds, 5)
    assert ours.map50_95 == pytest.approx(ev.stats[0], abs=1e-6)


def test_perfect_predictions_score_one_and_no_predictions_score_zero() -> None:
    gts, _ = _scene(8)
    perfect = [Predictions(g.xyxy, g.cls, np.linspace(0.9, 0.5, len(g.cls))) for g in gts]
    m = evaluate_detections(gts, perfect, 4)
    assert m.map50_95 == pytest.approx(1.0) and m.map50 == pytest.approx(1.0)
    assert m.summary()["precision"] == 1.0 and m.summary()["recall"] == 1.0
    # Everything on the diagonal of the confusion matrix.
    assert m.confusion.trace() == m.confusion.sum() == m.instances.sum()
    empty = [Predictions(np.zeros((0, 4)), np.zeros(0), np.zeros(0)) for _ in gts]
    m = evaluate_detections(gts, empty, 4)
    assert m.map50_95 == 0.0 and m.map50 == 0.0
    assert m.confusion[4, :4].tolist() == m.instances.tolist()


def test_max_dets_keeps_the_best_detections_per_image_and_class() -> None:
    gt = [GroundTruth(np.array([[0, 0, 10, 10]]), np.array([0]))]
    # One true positive with the lowest score behind 3 false positives.
    boxes = np.array([[50, 50, 60, 60], [70, 70, 80, 80], [90, 90, 99, 99], [0, 0, 10, 10]])
    pred = [Predictions(boxes, np.zeros(4), np.array([0.9, 0.8, 0.7, 0.1]))]
    assert evaluate_detections(gt, pred, 1, max_dets=3).map50 == 0.0
    assert evaluate_detections(gt, pred, 1).map50 == pytest.approx(0.25, abs=0.01)


def test_confusion_matrix_counts_rows_predicted_columns_true() -> None:
    gt = [GroundTruth(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]), [0, 1, 1])]
    pred = [
        Predictions(
            np.array([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70], [40, 40, 50, 50]]),
            [0, 0, 1, 1],
            [0.9, 0.8, 0.7, 0.2],  # the last one is below conf 0.25
        )
    ]
    cm = confusion_matrix(gt, pred, 2)
    # true 0 → predicted 0; true 1 → predicted 0; true 1 missed; a detection of 1 on nothing.
    assert cm.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="ground-truth images"):
        evaluate_detections([], [Predictions(np.zeros((0, 4)), [], [])], 1)
    with pytest.raises(ValueError, match="class id is outside"):
        evaluate_detections(
            [GroundTruth(np.array([[0, 0, 1, 1]]), [3])],
            [Predictions(np.zeros((0, 4)), [], [])],
            2,
        )
