"""``outpost export RUN --format onnx:fp16 --for-tensorrt``: a really trained tiny run shipped as
an ONNX package (format key ``onnx``) whose manifest asks the device to build an fp16 TensorRT
engine (``format.details.tensorrt_build``), validated like any ONNX export and runnable as plain
ONNX where TensorRT is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from desktop_app.cli import main
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.exports import list_exports
from desktop_app.core.workspace import Workspace
from exporters.formats.tensorrt import DEFAULT_WORKSPACE_MB, tensorrt_build_request
from runtimes.backends.onnxruntime import TENSORRT
from runtimes.backends.onnxruntime import tensorrt_build_request as runtime_build_request
from runtimes.package import PackageReader
from runtimes.predictor import Predictor
from runtimes.preprocess import read_image

pytest.importorskip("torch")
pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # trains a real model (1 epoch at 64 px) and exports it


def _cli_json(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, object]:
    """Run the CLI with ``--json``; its JSON document follows any progress lines it printed."""
    capfd.readouterr()
    code = main([*args, "--json"])
    lines = capfd.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line in ("{", "[") or line[:1] in "{[")
    return code, json.loads("\n".join(lines[start:]))


def test_for_tensorrt_ships_onnx_asking_the_device_for_an_fp16_engine(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ws_path = tmp_path / "ws"
    source = tmp_path / "shapes"
    write_sample_dataset(source, seed=2, count=6, size=64)
    common = ["--workspace", str(ws_path)]
    code, _ = _cli_json(["dataset", "import", str(source), "--name", "shapes", *common], capfd)
    assert code == 0
    code, run = _cli_json(
        ["train", "--dataset", "shapes", "--epochs", "1", "--imgsz", "64", "--batch", "4"]
        + ["--workers", "0", "--device", "cpu", *common],
        capfd,
    )
    assert code == 0 and isinstance(run, dict), run

    code, results = _cli_json(
        ["export", "latest", "--format", "onnx:fp16", "--for-tensorrt", *common], capfd
    )
    assert isinstance(results, list) and len(results) == 1, results
    (record,) = results
    assert code == 0 and record["status"] == "completed", record.get("error")
    assert record["precision"] == "fp16"
    assert record["validation"]["passed"] is True

    package = Path(record["package"])
    with PackageReader(package) as reader:
        reader.verify()
        manifest = reader.manifest
        folder = tmp_path / "extracted"
        reader.extract(folder)
    assert manifest.format.key == "onnx"
    assert manifest.format.file.endswith(".onnx")
    assert manifest.format.details["tensorrt_build"] == tensorrt_build_request(
        True, DEFAULT_WORKSPACE_MB
    )
    assert manifest.model.task == "detect"

    # The runtime reads the request from the manifest beside the model file; where TensorRT
    # is absent the same package runs as plain ONNX through ONNX Runtime's other providers.
    model_file = folder / manifest.format.file
    assert runtime_build_request(model_file) == manifest.format.details["tensorrt_build"]
    predictor = Predictor(folder, threads=1)
    try:
        assert predictor.backend.key == "onnxruntime"
        has_trt = TENSORRT in predictor.backend.active_providers
        assert predictor.backend.tensorrt_build == (
            manifest.format.details["tensorrt_build"] if has_trt else None
        )
        dets, timing = predictor.predict(read_image(sorted(source.glob("images/*"))[0]))
        assert timing.inference_ms > 0
        assert dets.xyxy.shape == (len(dets), 4)
        assert list(dets.class_names) == manifest.model.class_names
    finally:
        predictor.close()

    ws = Workspace.open(ws_path)
    try:
        stored = [e for e in list_exports(ws) if e["id"] == record["id"]]
    finally:
        ws.close()
    # The export record names the exporter that made it; the package itself is plain ONNX.
    assert len(stored) == 1 and stored[0]["format"] == record["format"] == "onnx-tensorrt"
    assert stored[0]["precision"] == "fp16"
