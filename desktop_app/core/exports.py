"""Exports: a trained run → a verified ``.outpost.zip`` per format, recorded in the workspace."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any, cast

from sqlalchemy import select

from desktop_app.core.models import Dataset, DatasetVersion, Export
from desktop_app.core.training import resolve_run
from exporters.base import ExportError, ExportRequest, try_export
from exporters.package import build_package
from exporters.registry import default_registry
from runtimes.fileio import sha256_file
from runtimes.package import PACKAGE_SUFFIX, PackageReader


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def export_run(
    ws: Any, run_ref: str, formats: list[str], *, imgsz: int | None = None
) -> list[dict[str, Any]]:
    """Export a completed run to each format; failures are recorded and reported, not hidden."""
    from desktop_app.core.errors import NotFoundError

    run = resolve_run(ws, run_ref)
    if run.status != "completed" or not run.best_checkpoint:
        raise NotFoundError(f"run {run.id} is {run.status}, not completed; train it first")
    registry = default_registry()
    exporters = [registry.get(f) for f in formats]  # unknown formats fail before any work
    with ws.session() as s:
        version = s.get(DatasetVersion, run.dataset_version_id)
        dataset = s.get(Dataset, version.dataset_id)
        provenance = {
            "dataset": dataset.name,
            "dataset_version": f"v{version.number}",
            "dataset_hash": version.content_hash,
            "run_id": run.id,
            "metrics": {k: float(v) for k, v in run.final_metrics.items()},
        }
        dataset_name = dataset.name
    size = int(imgsz or run.params.get("imgsz") or 640)
    results = []
    for exporter in exporters:
        key = exporter.capability.key
        export_id = "exp-" + uuid.uuid4().hex[:10]
        export_dir = Path(ws.root) / "exports" / export_id
        build_dir = export_dir / "build"
        name = _slug(f"{dataset_name}-{Path(run.model).stem}")
        package_path = export_dir / f"{name}-{key}{PACKAGE_SUFFIX}"
        record: dict[str, Any] = {"id": export_id, "run_id": run.id, "format": key}
        try:
            artifact = try_export(
                exporter,
                ExportRequest(
                    checkpoint=ws.resolve(run.best_checkpoint),
                    framework=run.framework,
                    task=run.task,
                    imgsz=size,
                    out_dir=build_dir,
                    options={"config_dir": str(Path(ws.root) / "yolo_config")},
                ),
            )
            manifest = build_package(
                artifact,
                name=name,
                version=export_id,
                out_path=package_path,
                framework=run.framework,
                task=run.task,
                provenance=provenance,
            )
            with PackageReader(package_path) as reader:
                reader.verify()
            shutil.rmtree(build_dir, ignore_errors=True)
            record.update(
                status="completed",
                package=str(package_path),
                sha256=sha256_file(package_path),
                seconds=artifact.seconds,
                manifest=manifest.model_dump(mode="json"),
            )
        except ExportError as exc:
            shutil.rmtree(export_dir, ignore_errors=True)
            record.update(status="failed", error=str(exc))
        with ws.session() as s:
            s.add(
                Export(
                    id=export_id,
                    run_id=run.id,
                    format=key,
                    status=record["status"],
                    package_path=ws.relative(record["package"]) if record.get("package") else None,
                    package_sha256=record.get("sha256"),
                    manifest=record.get("manifest", {}),
                    details={"seconds": record.get("seconds"), "imgsz": size},
                    error=record.get("error"),
                )
            )
        record.pop("manifest", None)
        results.append(record)
    return results


def get_export(ws: Any, export_ref: str) -> Export:
    """An export by id, or ``latest`` for the newest completed one."""
    from desktop_app.core.errors import NotFoundError

    with ws.session() as s:
        if export_ref == "latest":
            exp = s.scalars(
                select(Export)
                .where(Export.status == "completed")
                .order_by(Export.created_at.desc())
            ).first()
        else:
            exp = s.get(Export, export_ref)
        if exp is None:
            raise NotFoundError(f"no export {export_ref!r}; list them with: outpost exports list")
        s.expunge(exp)
        return cast(Export, exp)


def list_exports(ws: Any) -> list[dict[str, Any]]:
    with ws.session() as s:
        return [
            {
                "id": e.id,
                "run_id": e.run_id,
                "format": e.format,
                "status": e.status,
                "package": str(ws.resolve(e.package_path)) if e.package_path else None,
                "error": e.error,
                "created_at": e.created_at.isoformat() if e.created_at else None,
            }
            for e in s.scalars(select(Export).order_by(Export.created_at))
        ]
