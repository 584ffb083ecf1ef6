"""Exports: a trained run → a verified ``.outpost.zip`` per format, recorded in the workspace."""

from __future__ import annotations

import dataclasses
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
from sqlalchemy import delete, select

from desktop_app.core.models import Dataset, DatasetVersion, Deployment, Export
from desktop_app.core.training import resolve_run
from exporters.base import ExportError, ExportRequest, try_export
from exporters.package import build_package
from exporters.registry import default_registry
from exporters.validation import (
    IMAGE_SUFFIXES,
    TOLERANCES,
    measure_latency,
    reference_detections,
    timm_accuracy,
    validate_package,
    validation_images,
)
from runtimes.errors import OutpostError
from runtimes.fileio import sha256_file
from runtimes.package import PACKAGE_SUFFIX, PackageReader
from runtimes.package_digests import digests_path

MAP_IMAGES = 200  # validation images the export-time mAP is measured on, at most
MAP_CONF = 0.001  # like a validation run
CALIBRATION_IMAGES = 300
LATENCY_RUNS = 30
LATENCY_WARMUP = 5
# Exported, packaged and verified, but no runtime here can run it to check parity (CoreML
# off macOS): deployable by ID to a device that can, never chosen as a run's latest.
UNVALIDATED = "unvalidated"
# Told ``("format_start", {...})`` before a format's export folder is written and
# ``("format_end", {...})`` once it is recorded (an export job reports both as events).
ProgressHook = Callable[[str, dict[str, Any]], None]


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


