"""Parity validation: detection matching, the numbers, and the per-precision tolerances."""

from __future__ import annotations

import numpy as np

from exporters.validation import TOLERANCES, compare, match_detections
from runtimes.detections import Detections

NAMES = ("a", "b")


def dets(rows: list[tuple[float, float, float, float, float, int]]) -> Detections:
    arr = np.array(rows, np.float64).reshape(-1, 6)
    return Detections(
        arr[:, :4].astype(np.float32),
        arr[:, 4].astype(np.float32),
        arr[:, 5].astype(np.int64),
        NAMES,
    )


def test_matching_needs_same_class_and_high_iou() -> None:
    ref = dets([(0, 0, 100, 100, 0.9, 0), (200, 200, 300, 300, 0.8, 1)])
    cand = dets([(200.5, 200, 300, 300, 0.79, 1), (0, 0, 100, 100, 0.9, 1), (0, 0, 60, 60, 0.5, 0)])
    # the first reference box has no same-class partner at IoU >= 0.9
    assert match_detections(ref, cand) == [(1, 0)]


def test_identical_detections_pass_with_zero_deviation() -> None:
    d = dets([(10, 10, 50, 50, 0.7, 0), (60, 60, 90, 90, 0.4, 1)])
    numbers, failures = compare([(d, d), (dets([]), dets([]))], "fp32")
    assert failures == []
    assert numbers["matched"] == 2 and numbers["match_ratio"] == 1.0
    assert numbers["max_box_deviation_px"] == 0.0 and numbers["max_score_deviation"] == 0.0
    assert numbers["tolerance"]["max_box_px"] == TOLERANCES["fp32"].max_box_px


def test_out_of_tolerance_is_reported_with_numbers() -> None:
    ref = dets([(10, 10, 50, 50, 0.7, 0), (60, 60, 90, 90, 0.4, 1)])
    cand = dets([(10, 10, 50.6, 50, 0.6, 0)])  # one box lost, the other's score moved 0.1
    numbers, failures = compare([(ref, cand)], "fp32")
    assert numbers["match_ratio"] == 0.5
    assert abs(numbers["max_box_deviation_px"] - 0.6) < 1e-4
    assert any("matched" in f for f in failures) and any("score" in f for f in failures)
    # fp16 tolerates more, but not a lost half of the boxes
    _, failures16 = compare([(ref, cand)], "fp16")
    assert any("matched" in f for f in failures16)


def test_raw_deviation_decides_when_detections_are_not_decisive() -> None:
    _, failures = compare([(dets([]), dets([]))], "fp32", decisive=False, raw=(0.001, 1e-6))
    assert failures == []
    _, failures = compare([(dets([]), dets([]))], "fp32", decisive=False, raw=(5.0, 1e-6))
    assert failures and "raw box" in failures[0]


def test_raw_boxes_compare_only_anchors_a_threshold_could_keep() -> None:
    import numpy as np

    from exporters.validation import _raw_deviation

    anchors, nc = 120, 2
    ref = np.zeros((1, 4 + nc, anchors), np.float32)
    ref[0, :4] = 100.0
    ref[0, 4] = 0.01  # background: no threshold keeps these
    ref[0, 4, :3] = 0.9  # three confident anchors
    cand = ref.copy()
    cand[0, :4, :3] += 0.5
    cand[0, :4, 3:] += 30.0  # background boxes wander far (as in int8)
    box, score, _ = _raw_deviation(ref, cand, nc=nc)
    assert box == 0.5 and score == 0.0

    # A barely trained model (no anchor reaches the lowest threshold): every top-k anchor counts.
    ref[0, 4, :3] = 0.02
    cand[0, 4, :3] = 0.02
    box, _, _ = _raw_deviation(ref, cand, nc=nc)
    assert box == 30.0
