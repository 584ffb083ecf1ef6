"""Workspace rows tests need around a package: a training run and its completed export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop_app.core import datasets
from desktop_app.core.models import Export, TrainingRun


def record_export(
    ws: Any,
    package: Path,
    *,
    export_id: str = "exp1",
    version: str = "1",
    dataset: str = "shapes",
    model_name: str = "shapes",
    run_id: str = "run1",
) -> Path:
    """Add run ``run_id`` (of the dataset's latest version, made once) and a completed ONNX
    export ``export_id`` of ``package``; the package path."""
    with ws.session() as s:
        if s.get(TrainingRun, run_id) is None:
            s.add(
                TrainingRun(
                    id=run_id,
                    project_id=ws.default_project_id(),
                    dataset_version_id=datasets.get_version(ws, dataset).id,
                    framework="ultralytics",
                    task="detect",
                    model="yolo11n",
                    run_dir=f"runs/{run_id}",
                )
            )
            s.flush()
        s.add(
            Export(
                id=export_id,
                run_id=run_id,
                format="onnx",
                status="completed",
                package_path=str(package),
                manifest={"name": model_name, "version": version},
            )
        )
    return package
