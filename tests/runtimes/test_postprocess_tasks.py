"""Segment, pose and classify post-processing against Ultralytics' own functions, the
JSON-able masks (COCO RLE), and the additive manifest fields."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from runtimes.detections import Detections, mask_to_rle, rle_to_mask
from runtimes.package import ModelSpec
from runtimes.postprocess import (
    decode_yolo,
    decode_yolo_detect,
    postprocess_classify,
    postprocess_pose,
    process_masks,
    scale_keypoints,
    scale_masks,
)
from runtimes.predictor import center_crop
from runtimes.preprocess import letterbox

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")


def raw_head(nc: int, extra: int, anchors: int = 336, seed: int = 0) -> np.ndarray:
    """A raw YOLO head ``(1, 4 + nc + extra, anchors)``: xywh boxes inside a 64 px input,
    class scores in [0, 1], and extra columns (mask coefficients or keypoints)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(4, 60, (2, anchors))
    wh = rng.uniform(4, 30, (2, anchors))
    scores = rng.uniform(0, 1, (nc, anchors)) ** 3
    tail = rng.normal(0, 1, (extra, anchors))
    return np.concatenate([xy, wh, scores, tail])[None].astype(np.float32)


@pytest.mark.parametrize("extra", [0, 32, 51])
def test_decode_with_extra_columns_matches_ultralytics_nms(extra: int) -> None:
    from ultralytics.utils.nms import non_max_suppression

    nc = 3
    raw = raw_head(nc, extra)
    boxes, scores, cls, tail = decode_yolo(
        raw, conf_threshold=0.25, iou_threshold=0.7, max_det=300, extra=extra
    )
    theirs = non_max_suppression(torch.from_numpy(raw), 0.25, 0.7, nc=nc, max_det=300)[0].numpy()
    assert len(boxes) == len(theirs) > 10
    assert np.array_equal(boxes, theirs[:, :4])
    assert np.array_equal(scores, theirs[:, 4])
    assert np.array_equal(cls, theirs[:, 5].astype(np.int64))
    assert np.array_equal(tail, theirs[:, 6:])
    if extra == 0:  # the detection decoder is the same function
        plain = decode_yolo_detect(raw, conf_threshold=0.25, iou_threshold=0.7, max_det=300)
        assert all(np.array_equal(a, b) for a, b in zip(plain, (boxes, scores, cls), strict=True))


@pytest.mark.parametrize("orig_hw", [(48, 80), (100, 60), (64, 64), (20, 30), (1080, 1920)])
def test_masks_match_ultralytics_process_and_scale(orig_hw: tuple[int, int]) -> None:
    from ultralytics.utils.ops import process_mask
    from ultralytics.utils.ops import scale_masks as u_scale_masks

    rng = np.random.default_rng(1)
    protos = rng.normal(0, 1, (32, 16, 16)).astype(np.float32)
    coeffs = rng.normal(0, 1, (6, 32)).astype(np.float32)
    boxes = np.array(
        [
            [2, 3, 40, 50],
            [10, 10, 60, 30],
            [0, 0, 64, 64],
            [30.5, 8.2, 44.7, 63],
            [5, 40, 20, 60],
            [1, 1, 9, 9],
        ],
        np.float32,
    )
    ours_in = process_masks(protos, coeffs, boxes, (64, 64))
    theirs_in = process_mask(
        torch.from_numpy(protos),
        torch.from_numpy(coeffs),
        torch.from_numpy(boxes),
        (64, 64),
        upsample=True,
    ).numpy()
    assert ours_in.shape == theirs_in.shape == (6, 64, 64)
    # OpenCV's bilinear resize and torch's interpolate differ in the last float bits only:
    # a pixel may flip where the mask logit is ~0.
    assert (ours_in != theirs_in).mean() < 0.002
    _, info = letterbox(np.zeros((*orig_hw, 3), np.uint8), (64, 64))
    ours = scale_masks(theirs_in, info)
    theirs = u_scale_masks(torch.from_numpy(theirs_in)[None].float(), orig_hw)[0].numpy() > 0.5
    assert ours.shape == theirs.shape == (6, *orig_hw)
    assert (ours != theirs).mean() < 0.002
    assert ours.any()


