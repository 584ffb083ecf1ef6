"""`outpost evaluate` and `outpost predict-batch` on the demo's real run and ONNX export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from desktop_app.core.dataset_sample import write_sample_dataset
from tests.e2e.conftest import DemoRun, run_outpost

# Our mAP50 (COCO: 101-point interpolation, ONNX runtime, square letterbox) against the
# run's own end-of-training validation (Ultralytics: continuous interpolation, PyTorch,
# rectangular batches) on the same val images: close, not equal.
MAP50_BOUND = 0.1


@pytest.fixture
def workspace(demo_run: DemoRun, tmp_path: Path) -> Path:
    """A private copy of the demo's workspace (the other end-to-end tests read the original)."""
    copy = tmp_path / "ws"
    shutil.copytree(demo_run.workspace, copy, ignore=shutil.ignore_patterns("demo-agent*"))
    return copy


def _outpost(workspace: Path, *args: str) -> Any:
    proc = run_outpost(*args, "--workspace", str(workspace), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_evaluate_the_demo_run(demo_run: DemoRun, workspace: Path) -> None:
    dataset = demo_run.summary["dataset"]["name"]
    ev = _outpost(workspace, "evaluate", "latest", "--dataset", dataset)
    assert ev["run_id"] == demo_run.summary["run"]["id"]
    assert ev["export_id"] == demo_run.summary["export"]["id"]
    assert (ev["dataset"], ev["version"], ev["split"]) == (dataset, "v1", "val")
    rows = {r["class"]: r for r in ev["per_class"]}
    assert set(rows) == {"circle", "square", "triangle"}
    assert sum(r["instances"] for r in rows.values()) == ev["metrics"]["instances"] > 0
    for r in rows.values():
        assert r["ap50"] is None or 0.0 <= r["ap50_95"] <= r["ap50"] <= 1.0
    ours = ev["metrics"]["map50"]
    theirs = demo_run.summary["run"]["metrics"]["metrics/mAP50(B)"]
    assert abs(ours - theirs) <= MAP50_BOUND, (ours, theirs)
    assert ev["details"]["run_metrics"]["metrics/mAP50(B)"] == pytest.approx(theirs)
    assert len(ev["details"]["confusion"]["matrix"]) == 4
    listed = _outpost(workspace, "evaluations", "list", "--run", "latest")
    assert [e["id"] for e in listed] == [ev["id"]]
    # A split the demo dataset does not have.
    proc = run_outpost(
        "evaluate", "latest", "--dataset", dataset, "--split", "test", "--workspace", str(workspace)
    )
    assert proc.returncode == 1 and "no labelled images in the test split" in proc.stderr


def test_predict_batch_to_prelabels_on_the_demo_run(
    demo_run: DemoRun, workspace: Path, tmp_path: Path
) -> None:
    dataset = demo_run.summary["dataset"]["name"]
    sample = tmp_path / "sample"
    write_sample_dataset(sample, seed=99, count=3, size=128)
    new = tmp_path / "more"
    new.mkdir()
    for i, image in enumerate(sorted((sample / "images").iterdir())):
        image.rename(new / f"extra_{i}{image.suffix}")  # names the demo dataset does not use
    _outpost(workspace, "dataset", "add-images", dataset, str(new))
    out = _outpost(
        workspace,
        "predict-batch",
        "latest",
        "--folder",
        str(new),
        "--conf",
        "0.01",
        "--to-prelabels",
        dataset,
        "--min-score",
        "0.01",
    )
    assert out["images"] == 3 and out["errors"] == []
    pre = out["prelabels"]
    assert pre["images"] == 3 and pre["unmatched"] == []
    assert pre["proposals"] <= out["detections"]
    items = _outpost(workspace, "dataset", "items", f"{dataset}@draft", "--status", "needs_review")
    assert len(items) == 3
    shown = _outpost(workspace, "predictions", "show", out["id"], "--limit", "2")
    assert len(shown["images_shown"]) == 2
    assert all(
        {"file", "sha256", "width", "height", "detections"} <= set(r) for r in shown["images_shown"]
    )
