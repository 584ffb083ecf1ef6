"""Real TFLite and CoreML exports in their toolchains (set up with ``outpost export setup``),
run by our runtimes and checked against the PyTorch model; skipped where a toolchain is not
set up. Tiny random-weight models from their YAML (no download, no training)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.toolenv import ToolEnv
from exporters.validation import TOLERANCES, validate_package
from runtimes.backends.litert import LiteRtBackend
from runtimes.package import PackageReader
from runtimes.predictor import Predictor
from runtimes.preprocess import read_image

pytest.importorskip("torch")
pytest.importorskip("ultralytics")

pytestmark = pytest.mark.slow
IMGSZ = 64


def _need(toolchain: str) -> None:
    if not ToolEnv.for_name(toolchain).exists():
        pytest.skip(f"the {toolchain} toolchain is not set up (outpost export setup {toolchain})")


def _need_litert_runtime() -> None:
    if not LiteRtBackend.probe().available:
        pytest.skip("ai-edge-litert is not installed (pip install 'outpost[litert]')")


def _export(
    task: str, fmt: str, tmp_path: Path, mp: pytest.MonkeyPatch, precision: str = "fp32"
) -> dict[str, Any]:
    from tests.exporters import test_tasks_export as tasks

    mp.setitem(tasks.YAMLS, "detect", "yolo11n.yaml")
    return tasks.export_built(task, fmt, tmp_path, precision, f"{task}-{fmt}.outpost.zip")


def _parity(out: dict[str, Any], task: str, precision: str) -> dict[str, Any]:
    report = validate_package(
        out["package"],
        out["checkpoint"],
        out["images"],
        precision=precision,
        conf=None if task == "classify" else 0.001,
        config_dir=out["config_dir"],
    )
    numbers: dict[str, Any] = report.as_dict()
    assert numbers["runtime"] == "litert"
    return numbers


def test_tflite_fp32_detect_matches_pytorch_and_predicts_from_the_cli(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _need("litert")
    _need_litert_runtime()
    out = _export("detect", "tflite", tmp_path, monkeypatch)
    artifact = out["artifact"]
    assert artifact.model_file.name == "model.tflite" and artifact.runtime == "litert"
    assert artifact.details["output_box_units"] == "normalized"
    assert artifact.tools["litert-torch"] and artifact.tools["ai-edge-quantizer"]
    with PackageReader(out["package"]) as reader:
        manifest = reader.manifest
    assert manifest.format.key == "tflite"
    assert manifest.model.postprocessing.box_units == "pixels"  # the runtime scales back
    numbers = _parity(out, "detect", "fp32")
    assert numbers["passed"], numbers["failures"]
    assert numbers["reference_detections"] >= 5 and numbers["match_ratio"] >= 0.95
    assert numbers["raw_max_box_deviation_px"] < 0.05  # pixels, not fractions of the input
    from desktop_app.cli import main

    code = main(
        ["--json", "predict", str(out["package"]), str(out["images"][0]), "--runtime", "litert"]
    )
    result = json.loads(capfd.readouterr().out)
    assert code == 0 and result["runtime"] == "litert"
    predictor = Predictor.from_path(out["package"])
    try:
        dets, _ = predictor.predict(read_image(out["images"][0]))
        assert predictor.backend.key == "litert"
        assert len(result["results"][0]["detections"]) == len(dets)
    finally:
        predictor.close()


def test_tflite_int8_is_calibrated_and_judged_by_its_own_tolerance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need("litert")
    _need_litert_runtime()
    out = _export("detect", "tflite", tmp_path, monkeypatch, "int8")
    details = out["artifact"].details
    assert details["quantized"] == "int8" and details["calibration_images"] == 3
    with zipfile.ZipFile(out["artifact"].model_file) as zf:  # head facts kept for the runtime
        assert json.loads(zf.read("metadata.json"))["task"] == "detect"
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(out["artifact"].model_file)).get_tensor_details()
    head = [t["dtype"] for t in tensors if ".modules.head." in t["name"]]
    # The head computes in float (only tensors at its int8 inputs stay quantized).
    assert head and sum(d == np.float32 for d in head) >= 0.9 * sum(
        d in (np.float32, np.int8) for d in head
    )
    numbers = _parity(out, "detect", "int8")
    assert numbers["tolerance"] == TOLERANCES["int8"].__dict__
    # A random-weight model's near-tied boxes may swap; the raw head must stay within INT8's
    # tolerance (the verdict itself is recorded either way, never hidden).
    assert numbers["raw_max_box_deviation_px"] <= TOLERANCES["int8"].max_box_px
    assert numbers["raw_max_score_deviation"] <= TOLERANCES["int8"].max_score
    assert numbers["passed"] == (not numbers["failures"])


@pytest.mark.parametrize("task", ["segment", "pose", "classify"])
def test_tflite_fp32_other_tasks_match_pytorch(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need("litert")
    _need_litert_runtime()
    out = _export(task, "tflite", tmp_path, monkeypatch)
    numbers = _parity(out, task, "fp32")
    assert numbers["passed"], numbers["failures"]
    if task == "segment":
        assert numbers["mean_mask_iou"] >= 0.95
    if task == "pose":
        assert numbers["raw_max_keypoint_deviation_px"] < 0.05
    if task == "classify":
        assert numbers["top1_agreement"] == 1.0
        assert out["artifact"].details["output_box_units"] == "pixels"


def test_coreml_converts_here_and_records_parity_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need("coreml")
    out = _export("detect", "coreml", tmp_path, monkeypatch, "fp16")
    artifact = out["artifact"]
    assert artifact.model_file.name == "model.mlpackage.zip"
    assert artifact.details["parity"]["status"] == "not_run"
    assert "macOS" in artifact.details["parity"]["reason"]
    assert artifact.details["compute_precision"] == "float16"
    assert artifact.tools["coremltools"] and artifact.tools["numpy"].startswith("2.3")
    with zipfile.ZipFile(artifact.model_file) as zf:
        names = zf.namelist()
    assert "model.mlpackage/Manifest.json" in names
    assert any(n.endswith("model.mlmodel") for n in names)
    with PackageReader(out["package"]) as reader:
        manifest = reader.manifest
    assert manifest.format.key == "coreml" and manifest.self_test is None  # no runtime here
