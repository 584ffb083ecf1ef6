"""TFLite INT8 calibration: per-image ranges merged by percentile, and the float scopes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from exporters.formats.tflite import (
    HEAD_SCOPE,
    RANGE_PERCENTILE,
    STEM_SCOPE,
    collect_ranges,
    percentile_ranges,
)


def _calibrate(per_image: list[tuple[float, float]]) -> dict[str, object]:
    """Merge per-image ranges of one tensor as the calibrator does, image by image."""
    seen: dict[str, object] = {}
    for low, high in per_image:
        new = {"min": np.array([low], np.float32), "max": np.array([high], np.float32)}
        seen = collect_ranges(seen, new)
    return seen


def test_collect_ranges_keeps_every_images_range() -> None:
    merged = _calibrate([(-1.0, 2.0), (-3.0, 1.0), (0.0, 5.0)])
    assert [float(v[0]) for v in merged["mins"]] == [-1.0, -3.0, 0.0]  # type: ignore[attr-defined]
    assert [float(v[0]) for v in merged["maxs"]] == [2.0, 1.0, 5.0]  # type: ignore[attr-defined]


def test_percentile_ranges_ignore_one_unusual_image() -> None:
    # 99 images reach 1.0, one reaches 50: the widest range would put 50 in every step.
    ranges = [(-0.5, 1.0)] * 99 + [(-0.5, 50.0)]
    result = percentile_ranges({"act": _calibrate(ranges)})["act"]
    assert set(result) == {"min", "max"}  # the per-image lists are gone
    assert result["max"].dtype == np.float32 and result["max"].shape == (1,)
    assert float(result["max"][0]) == pytest.approx(1.0)
    assert float(result["min"][0]) == pytest.approx(-0.5)


def test_percentile_ranges_cover_most_images_unlike_a_moving_average() -> None:
    maxima = np.linspace(1.0, 10.0, 77)
    rng = np.random.default_rng(0)
    order = rng.permutation(77)
    result = percentile_ranges({"act": _calibrate([(0.0, float(maxima[i])) for i in order])})
    high = float(result["act"]["max"][0])
    assert high == pytest.approx(float(np.percentile(maxima, RANGE_PERCENTILE)))
    assert float(np.mean(maxima <= high)) >= RANGE_PERCENTILE / 100 - 0.01
    # The quantizer's default moving average (0.95 on the past) depends on the image order
    # and clips most images' activations.
    ema = float(maxima[order[0]])
    for i in order[1:]:
        ema = 0.95 * ema + 0.05 * float(maxima[i])
    assert float(np.mean(maxima <= ema)) < 0.75


def test_one_calibration_image_keeps_its_range() -> None:
    result = percentile_ranges({"act": _calibrate([(-2.0, 3.0)])})["act"]
    assert float(result["min"][0]) == -2.0 and float(result["max"][0]) == 3.0


@pytest.mark.parametrize("model", ["Detection", "Segmentation", "Pose", "Classification"])
def test_stem_scope_matches_only_the_first_convolution(model: str) -> None:
    prefix = (
        f"ultralytics.utils.export.engine._NormalizeCoords/ultralytics.nn.tasks.{model}Model_model/"
    )
    stem = prefix + "ultralytics.nn.modules.conv.Conv_0/torch.nn.modules.conv.Conv2d_conv;1"
    act = prefix + "ultralytics.nn.modules.conv.Conv_0/torch.nn.modules.activation.SiLU_act;"
    assert re.fullmatch(STEM_SCOPE, stem) and re.fullmatch(STEM_SCOPE, act)
    for other in (
        prefix + "ultralytics.nn.modules.conv.Conv_1/torch.nn.modules.conv.Conv2d_conv;",
        prefix + "ultralytics.nn.modules.block.C3k2_2/ultralytics.nn.modules.conv.Conv_cv1;",
        prefix + "ultralytics.nn.modules.conv.Conv_03/torch.nn.modules.conv.Conv2d_conv;",
    ):
        assert not re.fullmatch(STEM_SCOPE, other)
    head = prefix + "ultralytics.nn.modules.head.Detect_23/torch.nn.modules.conv.Conv2d_cv2;"
    assert re.fullmatch(HEAD_SCOPE, head) and not re.fullmatch(STEM_SCOPE, head)