def test_keypoints_match_ultralytics_scale_coords() -> None:
    from ultralytics.utils.ops import scale_coords

    rng = np.random.default_rng(2)
    kpts = np.concatenate(
        [rng.uniform(-5, 70, (4, 17, 2)), rng.uniform(0, 1, (4, 17, 1))], axis=2
    ).astype(np.float32)
    _, info = letterbox(np.zeros((48, 80, 3), np.uint8), (64, 64))
    ours = scale_keypoints(kpts, info)
    theirs = scale_coords((64, 64), torch.from_numpy(kpts.copy()), (48, 80)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.array_equal(ours[..., 2], kpts[..., 2])  # confidences untouched


def test_pose_postprocess_reshapes_and_scales() -> None:
    raw = raw_head(1, 17 * 3, seed=3)
    _, info = letterbox(np.zeros((32, 64, 3), np.uint8), (64, 64))
    dets = postprocess_pose(
        raw,
        info,
        ("person",),
        kpt_shape=(17, 3),
        conf_threshold=0.25,
        iou_threshold=0.7,
        max_det=50,
    )
    assert dets.keypoints is not None and dets.keypoints.shape == (len(dets), 17, 3) and len(dets)
    assert (dets.keypoints[..., 0] <= 64).all() and (dets.keypoints[..., 1] <= 32).all()
    item = dets.to_list()[0]
    assert len(item["keypoints"]) == 17 and len(item["keypoints"][0]) == 3


def test_classify_probabilities_and_top_k() -> None:
    names = ("cat", "dog", "fox")
    dets = postprocess_classify(np.array([[0.2, 0.7, 0.1]], np.float32), names)
    assert len(dets) == 0 and dets.to_list() == []
    assert [c["class_name"] for c in dets.top_k(2)] == ["dog", "cat"]
    logits = postprocess_classify(np.array([[1.0, 3.0, -2.0]], np.float32), names)
    assert logits.probs is not None and abs(float(logits.probs.sum()) - 1.0) < 1e-6
    assert logits.top_k(1)[0]["class_id"] == 1
    with pytest.raises(ValueError, match="3 values for 2 classes"):
        postprocess_classify(np.zeros((1, 3), np.float32), names[:2])


def test_center_crop_matches_torchvision_geometry() -> None:
    from PIL import Image
    from torchvision import transforms as T

    rng = np.random.default_rng(4)
    img = rng.integers(0, 255, (40, 90, 3), dtype=np.uint8)
    ours, _ = center_crop(img, (64, 64))
    theirs = np.asarray(T.CenterCrop(64)(T.Resize(64)(Image.fromarray(img))))
    assert ours.shape == theirs.shape == (64, 64, 3)
    # upscaling: both bilinear, so the crops agree to within rounding
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 1.5


def test_rle_round_trip_matches_pycocotools() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(5)
    for mask in (rng.uniform(0, 1, (7, 11)) > 0.6, np.ones((3, 4), bool), np.zeros((2, 5), bool)):
        rle = mask_to_rle(mask)
        assert np.array_equal(rle_to_mask(rle), mask)
        coco = mask_utils.frPyObjects(rle, *rle["size"])
        assert np.array_equal(mask_utils.decode(coco).astype(bool), mask)


def _column_major_rle(mask: np.ndarray) -> dict[str, Any]:
    """The RLE read straight off the whole mask in column-major order (the reference)."""
    flat = mask.ravel(order="F")
    if not flat.size:
        return {"size": list(mask.shape), "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def test_rle_of_the_masks_box_equals_the_whole_masks() -> None:
    """mask_to_rle reads only the box around a mask's pixels: runs that touch the top or bottom
    row, span whole columns, or start the mask or end it come out as over the whole mask."""
    rng = np.random.default_rng(6)
    for _ in range(3000):
        pixels = rng.uniform(0, 1, (int(rng.integers(0, 7)), int(rng.integers(0, 7))))
        pixels = pixels < rng.uniform()
        if pixels.size and rng.uniform() < 0.3:  # a solid corner block: whole columns
            pixels[:] = False
            pixels[rng.integers(0, pixels.shape[0]) :, rng.integers(0, pixels.shape[1]) :] = True
        # on a canvas up to 4x its size (a small box is read alone), touching its edges or not
        top, left = (int(v) for v in rng.integers(0, 4, 2) * rng.integers(0, 2, 2))
        bottom, right = (int(v) for v in rng.integers(0, 4, 2) * rng.integers(0, 2, 2))
        mask = np.zeros((top + pixels.shape[0] + bottom, left + pixels.shape[1] + right), bool)
        mask[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        assert mask_to_rle(mask) == _column_major_rle(mask), mask.astype(int)
    big = np.zeros((3000, 4000), bool)
    big[1000:1200, 500:800] = rng.uniform(0, 1, (200, 300)) < 0.9
    assert mask_to_rle(big) == _column_major_rle(big)


def test_detections_check_task_field_shapes() -> None:
    empty = Detections.empty(("a",))
    with pytest.raises(ValueError, match="masks must be"):
        Detections(empty.xyxy, empty.confidence, empty.class_id, masks=np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="keypoints must be"):
        Detections(empty.xyxy, empty.confidence, empty.class_id, keypoints=np.zeros((2, 17, 3)))


def test_old_detection_manifest_still_loads_and_new_fields_are_optional() -> None:
    spec = {
        "framework": "ultralytics",
        "architecture": "yolo11n",
        "class_names": ["a"],
        "input": {"name": "images", "shape": [1, 3, 64, 64]},
    }
    old = ModelSpec.model_validate(spec)
    assert old.task == "detect" and old.postprocessing.kind == "yolo_detect"
    assert old.postprocessing.kpt_shape is None and old.postprocessing.mask is None
    pose = ModelSpec.model_validate(
        {**spec, "task": "pose", "postprocessing": {"kind": "yolo_pose", "kpt_shape": [17, 3]}}
    )
    assert pose.postprocessing.kpt_shape == [17, 3]
    seg = ModelSpec.model_validate(
        {
            **spec,
            "task": "segment",
            "postprocessing": {"kind": "yolo_segment", "mask": {"channels": 32}},
        }
    )
    assert seg.postprocessing.mask is not None and seg.postprocessing.mask.output == 1
    cls = ModelSpec.model_validate(
        {
            **spec,
            "task": "classify",
            "preprocessing": {"resize": "center_crop"},
            "postprocessing": {"kind": "classify", "output_layout": "class_probs"},
        }
    )
    assert cls.preprocessing.resize == "center_crop"