def _split_images(folder: Path, split: str, task: str, limit: int) -> list[Path]:
    """A materialized split's images: ``images/<split>/*`` (YOLO layout) or, for a
    classifier, ``<split>/<class>/*`` (Ultralytics' classification layout)."""
    if task == "classify" and (folder / split).is_dir():
        found = sorted(
            p
            for p in (folder / split).glob("*/*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        return found[:limit]
    return validation_images(folder / "images" / split, limit)


def _data_folder(
    ws: Any, run: Any, dataset_name: str, version_number: int, scratch: Path, split: str
) -> Path:
    """The run's materialized data folder, or a fresh copy of the dataset version in
    ``scratch`` when the run's folder is gone or lacks ``split``."""
    from desktop_app.core.datasets import materialize_yolo

    folder = ws.resolve(run.run_dir) / "data"
    if _split_images(folder, split, run.task, 1):
        return cast(Path, folder)
    if not (scratch / "data.yaml").exists():
        materialize_yolo(ws, dataset_name, version_number, scratch)
    return scratch


def _validation_images(
    ws: Any, run: Any, dataset_name: str, version_number: int, scratch: Path
) -> list[Path]:
    """The run's materialized validation images; rebuilt from the dataset version if gone."""
    folder = _data_folder(ws, run, dataset_name, version_number, scratch, "val")
    return _split_images(folder, "val", run.task, 16)


def calibration_images(
    ws: Any, run: Any, dataset_name: str, version_number: int, scratch: Path
) -> list[Path]:
    """Up to 300 training images of the run's dataset version (INT8 calibration)."""
    try:
        folder = _data_folder(ws, run, dataset_name, version_number, scratch, "train")
    except OutpostError:
        return []
    return _split_images(folder, "train", run.task, CALIBRATION_IMAGES)


def _ground_truth(image: Path, folder: Path, task: str, hw: tuple[int, int]) -> Any:
    """The YOLO label of ``image`` as boxes in pixels (a polygon's extent for segment)."""
    from desktop_app.core.detection_metrics import GroundTruth

    label = folder / "labels" / "val" / (image.stem + ".txt")
    h, w = hw
    boxes, classes = [], []
    if label.exists():
        for line in label.read_text(encoding="utf-8").splitlines():
            values = [float(v) for v in line.split()]
            if len(values) < 5:
                continue
            classes.append(int(values[0]))
            if task == "segment" and len(values) > 5:
                xs, ys = np.array(values[1::2]), np.array(values[2::2])
                boxes.append([xs.min() * w, ys.min() * h, xs.max() * w, ys.max() * h])
            else:
                cx, cy, bw, bh = values[1:5]
                boxes.append(
                    [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                )
    return GroundTruth(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes, np.int64))


def export_accuracy(
    package: Path,
    checkpoint: Path,
    folder: Path,
    task: str,
    *,
    config_dir: Path,
    limit: int = MAP_IMAGES,
) -> dict[str, Any]:
    """The export's and the PyTorch model's accuracy on the validation split: box mAP50 and
    mAP50-95 (detect, segment, pose; COCO-style, ``detection_metrics``) at conf 0.001, or the
    top-1 accuracy of a classifier; both sides see the same images."""
    from desktop_app.core.detection_metrics import Predictions, evaluate_detections
    from runtimes.offline import apply_offline_env
    from runtimes.predictor import Predictor
    from runtimes.preprocess import read_image

    images = _split_images(folder, "val", task, limit)
    if not images:
        return {"images": 0, "note": "no validation images"}
    apply_offline_env(config_dir)
    import torch
    from ultralytics import YOLO  # type: ignore[attr-defined]

    threads = torch.get_num_threads()
    predictor = Predictor.from_path(package)
    try:
        reference: Any = YOLO(str(checkpoint), task=task)
        names = predictor.class_names
        imgsz = predictor.input_hw[0]
        truth, ours, theirs = [], [], []
        correct_ours = correct_theirs = 0
        for image in images:
            img = read_image(image)
            dets, _ = predictor.predict(img, conf=MAP_CONF)
            result = reference.predict(
                img, imgsz=imgsz, conf=MAP_CONF, rect=False, device="cpu", verbose=False
            )[0]
            if task == "classify":
                label = names.index(image.parent.name) if image.parent.name in names else -1
                assert dets.probs is not None
                correct_ours += int(int(np.argmax(dets.probs)) == label)
                correct_theirs += int(int(result.probs.top1) == label)
                continue
            ref = reference_detections(result, task, names)
            truth.append(_ground_truth(image, folder, task, img.shape[:2]))
            ours.append(Predictions(dets.xyxy, dets.class_id, dets.confidence))
            theirs.append(Predictions(ref.xyxy, ref.class_id, ref.confidence))
    finally:
        predictor.close()
        torch.set_num_threads(threads)
    if task == "classify":
        return {
            "images": len(images),
            "metric": "top1",
            "export": round(correct_ours / len(images), 4),
            "pytorch": round(correct_theirs / len(images), 4),
        }
    mine = evaluate_detections(truth, ours, len(names))
    ref_metrics = evaluate_detections(truth, theirs, len(names))
    return {
        "images": len(images),
        "metric": "box mAP50-95",
        "conf": MAP_CONF,
        "export": round(float(mine.map50_95), 4),
        "pytorch": round(float(ref_metrics.map50_95), 4),
        "export_map50": round(float(mine.map50), 4),
        "pytorch_map50": round(float(ref_metrics.map50), 4),
    }


def accuracy_failures(accuracy: dict[str, Any], precision: str) -> list[str]:
    """The mAP (top-1) drop beyond the precision's tolerance, as one failure line."""
    if "export" not in accuracy or accuracy["pytorch"] < 0:
        return []
    drop = float(accuracy["pytorch"]) - float(accuracy["export"])
    limit = TOLERANCES.get(precision, TOLERANCES["fp32"]).max_map_drop
    accuracy["drop"] = round(drop, 4)
    accuracy["max_drop"] = limit
    if drop > limit:
        return [
            f"{accuracy['metric']} dropped {drop:.4f} ({accuracy['pytorch']:.4f} → "
            f"{accuracy['export']:.4f}) > {limit}"
        ]
    return []


@dataclasses.dataclass
class _Built:
    """One format exported, packaged alone and validated (before it is recorded)."""

    key: str
    precision: str
    artifact: Any
    validation: dict[str, Any]
    latency: dict[str, Any]
    failures: list[str]
    unvalidated: bool = False  # parity could not run here (no runtime for the format)


def _export_and_validate(
    ws: Any,
    run: Any,
    exporter: Any,
    prec: str,
    *,
    checkpoint: Path,
    size: int,
    export_dir: Path,
    build_dir: Path,
    package_path: Path,
    package_args: dict[str, Any],
    dataset_name: str,
    version_number: int,
) -> _Built:
    """Export one format into ``build_dir``, package it alone at ``package_path``, and measure
    parity, accuracy and latency; the package is then rebuilt carrying its own numbers."""
    key = exporter.capability.key
    config_dir = Path(ws.root) / "yolo_config"
    options: dict[str, Any] = {"config_dir": str(config_dir)}
    if prec == "int8":
        options["calibration_images"] = [
            str(p)
            for p in calibration_images(
                ws, run, dataset_name, version_number, export_dir / "calibration"
            )
        ]
    artifact = try_export(
        exporter,
        ExportRequest(
            checkpoint=checkpoint,
            framework=run.framework,
            task=run.task,
            imgsz=size,
            out_dir=build_dir,
            precision=prec,
            options=options,
        ),
    )
    args = {**package_args, "out_path": package_path}
    build_package(artifact, **args)
    parity = artifact.details.get("parity")
    if isinstance(parity, dict) and parity.get("status") == "not_run":
        # A format no runtime here can run (CoreML off macOS): kept, marked unvalidated with
        # the reason, never "completed", so it never becomes the run's latest by accident.
        reason = str(parity.get("reason") or "no runtime for this format on this machine")
        not_run: dict[str, Any] = {"status": "not_run", "reason": reason, "passed": None}
        not_run["failures"] = []
        build_package(artifact, validation=not_run, **args)
        with PackageReader(package_path) as reader:
            reader.verify()
        return _Built(key, prec, artifact, not_run, {}, [], unvalidated=True)
    images = _validation_images(ws, run, dataset_name, version_number, export_dir / "valdata")
    report = validate_package(
        package_path, checkpoint, images, precision=prec, config_dir=config_dir
    )
    validation = report.as_dict()
    failures = list(report.failures)
    folder = _data_folder(ws, run, dataset_name, version_number, export_dir / "valdata", "val")
    if run.framework == "timm":
        accuracy = timm_accuracy(
            package_path, checkpoint, _split_images(folder, "val", "classify", MAP_IMAGES)
        )
    else:
        accuracy = export_accuracy(
            package_path, checkpoint, folder, run.task, config_dir=config_dir
        )
    failures += accuracy_failures(accuracy, prec)
    validation.update(accuracy=accuracy, passed=not failures, failures=failures)
    latency = measure_latency(package_path, images[0], runs=LATENCY_RUNS, warmup=LATENCY_WARMUP)
    # The package carries its own parity, accuracy and latency numbers: rebuild it.
    artifact = dataclasses.replace(artifact, details={**artifact.details, "latency": latency})
    build_package(
        artifact,
        validation=validation,
        sample_image=images[0] if images else None,  # the self-test input
        **args,
    )
    with PackageReader(package_path) as reader:
        reader.verify()
    return _Built(key, prec, artifact, validation, latency, failures)


def export_run(
    ws: Any,
    run_ref: str,
    formats: list[str],
    *,
    imgsz: int | None = None,
    precision: str | None = None,
    bundle: bool = False,
    on_progress: ProgressHook | None = None,
) -> list[dict[str, Any]]:
    """Export a completed run to each format and validate each against the PyTorch model.

    Each export ends ``completed`` (within its parity tolerance), ``failed_validation``
    (package kept, numbers recorded, not deployable as ``latest``) or ``failed`` (nothing
    kept). Failures are recorded and reported, not hidden.

    ``bundle`` writes ONE package holding every format (one record): each format is
    exported and validated on its own first, then packaged together, the first format as
    the manifest's ``format`` and the others as ``alternates``, each with its own parity,
    accuracy and latency in its ``details``. The bundle is ``failed`` (nothing kept) when any
    format fails, and ``failed_validation`` when any format is outside its tolerance.

    ``on_progress`` hears each format start (its export id, before anything is written) and
    end (its status and validation), see :data:`ProgressHook`.
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
    if bundle:
        keys = [exporter.capability.key for exporter, _ in jobs]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice:
            raise ExportError(
                f"a bundle holds one model per format; {twice} is asked for twice "
                "(export the other precision without --bundle-formats)"
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
    name = _slug(f"{dataset_name}-{Path(run.model).stem}")
    common = {
        "checkpoint": checkpoint,
        "size": size,
        "dataset_name": dataset_name,
        "version_number": version_number,
    }
    tell: ProgressHook = on_progress or (lambda _kind, _fields: None)
    if bundle:
        return [_export_bundle(ws, run, jobs, name, provenance, common, tell)]
    results = []
    for index, (exporter, prec) in enumerate(jobs, start=1):
        key = exporter.capability.key
        export_id = "exp-" + uuid.uuid4().hex[:10]
        export_dir = Path(ws.root) / "exports" / export_id
        suffix = key if prec == "fp32" else f"{key}-{prec}"
        package_path = export_dir / f"{name}-{suffix}{PACKAGE_SUFFIX}"
        record: dict[str, Any] = {
            "id": export_id,
            "run_id": run.id,
            "format": key,
            "precision": prec,
        }
        built: _Built | None = None
        tell("format_start", {**record, "index": index, "total": len(jobs)})
        try:
            built = _export_and_validate(
                ws,
                run,
                exporter,
                prec,
                export_dir=export_dir,
                build_dir=export_dir / "build",
                package_path=package_path,
                package_args=_package_args(name, export_id, run, provenance),
                **common,
            )
            _clean_scratch(export_dir)
            record.update(_completed(package_path, built.artifact.seconds, built))
        except Exception as exc:  # noqa: BLE001 - an OutpostError, or a library failure: one line
            shutil.rmtree(export_dir, ignore_errors=True)
            record.update(status="failed", error=_one_line(exc, key))
        _record(ws, record, run.id, key, size, prec, built)
        tell("format_end", {**record, "index": index, "total": len(jobs)})
        results.append(record)
    return results


def _package_args(
    name: str, export_id: str, run: Any, provenance: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "version": export_id,
        "framework": run.framework,
        "task": run.task,
        "provenance": provenance,
    }


def _one_line(exc: Exception, key: str) -> str:
    if isinstance(exc, OutpostError):
        return str(exc)
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{key} export validation failed: {first}"


def _clean_scratch(export_dir: Path) -> None:
    """Everything but the package: build folders, validation and calibration copies."""
    for child in export_dir.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def _completed(package_path: Path, seconds: float, *built: _Built) -> dict[str, Any]:
    failures = [f"{b.key}: {f}" if len(built) > 1 else f for b in built for f in b.failures]
    with PackageReader(package_path) as reader:
        manifest = reader.manifest
    status = "completed" if not failures else "failed_validation"
    if not failures and any(b.unvalidated for b in built):
        status = UNVALIDATED
    out: dict[str, Any] = {
        "status": status,
        "package": str(package_path),
        "sha256": sha256_file(package_path),
        "seconds": seconds,
        "validation": built[0].validation,
        "latency": built[0].latency,
        "manifest": manifest.model_dump(mode="json"),
    }
    if len(built) > 1:
        out["formats"] = [
            {
                "format": b.key,
                "precision": b.precision,
                "file": spec.file,
                "status": (
                    "failed_validation"
                    if b.failures
                    else (UNVALIDATED if b.unvalidated else "completed")
                ),
                "validation": b.validation,
                "latency": b.latency,
            }
            for b, spec in zip(built, manifest.all_formats(), strict=True)
        ]
    if failures:
        out["error"] = "outside parity tolerance: " + "; ".join(failures)
    return out


def _record(
    ws: Any,
    record: dict[str, Any],
    run_id: str,
    key: str,
    size: int,
    prec: str,
    built: _Built | None,
) -> None:
    """Store the export row; the manifest leaves the returned record once stored."""
    details: dict[str, Any] = {
        "seconds": record.get("seconds"),
        "imgsz": size,
        "precision": prec,
        "validation": built.validation if built else None,
        "latency": built.latency if built else None,
        "default": False,
    }
    if "formats" in record:
        details["formats"] = record["formats"]
        details["bundle"] = True
    with ws.session() as s:
        s.add(
            Export(
                id=record["id"],
                run_id=run_id,
                format=key,
                status=record["status"],
                package_path=ws.relative(record["package"]) if record.get("package") else None,
                package_sha256=record.get("sha256"),
                manifest=record.get("manifest", {}),
                details=details,
                error=record.get("error"),
            )
        )
    record.pop("manifest", None)


def _export_bundle(
    ws: Any,
    run: Any,
    jobs: list[tuple[Any, str]],
    name: str,
    provenance: dict[str, Any],
    common: dict[str, Any],
    tell: ProgressHook,
) -> dict[str, Any]:
    """Every format of ``jobs`` in one package (see :func:`export_run`)."""
    export_id = "exp-" + uuid.uuid4().hex[:10]
    export_dir = Path(ws.root) / "exports" / export_id
    keys = [exporter.capability.key for exporter, _ in jobs]
    package_path = export_dir / f"{name}-{'-'.join(keys)}{PACKAGE_SUFFIX}"
    primary_key, primary_prec = keys[0], jobs[0][1]
    record: dict[str, Any] = {
        "id": export_id,
        "run_id": run.id,
        "format": primary_key,
        "precision": primary_prec,
        "bundle": keys,
    }
    args = _package_args(name, export_id, run, provenance)
    built: list[_Built] = []
    try:
        for index, (exporter, prec) in enumerate(jobs, start=1):
            key = exporter.capability.key
            step = {"id": export_id, "run_id": run.id, "format": key, "precision": prec}
            step.update(index=index, total=len(jobs), bundle=keys)
            tell("format_start", step)
            try:
                built.append(
                    _export_and_validate(
                        ws,
                        run,
                        exporter,
                        prec,
                        export_dir=export_dir,
                        build_dir=export_dir / f"build-{key}",
                        package_path=export_dir / "parts" / f"{key}{PACKAGE_SUFFIX}",
                        package_args=args,
                        **common,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - named by its format below
                raise ExportError(f"{key}: {_one_line(exc, key)}") from exc
            done = built[-1]
            status = "failed_validation" if done.failures else "completed"
            status = UNVALIDATED if done.unvalidated and not done.failures else status
            tell("format_end", {**step, "status": status, "validation": done.validation})
        first = built[0]
        images = _validation_images(
            ws, run, common["dataset_name"], common["version_number"], export_dir / "valdata"
        )
        build_package(
            first.artifact,
            validation=first.validation,
            sample_image=images[0] if images else None,
            out_path=package_path,
            alternates=[(b.artifact, b.validation) for b in built[1:]],
            **args,
        )
        with PackageReader(package_path) as reader:
            reader.verify()
        _clean_scratch(export_dir)
        record.update(
            _completed(package_path, round(sum(b.artifact.seconds for b in built), 3), *built)
        )
    except Exception as exc:  # noqa: BLE001 - one line, nothing kept
        shutil.rmtree(export_dir, ignore_errors=True)
        record.update(status="failed", error=_one_line(exc, "+".join(keys)))
    _record(
        ws, record, run.id, primary_key, common["size"], primary_prec, built[0] if built else None
    )
    return record


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


def _row(ws: Any, e: Export) -> dict[str, Any]:
    details = e.details or {}
    validation = details.get("validation") or {}
    return {
        "id": e.id,
        "run_id": e.run_id,
        "format": e.format,
        "status": e.status,
        "precision": details.get("precision", "fp32"),
        "default": bool(details.get("default", False)),
        "validation": details.get("validation"),
        "accuracy": validation.get("accuracy"),
        "latency": details.get("latency"),
        "package": str(ws.resolve(e.package_path)) if e.package_path else None,
        "error": e.error,
        "created_at": e.created_at.isoformat() if e.created_at else None,
    }


def list_exports(ws: Any, run: str | None = None) -> list[dict[str, Any]]:
    """Every export (of one run when ``run`` names one, or ``latest``), oldest first, with its
    default flag."""
    run_id = resolve_run(ws, run).id if run else None
    with ws.session() as s:
        query = select(Export).order_by(Export.created_at)
        if run_id is not None:
            query = query.where(Export.run_id == run_id)
        return [_row(ws, e) for e in s.scalars(query)]


def default_export(ws: Any, run_id: str) -> Export | None:
    """The export marked default for a run, if any."""
    with ws.session() as s:
        for exp in s.scalars(select(Export).where(Export.run_id == run_id)):
            if (exp.details or {}).get("default"):
                s.expunge(exp)
                return cast(Export, exp)
    return None


def set_default_export(ws: Any, export_id: str) -> dict[str, Any]:
    """Make ``export_id`` its run's one default export (the flag lives in ``Export.details``).

    Raises:
        NotFoundError: no such export.
        ExportError: the export is not ``completed`` (a failed or out-of-tolerance export
            cannot be the default).
    """
    from desktop_app.core.errors import NotFoundError

    with ws.session() as s:
        exp = s.get(Export, export_id)
        if exp is None:
            raise NotFoundError(f"no export {export_id!r}; list them with: outpost exports list")
        if exp.status != "completed":
            raise ExportError(
                f"export {export_id} is {exp.status}; only a completed export can be the default"
            )
        for other in s.scalars(select(Export).where(Export.run_id == exp.run_id)):
            flag = other.id == export_id
            if bool((other.details or {}).get("default")) != flag:
                other.details = {**(other.details or {}), "default": flag}
        s.flush()
        return _row(ws, exp)


def deployed_on(ws: Any, export_id: str) -> list[str]:
    """The devices on which ``export_id`` is installed now: its newest deployment row there
    succeeded and is not an uninstall (a deactivated model is still on the device)."""
    with ws.session() as s:
        rows = s.scalars(
            select(Deployment)
            .where(Deployment.export_id == export_id)
            .order_by(Deployment.created_at, Deployment.id)
        ).all()
        latest: dict[str, Deployment] = {}
        for row in rows:
            latest[row.device_id] = row
        return sorted(
            device
            for device, row in latest.items()
            if row.status == "installed" and row.action != "uninstall"
        )


def delete_export(ws: Any, export_id: str, *, force: bool = False) -> dict[str, Any]:
    """Remove an export's package folder and its row (and its deployment history).

    Raises:
        NotFoundError: no such export.
        ExportError: the export is deployed on a device and ``force`` is not set.
    """
    from desktop_app.core.errors import NotFoundError

    with ws.session() as s:
        exp = s.get(Export, export_id)
        if exp is None:
            raise NotFoundError(f"no export {export_id!r}; list them with: outpost exports list")
        package = ws.resolve(exp.package_path) if exp.package_path else None
        was_default = bool((exp.details or {}).get("default"))
    devices = deployed_on(ws, export_id)
    if devices and not force:
        raise ExportError(
            f"export {export_id} is deployed on {', '.join(devices)}; "
            "uninstall it there first or pass --force"
        )
    folder = Path(ws.root) / "exports" / export_id
    with ws.session() as s:
        s.execute(delete(Deployment).where(Deployment.export_id == export_id))
        exp = s.get(Export, export_id)
        if exp is not None:
            s.delete(exp)
    # The row goes first: a crash between the two leaves an orphan folder, never a row
    # pointing at a missing package.
    if package is not None and package.exists() and not package.is_relative_to(folder):
        package.unlink()
        digests_path(package).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    return {"id": export_id, "deleted": True, "was_default": was_default, "deployed_on": devices}
