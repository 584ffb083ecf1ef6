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
from exporters.validation import validate_package, validation_images
from runtimes.errors import OutpostError
from runtimes.fileio import sha256_file
from runtimes.package import PACKAGE_SUFFIX, PackageReader


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def parse_formats(specs: list[str], precision: str | None = None) -> list[tuple[str, str]]:
    """``["onnx", "openvino:fp16"]`` → ``[("onnx", "fp32"), ("openvino", "fp16")]``.

    A ``:precision`` suffix wins over ``precision``; without either a format exports fp32.
    """
    parsed = []
    for spec in specs:
        key, _, prec = spec.strip().partition(":")
        parsed.append((key.strip().lower(), (prec or precision or "fp32").strip().lower()))
    return parsed


def _validation_images(
    ws: Any, run: Any, dataset_name: str, version_number: int, scratch: Path
) -> list[Path]:
    """The run's materialized validation images; rebuilt from the dataset version if gone."""
    from desktop_app.core.datasets import materialize_yolo

    images = validation_images(ws.resolve(run.run_dir) / "data" / "images" / "val")
    if images:
        return images
    materialize_yolo(ws, dataset_name, version_number, scratch)
    return validation_images(scratch / "images" / "val")


def export_run(
    ws: Any,
    run_ref: str,
    formats: list[str],
    *,
    imgsz: int | None = None,
    precision: str | None = None,
) -> list[dict[str, Any]]:
    """Export a completed run to each format and validate each against the PyTorch model.

    Each export ends ``completed`` (within its parity tolerance), ``failed_validation``
    (package kept, numbers recorded, not deployable as ``latest``) or ``failed`` (nothing
    kept). Failures are recorded and reported, not hidden.
    """
    from desktop_app.core.errors import NotFoundError

    run = resolve_run(ws, run_ref)
    if run.status != "completed" or not run.best_checkpoint:
        raise NotFoundError(f"run {run.id} is {run.status}, not completed; train it first")
    registry = default_registry()
    # Unknown formats and precisions fail before any work.
    jobs = [(registry.get(key), prec) for key, prec in parse_formats(formats, precision)]
    for exporter, prec in jobs:
        cap = exporter.capability
        if prec not in cap.precisions:
            raise ExportError(
                f"{cap.key} export has no {prec} precision (choose {', '.join(cap.precisions)})"
            )
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
        version_number = version.number
    size = int(imgsz or run.params.get("imgsz") or 640)
    checkpoint = ws.resolve(run.best_checkpoint)
    results = []
    for exporter, prec in jobs:
        key = exporter.capability.key
        export_id = "exp-" + uuid.uuid4().hex[:10]
        export_dir = Path(ws.root) / "exports" / export_id
        build_dir = export_dir / "build"
        name = _slug(f"{dataset_name}-{Path(run.model).stem}")
        suffix = key if prec == "fp32" else f"{key}-{prec}"
        package_path = export_dir / f"{name}-{suffix}{PACKAGE_SUFFIX}"
        record: dict[str, Any] = {
            "id": export_id,
            "run_id": run.id,
            "format": key,
            "precision": prec,
        }
        validation: dict[str, Any] | None = None
        try:
            artifact = try_export(
                exporter,
                ExportRequest(
                    checkpoint=checkpoint,
                    framework=run.framework,
                    task=run.task,
                    imgsz=size,
                    out_dir=build_dir,
                    precision=prec,
                    options={"config_dir": str(Path(ws.root) / "yolo_config")},
                ),
            )
            package_args: dict[str, Any] = {
                "name": name,
                "version": export_id,
                "out_path": package_path,
                "framework": run.framework,
                "task": run.task,
                "provenance": provenance,
            }
            build_package(artifact, **package_args)
            images = _validation_images(
                ws, run, dataset_name, version_number, export_dir / "valdata"
            )
            report = validate_package(
                package_path,
                checkpoint,
                images,
                precision=prec,
                config_dir=Path(ws.root) / "yolo_config",
            )
            validation = report.as_dict()
            # The package carries its own parity numbers: rebuild it with them.
            manifest = build_package(artifact, validation=validation, **package_args)
            with PackageReader(package_path) as reader:
                reader.verify()
            shutil.rmtree(build_dir, ignore_errors=True)
            shutil.rmtree(export_dir / "valdata", ignore_errors=True)
            record.update(
                status="completed" if report.passed else "failed_validation",
                package=str(package_path),
                sha256=sha256_file(package_path),
                seconds=artifact.seconds,
                validation=validation,
                manifest=manifest.model_dump(mode="json"),
            )
            if not report.passed:
                record["error"] = "outside parity tolerance: " + "; ".join(report.failures)
        except OutpostError as exc:
            shutil.rmtree(export_dir, ignore_errors=True)
            record.update(status="failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a library failure in validation: one line
            shutil.rmtree(export_dir, ignore_errors=True)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            record.update(status="failed", error=f"{key} export validation failed: {first}")
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
                    details={
                        "seconds": record.get("seconds"),
                        "imgsz": size,
                        "precision": prec,
                        "validation": validation,
                    },
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
                "precision": (e.details or {}).get("precision", "fp32"),
                "validation": (e.details or {}).get("validation"),
                "package": str(ws.resolve(e.package_path)) if e.package_path else None,
                "error": e.error,
                "created_at": e.created_at.isoformat() if e.created_at else None,
            }
            for e in s.scalars(select(Export).order_by(Export.created_at))
        ]
