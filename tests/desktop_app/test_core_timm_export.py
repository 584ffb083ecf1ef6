"""A timm run exported from the workspace: one package per format, or one package holding
several formats (``--bundle-formats``), each validated against the PyTorch checkpoint and
recorded as an export version."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from desktop_app import cli
from desktop_app.core import datasets
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.exports import export_run, list_exports, set_default_export
from desktop_app.core.models import TrainingRun
from desktop_app.core.workspace import Workspace
from exporters.base import ExportError
from runtimes.package import PackageReader

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

from tests.exporters.test_timm_export import class_images, timm_checkpoint  # noqa: E402

IMGSZ = 40


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A workspace holding a completed timm run (checkpoint and materialized class folders)."""
    source = tmp_path / "shapes"
    write_sample_dataset(source, seed=3, count=4, size=48)
    workspace = Workspace.open(tmp_path / "ws")
    datasets.import_yolo(workspace, source, "shapes")
    run_dir = Path(workspace.root) / "runs" / "run-timm"
    (run_dir / "train" / "weights").mkdir(parents=True)
    checkpoint = timm_checkpoint(run_dir / "train" / "weights", imgsz=IMGSZ)
    class_images(run_dir / "data")
    shutil.copytree(run_dir / "data" / "val", run_dir / "data" / "train")
    with workspace.session() as s:
        _, version = datasets.find_version(s, "shapes")
        s.add(
            TrainingRun(
                id="run-timm",
                project_id=workspace.default_project_id(),
                dataset_version_id=version.id,
                framework="timm",
                task="classify",
                model="resnet10t",
                status="completed",
                params={"imgsz": IMGSZ},
                run_dir="runs/run-timm",
                best_checkpoint=workspace.relative(checkpoint),
                final_metrics={"metrics/accuracy_top1": 0.5},
                created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
            )
        )
    return workspace


def test_timm_run_exports_to_onnx_with_parity_and_accuracy(ws: Workspace) -> None:
    (record,) = export_run(ws, "run-timm", ["onnx"])
    assert record["status"] == "completed", record.get("error")
    validation = record["validation"]
    assert validation["task"] == "classify" and validation["top1_agreement"] == 1.0
    assert validation["max_prob_deviation"] <= 1e-4
    accuracy = validation["accuracy"]
    assert accuracy["metric"] == "top1" and accuracy["export"] == accuracy["pytorch"]
    assert record["latency"]["p50_ms"] > 0
    with PackageReader(Path(record["package"])) as reader:
        reader.verify()
        manifest = reader.manifest
    assert manifest.model.framework == "timm"
    assert manifest.model.preprocessing.interpolation == "pil_bilinear"
    assert manifest.format.details["validation"]["passed"]
    assert "wrappers/python/outpost_predict.py" in manifest.files
    # Nothing but the package (and its digests, for pushes) is left in the export's folder.
    name = Path(record["package"]).name
    assert sorted(p.name for p in Path(record["package"]).parent.iterdir()) == [
        name,
        name + ".digests.json",
    ]
    row = set_default_export(ws, record["id"])
    assert row["default"] and row["format"] == "onnx"


@pytest.mark.slow
def test_bundle_formats_make_one_package_and_one_record(
    ws: Workspace, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("openvino")
    args = ["export", "run-timm", "--format", "onnx,openvino:fp16", "--bundle-formats"]
    assert cli.main([*args, "--workspace", str(ws.root), "--json"]) == 0
    (record,) = json.loads(capfd.readouterr().out)
    assert record["status"] == "completed", record.get("error")
    assert record["bundle"] == ["onnx", "openvino"]
    assert [(f["format"], f["precision"]) for f in record["formats"]] == [
        ("onnx", "fp32"),
        ("openvino", "fp16"),
    ]
    assert all(f["validation"]["top1_agreement"] == 1.0 for f in record["formats"])
    with PackageReader(Path(record["package"])) as reader:
        manifest = reader.manifest
    assert [s.key for s in manifest.all_formats()] == ["onnx", "openvino"]
    assert manifest.format_for("openvino").details["precision"] == "fp16"
    assert manifest.format_for("openvino").details["validation"]["precision"] == "fp16"
    (row,) = list_exports(ws, run="run-timm")
    assert row["id"] == record["id"] and row["status"] == "completed"


def test_bundle_refuses_a_format_twice_before_any_work(ws: Workspace) -> None:
    with pytest.raises(ExportError, match="onnx is asked for twice"):
        export_run(ws, "run-timm", ["onnx", "onnx"], bundle=True)
    assert not any((Path(ws.root) / "exports").glob("*"))


def test_bundle_with_a_failing_format_keeps_nothing(ws: Workspace) -> None:
    """timm has no TensorRT engine path: the whole bundle fails, no package is kept."""
    (record,) = export_run(ws, "run-timm", ["tensorrt", "onnx"], bundle=True)
    assert record["status"] == "failed"
    assert record["error"].startswith("tensorrt: ")
    assert not any((Path(ws.root) / "exports").glob("*/*.outpost.zip"))
