"""``outpost export RUN --format torchscript,openvino``: packages, parity numbers, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exporters.validation import TOLERANCES
from runtimes.package import PackageReader
from runtimes.predictor import Predictor
from runtimes.preprocess import letterbox, read_image, to_tensor
from tests.e2e.conftest import DemoRun, run_outpost

pytest.importorskip("ultralytics")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exports(demo_run: DemoRun) -> list[dict]:
    proc = run_outpost(
        "export",
        demo_run.summary["run"]["id"],
        "--format",
        "torchscript,openvino,openvino:fp16",
        "--workspace",
        str(demo_run.workspace),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_each_format_is_exported_and_within_parity_tolerance(exports: list[dict]) -> None:
    assert [(e["format"], e["precision"]) for e in exports] == [
        ("torchscript", "fp32"),
        ("openvino", "fp32"),
        ("openvino", "fp16"),
    ]
    for e in exports:
        assert e["status"] == "completed", e
        v = e["validation"]
        assert v["passed"] and v["images"] > 0 and v["runtime"] == e["format"]
        tol = v["tolerance"]
        assert v["raw_max_box_deviation_px"] <= tol["max_box_px"]
        assert v["raw_max_score_deviation"] <= tol["max_score"]
        assert v["match_ratio"] >= tol["min_match_ratio"]
        with PackageReader(Path(e["package"])) as reader:
            reader.verify()
            manifest = reader.manifest
        assert manifest.format.key == e["format"] and manifest.model.precision == e["precision"]
        assert manifest.format.details["validation"] == v  # the package carries its numbers
    assert set(PackageReader(Path(exports[1]["package"])).manifest.files) >= {
        "model.xml",
        "model.bin",
    }


def test_exports_list_shows_precision_and_parity(demo_run: DemoRun, exports: list[dict]) -> None:
    from desktop_app.core.exports import list_exports
    from desktop_app.core.workspace import Workspace

    with Workspace.open(demo_run.workspace) as ws:
        rows = {r["id"]: r for r in list_exports(ws)}
    for e in exports:
        assert rows[e["id"]]["precision"] == e["precision"]
        assert rows[e["id"]]["validation"]["passed"] is True


def test_predict_through_each_runtime(demo_run: DemoRun, exports: list[dict]) -> None:
    image = read_image(
        sorted((Path(demo_run.summary["dataset"]["path"]) / "images").glob("*.jpg"))[0]
    )
    onnx_package = Path(demo_run.summary["export"]["package"])
    reference = Predictor.from_path(onnx_package)
    padded, _ = letterbox(image, reference.input_hw)
    tensor = to_tensor(padded)
    expected = reference.backend.run(tensor)
    reference.close()
    cases = [(Path(e["package"]), e["format"], e["precision"]) for e in exports]
    cases.append((onnx_package, "openvino", "fp32"))
    for package, runtime, precision in cases:
        predictor = Predictor.from_path(package, runtime=runtime)
        try:
            raw = predictor.backend.run(tensor)
            dets, timing = predictor.predict(image)
        finally:
            predictor.close()
        assert predictor.backend.key == runtime
        # the same raw head layout and values as ONNX Runtime, so one postprocess serves all
        assert raw.shape == expected.shape
        tol = TOLERANCES[precision]  # fp16 runs at the CPU's reduced precision (bf16)
        np.testing.assert_allclose(raw[:, :4], expected[:, :4], atol=max(1e-2, tol.max_box_px))
        np.testing.assert_allclose(raw[:, 4:], expected[:, 4:], atol=tol.max_score)
        assert timing.inference_ms > 0 and dets.class_names == reference.class_names
    image_path = sorted((Path(demo_run.summary["dataset"]["path"]) / "images").glob("*.jpg"))[0]
    proc = run_outpost(
        "predict", exports[1]["package"], str(image_path), "--runtime", "openvino", "--json"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["runtime"] == "openvino"


def test_unknown_format_and_wrong_runtime_error_cleanly(
    demo_run: DemoRun, exports: list[dict]
) -> None:
    from desktop_app.core.exports import export_run
    from desktop_app.core.workspace import Workspace
    from exporters.base import ExportError
    from runtimes.errors import PackageError

    before = set((demo_run.workspace / "exports").iterdir())
    with Workspace.open(demo_run.workspace) as ws:
        with pytest.raises(ExportError, match="unknown export format 'nosuch'"):
            export_run(ws, "latest", ["onnx", "nosuch"])
        with pytest.raises(ExportError, match="torchscript export has no fp16 precision"):
            export_run(ws, "latest", ["torchscript:fp16"])
    assert set((demo_run.workspace / "exports").iterdir()) == before  # refused before any work
    with pytest.raises(PackageError, match="cannot run format torchscript"):
        Predictor.from_path(Path(exports[0]["package"]), runtime="openvino")


def test_absent_toolchain_gives_needs_error_and_no_files(demo_run: DemoRun, tmp_path: Path) -> None:
    # As on a machine without OpenVINO: the child process sees no ``openvino`` module.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text("import sys\nsys.modules['openvino'] = None\n")
    ws = demo_run.workspace
    before = set((ws / "exports").iterdir())
    proc = run_outpost(
        "export",
        "latest",
        "--format",
        "openvino",
        "--workspace",
        str(ws),
        "--json",
        env={"PYTHONPATH": f"{shadow}:{Path(__file__).resolve().parents[2]}"},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    [record] = json.loads(proc.stdout)
    assert record["status"] == "failed"
    assert "openvino export needs openvino" in record["error"]
    assert "outpost[openvino]" in record["error"]
    assert set((ws / "exports").iterdir()) == before  # no half-written files
