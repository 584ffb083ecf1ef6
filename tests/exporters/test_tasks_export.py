"""Segment, pose and classify exports: tiny real Ultralytics models, exported and run by our
runtimes, against Ultralytics ``predict`` on the same images.

The models are built from their YAML (no download, no training); their batch-norm layers get
random scales so the outputs depend on the image, and the class bias is raised so NMS keeps
dozens of boxes: the comparison covers real detections, masks, keypoints and probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.base import ExportError, ExportRequest, try_export
from exporters.package import build_package
from exporters.registry import default_registry
from exporters.validation import validate_package
from runtimes.detections import rle_to_mask
from runtimes.package import PackageReader
from runtimes.predictor import Predictor
from runtimes.preprocess import read_image

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
cv2 = pytest.importorskip("cv2")

IMGSZ = 64
YAMLS = {"segment": "yolo11n-seg.yaml", "pose": "yolo11n-pose.yaml", "classify": "yolo11n-cls.yaml"}


def tiny_checkpoint(task: str, folder: Path, config_dir: Path) -> Path:
    """A random-weight Ultralytics checkpoint of ``task`` whose outputs vary with the image."""
    from runtimes.offline import apply_offline_env

    apply_offline_env(config_dir)
    from ultralytics import YOLO  # type: ignore[attr-defined]

    torch.manual_seed(0)  # the weights YOLO initialises come from torch's global generator
    model: Any = YOLO(YAMLS[task])
    head = model.model.model[-1]
    with torch.no_grad():
        for module in model.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0.0, 0.5)
        if task == "classify":
            head.linear.weight.mul_(30)
        else:
            for branch in head.cv3:
                branch[-1].bias.fill_(1.0)
    path = folder / f"{task}.pt"
    model.save(str(path))
    return path


def sample_images(folder: Path, n: int = 3) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = rng.integers(0, 255, (48 + 8 * i, 80, 3), dtype=np.uint8)
        cv2.rectangle(img, (10, 10), (40, 40), (255, 255, 255), -1)
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def export_built(
    task: str, fmt: str, tmp_path: Path, precision: str = "fp32", package_name: str | None = None
) -> dict[str, Any]:
    """Train a tiny ``task`` checkpoint, export it to ``fmt`` (calibrated on the sample images)
    and package it: the artifact, package, checkpoint, images and config folder."""
    config_dir = tmp_path / "cfg"
    checkpoint = tiny_checkpoint(task, tmp_path, config_dir)
    images = sample_images(tmp_path)
    artifact = try_export(
        default_registry().get(fmt),
        ExportRequest(
            checkpoint,
            "ultralytics",
            task,
            IMGSZ,
            tmp_path / "build",
            precision,
            {"config_dir": str(config_dir), "calibration_images": [str(p) for p in images]},
        ),
    )
    package = tmp_path / (package_name or f"{task}.outpost.zip")
    build_package(
        artifact,
        name=task,
        version="1",
        out_path=package,
        framework="ultralytics",
        task=task,
        provenance={},
    )
    return {
        "artifact": artifact,
        "package": package,
        "checkpoint": checkpoint,
        "images": images,
        "config_dir": config_dir,
    }


def export_package(
    task: str, fmt: str, tmp_path: Path, precision: str = "fp32"
) -> tuple[Path, Path, list[Path]]:
    out = export_built(task, fmt, tmp_path, precision)
    return out["package"], out["checkpoint"], out["images"]


def _parity(task: str, fmt: str, tmp_path: Path) -> dict[str, Any]:
    package, checkpoint, images = export_package(task, fmt, tmp_path)
    with PackageReader(package) as reader:
        spec = reader.manifest.model
    assert spec.task == task
    report = validate_package(
        package,
        checkpoint,
        images,
        precision="fp32",
        conf=None if task == "classify" else 0.001,
        config_dir=tmp_path / "cfg",
    )
    numbers = report.as_dict()
    assert report.passed, numbers["failures"]
    return {"numbers": numbers, "package": package, "images": images, "spec": spec}


def test_segment_onnx_matches_ultralytics(tmp_path: Path) -> None:
    out = _parity("segment", "onnx", tmp_path)
    n = out["numbers"]
    assert out["spec"].postprocessing.kind == "yolo_segment"
    assert out["spec"].postprocessing.mask is not None
    assert n["reference_detections"] >= 5 and n["match_ratio"] >= 0.95
    assert n["mean_mask_iou"] is not None and n["mean_mask_iou"] >= 0.95
    assert n["raw_max_box_deviation_px"] < 0.01
    predictor = Predictor.from_path(out["package"])
    try:
        img = read_image(out["images"][1])
        dets, _ = predictor.predict(img, conf=0.001)
    finally:
        predictor.close()
    assert dets.masks is not None and dets.masks.shape == (len(dets), *img.shape[:2])
    assert dets.masks.reshape(len(dets), -1).any(axis=1).all()
    # every mask lies inside its box (cropped as Ultralytics), and survives the JSON round trip
    for box, mask in zip(dets.xyxy, dets.masks, strict=True):
        ys, xs = np.nonzero(mask)
        assert xs.min() >= np.floor(box[0]) - 1 and xs.max() <= np.ceil(box[2]) + 1
        assert ys.min() >= np.floor(box[1]) - 1 and ys.max() <= np.ceil(box[3]) + 1
    item = dets.to_list()[0]
    assert np.array_equal(rle_to_mask(item["mask"]), dets.masks[0])


def test_pose_onnx_matches_ultralytics(tmp_path: Path) -> None:
    out = _parity("pose", "onnx", tmp_path)
    n = out["numbers"]
    assert out["spec"].postprocessing.kind == "yolo_pose"
    assert out["spec"].postprocessing.kpt_shape == [17, 3]
    assert n["reference_detections"] >= 5 and n["match_ratio"] >= 0.95
    assert n["max_keypoint_deviation_px"] is not None and n["max_keypoint_deviation_px"] < 0.05
    assert n["raw_max_keypoint_deviation_px"] < 0.05
    predictor = Predictor.from_path(out["package"])
    try:
        img = read_image(out["images"][0])
        dets, _ = predictor.predict(img, conf=0.001)
    finally:
        predictor.close()
    assert dets.keypoints is not None and dets.keypoints.shape == (len(dets), 17, 3)
    h, w = img.shape[:2]
    assert (dets.keypoints[..., 0] <= w).all() and (dets.keypoints[..., 1] <= h).all()
    assert len(dets.to_list()[0]["keypoints"]) == 17


def test_classify_onnx_matches_ultralytics(tmp_path: Path) -> None:
    out = _parity("classify", "onnx", tmp_path)
    n = out["numbers"]
    assert out["spec"].postprocessing.kind == "classify"
    assert out["spec"].preprocessing.resize == "center_crop"
    assert n["top1_agreement"] == 1.0 and n["raw_top1_agreement"] == 1.0
    assert n["raw_max_score_deviation"] < 1e-4
    predictor = Predictor.from_path(out["package"])
    try:
        dets, _ = predictor.predict(read_image(out["images"][0]))
    finally:
        predictor.close()
    assert dets.probs is not None and abs(float(dets.probs.sum()) - 1.0) < 1e-3
    top = dets.top_k(5)
    assert len(top) == 5 and top[0]["confidence"] >= top[-1]["confidence"]
    assert top[0]["class_id"] == int(np.argmax(dets.probs)) and len(dets) == 0


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segment", "pose", "classify"])
@pytest.mark.parametrize("fmt", ["torchscript", "openvino"])
def test_other_formats_match_ultralytics(task: str, fmt: str, tmp_path: Path) -> None:
    pytest.importorskip("openvino") if fmt == "openvino" else None
    _parity(task, fmt, tmp_path)


def test_unsupported_task_is_refused_before_any_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not used")
    out = tmp_path / "build"
    request = ExportRequest(checkpoint, "ultralytics", "obb", IMGSZ, out)
    with pytest.raises(ExportError, match="does not support the obb task"):
        try_export(default_registry().get("onnx"), request)
    timm = ExportRequest(checkpoint, "timm", "detect", IMGSZ, out)
    with pytest.raises(ExportError, match="supports classify only"):
        try_export(default_registry().get("openvino"), timm)
    assert not out.exists()


def test_checkpoint_of_another_task_is_refused(tmp_path: Path) -> None:
    config_dir = tmp_path / "cfg"
    checkpoint = tiny_checkpoint("classify", tmp_path, config_dir)
    with pytest.raises(ExportError, match="is a classify model, not pose"):
        try_export(
            default_registry().get("onnx"),
            ExportRequest(
                checkpoint,
                "ultralytics",
                "pose",
                IMGSZ,
                tmp_path / "b",
                "fp32",
                {"config_dir": str(config_dir)},
            ),
        )
