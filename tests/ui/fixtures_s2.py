"""Fixtures for the training, experiments, export and devices pages.

``seed_runs`` records finished runs with per-epoch metrics (as the trainer's events leave
them); ``add_fake_export`` records an export whose package holds the small fake ONNX
detector of ``tests.fakes`` (fixed boxes: circle 0.9 and square 0.8), so evaluation,
prediction, deployment and inference run for real without training a model.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop_app.core import datasets
from desktop_app.core.demo import LocalAgent
from desktop_app.core.models import Export, RunMetric, TrainingRun
from desktop_app.core.workspace import Workspace
from runtimes.fileio import sha256_file
from tests.fakes import make_image_bytes, make_package

RUNS = {
    "run-alpha": {
        "params": {"model": "yolo11n.yaml", "epochs": 3, "imgsz": 64, "lr0": 0.01, "batch": 8},
        "tags": ["baseline"],
        "notes": "alpha baseline",
        "map": [0.10, 0.20, 0.30],
        "loss": [2.0, 1.5, 1.2],
    },
    "run-beta": {
        "params": {"model": "yolo11n.yaml", "epochs": 3, "imgsz": 64, "lr0": 0.002, "batch": 8},
        "tags": ["low-lr"],
        "notes": None,
        "map": [0.05, 0.15, 0.35],
        "loss": [2.2, 1.6, 1.1],
    },
}


def seed_runs(ws: Workspace, status: str = "completed") -> list[str]:
    """Two finished runs of the ``shapes`` dataset with three epochs of metrics each."""
    with ws.session() as s:
        _, version = datasets.find_version(s, "shapes")
        for run_id, spec in RUNS.items():
            maps: list[float] = spec["map"]  # type: ignore[assignment]
            losses: list[float] = spec["loss"]  # type: ignore[assignment]
            s.add(
                TrainingRun(
                    id=run_id,
                    project_id=ws.default_project_id(),
                    dataset_version_id=version.id,
                    framework="ultralytics",
                    task="detect",
                    model="yolo11n.yaml",
                    status=status,
                    params=spec["params"],
                    run_dir=f"runs/{run_id}",
                    final_metrics={"metrics/mAP50-95(B)": maps[-1], "train/box_loss": losses[-1]},
                    tags=spec["tags"],
                    notes=spec["notes"],
                )
            )
            for epoch, (m, loss) in enumerate(zip(maps, losses, strict=True), start=1):
                s.add(RunMetric(run_id=run_id, epoch=epoch, key="metrics/mAP50-95(B)", value=m))
                s.add(RunMetric(run_id=run_id, epoch=epoch, key="train/box_loss", value=loss))
    return list(RUNS)


def add_fake_export(
    ws: Workspace,
    export_id: str,
    run_id: str,
    *,
    details: dict[str, Any] | None = None,
    status: str = "completed",
    package: Path | None = None,
) -> Path:
    """Record an ONNX export of ``run_id`` whose package is the fake detector (or a copy of
    ``package``)."""
    folder = Path(ws.root) / "exports" / export_id
    folder.mkdir(parents=True)
    if package is None:
        package = make_package(folder / f"shapes-{export_id}.outpost.zip", name="shapes")
    else:
        package = Path(shutil.copy2(package, folder / package.name))
    with zipfile.ZipFile(package) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    with ws.session() as s:
        s.add(
            Export(
                id=export_id,
                run_id=run_id,
                format="onnx",
                status=status,
                package_path=ws.relative(package),
                package_sha256=sha256_file(package),
                manifest=manifest,
                details=details or {"precision": "fp32"},
            )
        )
    return package


def write_image(path: Path) -> Path:
    """A 64 x 64 PNG (the fake detector's input size: its boxes land where expected)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_image_bytes(64, 64, ".png"))
    return path


@pytest.fixture
def s2_ctx(qtbot: Any, sample_ws: Workspace, studio_config: Path) -> Iterator[Any]:
    """A Studio context over the sample workspace; background work is awaited at the end."""
    from desktop_app.ui.context import StudioContext

    ctx = StudioContext(sample_ws)
    yield ctx
    ctx.wait()


@pytest.fixture
def local_agent(tmp_path: Path) -> Iterator[LocalAgent]:
    """A real ``outpost-agent serve`` process advertising on 127.0.0.1 only."""
    agent = LocalAgent(tmp_path / "agent", tmp_path / "agent.log")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
