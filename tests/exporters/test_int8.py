"""OpenVINO INT8 (NNCF post-training quantization): a real tiny export calibrated on
images, and the refusals that come before any file is written."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.base import ExportError, ExportRequest, try_export
from exporters.formats.openvino import MAX_CALIBRATION_IMAGES, calibration_tensors
from exporters.package import build_package
from exporters.registry import default_registry
from exporters.validation import TOLERANCES, validate_package
from runtimes.package import PackageReader

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
pytest.importorskip("openvino")
cv2 = pytest.importorskip("cv2")

IMGSZ = 64


def detect_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A random-weight yolo11n detector whose outputs vary with the image."""
    from runtimes.offline import apply_offline_env

    config_dir = folder / "cfg"
    apply_offline_env(config_dir)
    from ultralytics import YOLO  # type: ignore[attr-defined]

    torch.manual_seed(0)  # the weights YOLO initialises come from torch's global generator
    model: Any = YOLO("yolo11n.yaml")
    with torch.no_grad():
        for module in model.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0.0, 0.5)
        for branch in model.model.model[-1].cv3:
            branch[-1].bias.fill_(1.0)
    path = folder / "detect.pt"
    model.save(str(path))
    return path, config_dir


def images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = rng.integers(0, 255, (56, 72, 3), dtype=np.uint8)
        cv2.circle(img, (20 + i, 30), 12, (255, 255, 255), -1)
        path = folder / f"cal{i}.jpg"
        cv2.imwrite(str(path), img)
        out.append(path)
    return out


def request(
    checkpoint: Path, out: Path, config_dir: Path, calibration: list[Path]
) -> ExportRequest:
    return ExportRequest(
        checkpoint,
        "ultralytics",
        "detect",
        IMGSZ,
        out,
        "int8",
        {"config_dir": str(config_dir), "calibration_images": [str(p) for p in calibration]},
    )


@pytest.mark.slow
def test_int8_export_is_quantized_and_within_int8_tolerance(tmp_path: Path) -> None:
    checkpoint, config_dir = detect_checkpoint(tmp_path)
    calibration = images(tmp_path, 8)
    artifact = try_export(
        default_registry().get("openvino"),
        request(checkpoint, tmp_path / "build", config_dir, calibration),
    )
    assert artifact.precision == "int8"
    assert artifact.details["quantized"] == "int8" and artifact.details["calibration_images"] == 8
    assert "nncf" in artifact.tools
    import openvino as ov

    model = ov.Core().read_model(str(artifact.model_file))
    types = {op.get_type_name() for op in model.get_ops()}
    assert "FakeQuantize" in types or "FakeConvert" in types  # int8 quantization nodes
    package = tmp_path / "m.outpost.zip"
    build_package(
        artifact,
        name="m",
        version="1",
        out_path=package,
        framework="ultralytics",
        task="detect",
        provenance={},
    )
    with PackageReader(package) as reader:
        assert reader.manifest.model.precision == "int8"
        assert reader.manifest.format.details["calibration_images"] == 8
    report = validate_package(
        package, checkpoint, calibration[:3], precision="int8", conf=0.001, config_dir=config_dir
    )
    numbers = report.as_dict()
    assert numbers["tolerance"] == {
        "min_match_ratio": 0.70,
        "max_box_px": 12.0,
        "max_score": 0.15,
        "min_mask_iou": 0.60,
        "max_map_drop": 0.05,
    }
    assert numbers["reference_detections"] >= 5
    assert report.passed, numbers["failures"]
    # looser than fp32 on purpose: quantization moves outputs, within the int8 tolerance
    assert numbers["raw_max_score_deviation"] <= TOLERANCES["int8"].max_score


def test_calibration_tensors_are_the_runtime_input(tmp_path: Path) -> None:
    from runtimes.preprocess import letterbox, read_image, to_tensor

    paths = images(tmp_path, 2)
    tensors = calibration_tensors(paths, IMGSZ, "detect")
    expected = to_tensor(letterbox(read_image(paths[0]), (IMGSZ, IMGSZ))[0])
    assert len(tensors) == 2 and np.array_equal(tensors[0], expected)
    assert calibration_tensors(paths, IMGSZ, "classify")[0].shape == (1, 3, IMGSZ, IMGSZ)
    assert MAX_CALIBRATION_IMAGES == 300


def test_int8_without_calibration_images_is_refused_before_any_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"unused")
    out = tmp_path / "build"
    with pytest.raises(ExportError, match="needs calibration images: the dataset version has none"):
        try_export(default_registry().get("openvino"), request(checkpoint, out, tmp_path, []))
    assert not out.exists()


def test_int8_without_nncf_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if nncf were not installed
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"unused")
    out = tmp_path / "build"
    with pytest.raises(ExportError, match=r"needs nncf: pip install 'outpost\[export\]'"):
        try_export(
            default_registry().get("openvino"),
            request(checkpoint, out, tmp_path, images(tmp_path, 1)),
        )
    assert not out.exists()


def test_format_without_its_toolchain_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if openvino were not installed
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"unused")
    out = tmp_path / "build"
    req = ExportRequest(checkpoint, "ultralytics", "detect", IMGSZ, out, "fp32")
    with pytest.raises(
        ExportError,
        match=r"openvino export needs openvino, not installed here; pip install 'outpost\[openvino\]'",
    ):
        try_export(default_registry().get("openvino"), req)
    assert not out.exists()


def test_int8_is_openvino_only(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"unused")
    req = ExportRequest(checkpoint, "ultralytics", "detect", IMGSZ, tmp_path / "b", "int8")
    with pytest.raises(ExportError, match="onnx export has no int8 precision"):
        try_export(default_registry().get("onnx"), req)
