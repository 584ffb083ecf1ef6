"""Evaluate a trained run on a dataset version's split with one of its exported packages.

:func:`evaluate` runs the package (the runtime an edge device would use, on this machine's
CPU) over the split's labelled images, compares its boxes with the ground truth using
:mod:`desktop_app.core.detection_metrics` (COCO mAP50-95, mAP50, mAP75, per-class AP,
precision and recall at the best-F1 confidence, PR curves, a confusion matrix) and stores
the result as an :class:`~desktop_app.core.models.Evaluation`.

Which package: the export given, else the run's newest completed ONNX export. A run with
none is refused with the command that makes one (evaluation never exports on its own:
exporting validates parity against the checkpoint and takes a while; it stays an explicit
step). Model classes map to dataset classes by name; classes only the dataset has score
zero, detections of classes only the model has are left out, both are reported.

Segmentation and pose packages are evaluated on their boxes. Classification runs are
measured on a classification dataset by :func:`classification_metrics`: top-1 and top-5
accuracy, per-class precision, recall and (one-vs-rest) accuracy and a confusion matrix,
from the package's class probabilities, or, for a timm run (which has no exporter), from
its best checkpoint run by :class:`trainers.timm.predict.TimmClassifier`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from desktop_app.core.blobs import require_blob
from desktop_app.core.detection_metrics import GroundTruth, Predictions, evaluate_detections
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import Dataset, DatasetVersion, Evaluation, Export, TrainingRun

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace
    from runtimes.predictor import Predictor

__all__ = [
    "SPLITS",
    "class_mapping",
    "classification_metrics",
    "evaluate",
    "get_evaluation",
    "list_evaluations",
    "resolve_export",
]

SPLITS = ("train", "val", "test")
Progress = Callable[[str, int, int], None]  # stage, done, total


def resolve_export(
    ws: Workspace, run_ref: str | None = None, export_id: str | None = None
) -> tuple[str, Export, Path]:
    """The export to run and its package: ``export_id`` (``latest`` allowed), or the run's
    newest completed ONNX export.

    Returns:
        ``(run id, export row, package path)``.

    Raises:
        NotFoundError: no such run or export, no completed ONNX export of the run, or the
            package file is gone.
        InvalidArgumentError: neither given, or the export belongs to another run.
    """
    from desktop_app.core.exports import get_export
    from desktop_app.core.training import resolve_run

    run: TrainingRun | None = resolve_run(ws, run_ref) if run_ref is not None else None
    if export_id is not None:
        exp = get_export(ws, export_id)
        if run is not None and exp.run_id != run.id:
            raise InvalidArgumentError(
                f"export {exp.id} belongs to run {exp.run_id}, not {run.id}; "
                "pass one of this run's exports (outpost exports list)"
            )
    elif run is not None:
        exp = _newest_onnx_export(ws, run.id)
    else:
        raise InvalidArgumentError("name a run (or 'latest') or an export id to predict with")
    if exp.status not in ("completed", "failed_validation") or not exp.package_path:
        raise NotFoundError(f"export {exp.id} has no package ({exp.status}); pick a completed one")
    path = ws.resolve(exp.package_path)
    if not path.exists():
        raise NotFoundError(f"the package of export {exp.id} is missing ({path}); export again")
    return exp.run_id, exp, path


def _newest_onnx_export(ws: Workspace, run_id: str) -> Export:
    with ws.session() as s:
        found = s.scalars(
            select(Export)
            .where(Export.run_id == run_id, Export.status == "completed", Export.format == "onnx")
            .order_by(Export.created_at.desc())
        ).first()
        if found is None:
            raise NotFoundError(
                f"run {run_id} has no completed ONNX export; export it first: "
                f"outpost export {run_id} --format onnx"
            )
        s.expunge(found)
        return found


def class_mapping(
    model_classes: tuple[str, ...] | list[str], dataset_classes: tuple[str, ...] | list[str]
) -> tuple[dict[int, int], list[str], list[str]]:
    """Model class id → dataset class id, by name.

    Returns:
        ``(mapping, dataset classes the model lacks, model classes the dataset lacks)``.
    """
    index = {name: i for i, name in enumerate(dataset_classes)}
    mapping = {i: index[name] for i, name in enumerate(model_classes) if name in index}
    missing = [n for n in dataset_classes if n not in set(model_classes)]
    extra = [n for n in model_classes if n not in index]
    return mapping, missing, extra


def _check_thresholds(conf: float, iou: float, max_det: int | None = None) -> None:
    for label, value in (("conf", conf), ("iou", iou)):
        if not 0.0 <= float(value) <= 1.0:
            raise InvalidArgumentError(f"{label} must be between 0 and 1, got {value!r}")
    if max_det is not None and max_det < 1:
        raise InvalidArgumentError(f"max_det must be 1 or more, got {max_det!r}")


def check_split(split: str) -> str:
    """``split`` when it is train, val or test; InvalidArgumentError otherwise."""
    if split not in SPLITS:
        raise InvalidArgumentError(f"split {split!r} is not valid; use {', '.join(SPLITS)}")
    return split


def evaluate(
    ws: Workspace,
    run_ref: str,
    dataset: str,
    version: str | int | None = None,
    split: str = "val",
    *,
    export_id: str | None = None,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure a run's exported model on one split of a dataset version and store it.

    Args:
        ws: The open workspace.
        run_ref: A run id or ``latest``.
        dataset: The dataset's name.
        version: ``v2``, ``2``, a tag, ``draft``, or None for the latest version.
        split: ``train``, ``val`` or ``test``.
        export_id: One of the run's exports (default: its newest completed ONNX export).
        conf: Confidence threshold of the predictions (low, like validation: 0.001).
        iou: NMS IoU threshold.
        max_det: Most detections kept per image after NMS.
        progress: Called as ``progress("evaluate", done, total)``.

    Returns:
        The stored evaluation, as :func:`get_evaluation` returns it.

    Raises:
        NotFoundError: no such run, export, dataset or version; the run has no ONNX export.
        InvalidArgumentError: a bad split or threshold, an empty split, a classification
            dataset or run, or no class name shared by the model and the dataset.
        PackageError: the package cannot be opened or run.
    """
    from desktop_app.core.dataset_export import load_version
    from desktop_app.core.datasets import find_version
    from desktop_app.core.training import resolve_run
    from runtimes.predictor import Predictor

    check_split(split)
    _check_thresholds(conf, iou, max_det)
    if str(resolve_run(ws, run_ref).task) == "classify":
        return _evaluate_classification(
            ws, run_ref, dataset, version, split, export_id=export_id, progress=progress
        )
    run_id, exp, package = resolve_export(ws, run_ref, export_id)
    with ws.session() as s:
        _, row = find_version(s, dataset, version)
        version_id = row.id
        run = s.get(TrainingRun, run_id)
        run_metrics = dict(run.final_metrics) if run is not None else {}
        task = str(run.task) if run is not None else "detect"
    data = load_version(ws, dataset, version)
    if task == "classify":
        raise InvalidArgumentError(
            f"run {run_id} is a classification model; evaluation measures detection boxes "
            "and has no top-1/top-5 measure yet: evaluate a detect, segment or pose run"
        )
    if data.task == "classify":
        raise InvalidArgumentError(
            f"dataset {dataset!r} is a classification dataset; evaluation measures detection "
            "boxes: evaluate on a detection dataset"
        )
    in_split = [it for it in data.items if it.split == split]
    items = [it for it in in_split if it.label_status == "labelled"]
    if not items:
        raise InvalidArgumentError(
            f"{dataset} {data.version} has no labelled images in the {split} split "
            f"({len(in_split)} images); pick another --split or split it with "
            "`outpost dataset split`"
        )
    t_start = time.perf_counter()
    predictor = Predictor.from_path(package)
    try:
        if predictor.manifest.model.task == "classify":
            raise InvalidArgumentError(
                f"export {exp.id} is a classification model; evaluation measures detection "
                "boxes and has no top-1/top-5 measure yet: evaluate a detect, segment or pose run"
            )
        model_classes = tuple(predictor.class_names)
        mapping, missing, extra = class_mapping(model_classes, data.class_names)
        if not mapping:
            raise InvalidArgumentError(
                f"export {exp.id} predicts {', '.join(model_classes) or 'no classes'} and "
                f"dataset {dataset!r} has {', '.join(data.class_names)}: no class name in "
                "common; evaluate on a dataset with the model's classes"
            )
        gts, preds, timing = _predict_items(
            ws, predictor, items, mapping, conf, iou, max_det, progress
        )
        runtime = predictor.backend.key
    finally:
        predictor.close()
    metrics = evaluate_detections(gts, preds, len(data.class_names))
    names = list(data.class_names)
    warnings = []
    if missing:
        warnings.append(
            f"the model has no class {', '.join(missing)}: "
            "those classes score zero where they have objects"
        )
    if extra:
        warnings.append(f"detections of model classes {', '.join(extra)} are left out")
    if task in ("segment", "pose"):
        warnings.append(f"a {task} model: its boxes are evaluated, not its masks or keypoints")
    summary = metrics.summary()
    details = {
        "confusion": {
            "labels": [*names, "background"],
            "matrix": metrics.confusion.tolist(),
            "rows": "predicted",
            "columns": "true",
            "conf": 0.25,
            "iou": 0.45,
        },
        "curves": metrics.curves(names),
        "counts": {
            "images": len(items),
            "unlabelled_skipped": len(in_split) - len(items),
            "instances": summary["instances"],
            "predictions": summary["predictions"],
        },
        "export": {
            "id": exp.id,
            "format": exp.format,
            "runtime": runtime,
            "package_sha256": exp.package_sha256,
            "task": task,
        },
        "params": {"conf": conf, "iou": iou, "max_det": max_det, "max_dets_per_class": 100},
        "class_mapping": {model_classes[m]: names[d] for m, d in mapping.items()},
        "warnings": warnings,
        "timings": {**timing, "total_s": round(time.perf_counter() - t_start, 3)},
        "run_metrics": {
            k: run_metrics[k]
            for k in ("metrics/mAP50(B)", "metrics/mAP50-95(B)")
            if k in run_metrics
        },
    }
    eval_id = "eval-" + uuid.uuid4().hex[:10]
    with ws.session() as s:
        s.add(
            Evaluation(
                id=eval_id,
                run_id=run_id,
                export_id=exp.id,
                dataset_version_id=version_id,
                split=split,
                status="completed",
                metrics=summary,
                per_class=metrics.per_class(names),
                details=details,
            )
        )
    return get_evaluation(ws, eval_id)


def classification_metrics(
    true: np.ndarray, probs: np.ndarray, names: list[str] | tuple[str, ...], k: int = 5
) -> tuple[dict[str, Any], list[dict[str, Any]], list[list[int]]]:
    """Top-1/top-k accuracy, per-class results and the confusion matrix of a classifier.

    Args:
        true: ``(N,)`` the true class of each image, indices into ``names``.
        probs: ``(N, C)`` class scores per image, columns in the order of ``names``
            (``C >= len(names)`` only counts for ranking: extra columns are classes the
            model has and the dataset lacks, never right).
        names: The dataset's class names (the rows of ``per_class``).
        k: The ``k`` of top-k (5; fewer when there are fewer columns).

    Returns:
        ``(metrics, per_class, matrix)``: ``metrics`` holds ``top1``, ``top5`` (top-``k``),
        ``images``, ``classes`` and the macro means of precision, recall and accuracy over
        the classes with images; ``per_class`` one row per name with ``images`` (true ones),
        ``predicted``, ``precision``, ``recall`` (its top-1 accuracy), ``accuracy``
        (one-vs-rest: images rightly called it or rightly not, over all images; None for
        precision when nothing was predicted as it, for recall without images);
        ``matrix`` ``C x C`` counts, rows the predicted (top-1) class, columns the true one,
        like Ultralytics' classification confusion matrix.
    """
    true = np.asarray(true, np.int64).reshape(-1)
    probs = np.asarray(probs, np.float64).reshape(len(true), -1)
    n, c = probs.shape
    kk = max(1, min(k, c))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :kk] if n else np.zeros((0, kk), int)
    pred = order[:, 0] if n else np.zeros(0, np.int64)
    matrix = np.zeros((c, c), np.int64)
    np.add.at(matrix, (pred, true), 1)
    per_class: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        tp = int(matrix[i, i])
        support = int(matrix[:, i].sum())
        predicted = int(matrix[i, :].sum())
        tn = n - support - predicted + tp
        per_class.append(
            {
                "class": name,
                "images": support,
                "predicted": predicted,
                "precision": tp / predicted if predicted else None,
                "recall": tp / support if support else None,
                "accuracy": (tp + tn) / n if n else None,
            }
        )
    seen = [r for r in per_class if r["images"]]

    def mean(key: str) -> float | None:
        values = [float(r[key]) for r in seen if r[key] is not None]
        return float(np.mean(values)) if values else None

    metrics = {
        "top1": float((pred == true).mean()) if n else None,
        "top5": float((order == true[:, None]).any(axis=1).mean()) if n else None,
        "top_k": kk,
        "images": n,
        "classes": len(names),
        "precision": mean("precision"),
        "recall": mean("recall"),
        "accuracy": mean("accuracy"),
    }
    return metrics, per_class, matrix.tolist()


def _evaluate_classification(
    ws: Workspace,
    run_ref: str,
    dataset: str,
    version: str | int | None,
    split: str,
    *,
    export_id: str | None,
    progress: Progress | None,
) -> dict[str, Any]:
    """:func:`evaluate` for a classification run (see :func:`classification_metrics`)."""
    from desktop_app.core.dataset_export import load_version
    from desktop_app.core.datasets import find_version
    from desktop_app.core.training import resolve_run

    run = resolve_run(ws, run_ref)
    run_id, framework = run.id, str(run.framework)
    data = load_version(ws, dataset, version)
    if data.task != "classify":
        raise InvalidArgumentError(
            f"run {run_id} is a classification model and dataset {dataset!r} is a "
            f"{data.task} dataset: evaluate it on a classification dataset"
        )
    with ws.session() as s:
        _, row = find_version(s, dataset, version)
        version_id = row.id
        stored = s.get(TrainingRun, run_id)
        run_metrics = dict(stored.final_metrics) if stored is not None else {}
        checkpoint = stored.best_checkpoint if stored is not None else None
    in_split = [it for it in data.items if it.split == split]
    items = [it for it in in_split if it.label_status == "labelled" and it.annotations]
    if not items:
        raise InvalidArgumentError(
            f"{dataset} {data.version} has no labelled images in the {split} split "
            f"({len(in_split)} images); pick another --split or split it with "
            "`outpost dataset split`"
        )
    t_start = time.perf_counter()
    classify, close, model_classes, source = _classifier(
        ws, run_id, framework, export_id, checkpoint
    )
    try:
        names = list(data.class_names)
        mapping, missing, extra = class_mapping(model_classes, names)
        if not mapping:
            raise InvalidArgumentError(
                f"run {run_id} predicts {', '.join(model_classes)} and dataset {dataset!r} "
                f"has {', '.join(names)}: no class name in common; evaluate on a dataset "
                "with the model's classes"
            )
        # dataset classes first, then the model's own extra classes (always wrong)
        columns = np.array(
            [
                mapping[m] if m in mapping else len(names) + extra.index(model_classes[m])
                for m in range(len(model_classes))
            ],
            np.int64,
        )
        probs = np.zeros((len(items), len(names) + len(extra)), np.float64)
        true = np.zeros(len(items), np.int64)
        times: list[float] = []
        for i, item in enumerate(items):
            true[i] = int(item.annotations[0].cls)
            data_bytes = require_blob(ws.blobs, item.sha256).read_bytes()
            t0 = time.perf_counter()
            p = np.asarray(classify(data_bytes), np.float64).reshape(-1)
            times.append((time.perf_counter() - t0) * 1e3)
            if p.size != len(model_classes):
                raise InvalidArgumentError(
                    f"the model of run {run_id} gave {p.size} scores for "
                    f"{len(model_classes)} classes; export the run again"
                )
            probs[i, columns] = p
            if progress is not None:
                progress("evaluate", i + 1, len(items))
    finally:
        close()
    metrics, per_class, matrix = classification_metrics(true, probs, names)
    labels = [*names, *extra]
    predicted = np.argsort(-probs, axis=1, kind="stable")[:, 0]
    warnings = []
    if missing:
        warnings.append(f"the model has no class {', '.join(missing)}: its images are always wrong")
    if extra:
        warnings.append(
            f"the model also predicts {', '.join(extra)}, which the dataset lacks: "
            "such predictions count as wrong"
        )
    ms = np.asarray(times)
    details = {
        "kind": "classify",
        "confusion": {"labels": labels, "matrix": matrix, "rows": "predicted", "columns": "true"},
        "counts": {
            "images": len(items),
            "unlabelled_skipped": len(in_split) - len(items),
        },
        "export": {**source, "task": "classify"},
        "params": {"top_k": metrics["top_k"]},
        "class_mapping": {model_classes[m]: names[d] for m, d in mapping.items()},
        "model_classes": list(model_classes),
        "predictions": [
            {"file": it.file_name, "true": names[int(t)], "predicted": labels[int(p)]}
            for it, t, p in zip(items, true, predicted, strict=True)
        ],
        "warnings": warnings,
        "timings": {
            "per_image_ms_mean": round(float(ms.mean()), 3),
            "per_image_ms_p50": round(float(np.percentile(ms, 50)), 3),
            "total_s": round(time.perf_counter() - t_start, 3),
        },
        "run_metrics": {
            k: run_metrics[k]
            for k in ("metrics/accuracy_top1", "metrics/accuracy_top5")
            if k in run_metrics
        },
    }
    eval_id = "eval-" + uuid.uuid4().hex[:10]
    with ws.session() as s:
        s.add(
            Evaluation(
                id=eval_id,
                run_id=run_id,
                export_id=source.get("id"),
                dataset_version_id=version_id,
                split=split,
                status="completed",
                metrics=metrics,
                per_class=per_class,
                details=details,
            )
        )
    return get_evaluation(ws, eval_id)


def _classifier(
    ws: Workspace,
    run_id: str,
    framework: str,
    export_id: str | None,
    checkpoint: str | None,
) -> tuple[Callable[[bytes], np.ndarray], Callable[[], None], tuple[str, ...], dict[str, Any]]:
    """``(image bytes → class probabilities, close, model classes, what ran)`` for a run.

    The export given, else the run's newest completed ONNX export; a timm run without one
    runs its best checkpoint (timm models have no exporter).
    """
    from runtimes.predictor import Predictor

    if export_id is None and framework == "timm":
        try:
            _newest_onnx_export(ws, run_id)
        except NotFoundError:
            if not checkpoint or not ws.resolve(checkpoint).is_file():
                raise NotFoundError(
                    f"run {run_id} has no best checkpoint to evaluate; train it to the end "
                    f"or resume it: outpost runs resume {run_id}"
                ) from None
            from trainers.timm.predict import TimmClassifier

            model = TimmClassifier(ws.resolve(checkpoint))
            source = {
                "id": None,
                "format": "checkpoint",
                "runtime": "torch",
                "checkpoint": checkpoint,
            }
            return model.probs, lambda: None, model.class_names, source
    _, exp, package = resolve_export(ws, run_id, export_id)
    predictor = Predictor.from_path(package)
    if predictor.manifest.model.postprocessing.kind != "classify":
        predictor.close()
        raise InvalidArgumentError(
            f"export {exp.id} is a {predictor.manifest.model.task} model, not a classifier; "
            "pick an export of this classification run"
        )

    def probs(data: bytes) -> np.ndarray:
        dets, _ = predictor.predict_bytes(data)
        if dets.probs is None:
            raise InvalidArgumentError(
                f"export {exp.id} gave no class probabilities; export the run again"
            )
        return dets.probs

    source = {
        "id": exp.id,
        "format": exp.format,
        "runtime": predictor.backend.key,
        "package_sha256": exp.package_sha256,
    }
    return probs, predictor.close, tuple(predictor.class_names), source


def _predict_items(
    ws: Workspace,
    predictor: Predictor,
    items: list[Any],
    mapping: dict[int, int],
    conf: float,
    iou: float,
    max_det: int,
    progress: Progress | None,
) -> tuple[list[GroundTruth], list[Predictions], dict[str, float]]:
    gts: list[GroundTruth] = []
    preds: list[Predictions] = []
    inference_ms: list[float] = []
    lut = np.full(max(mapping) + 1, -1, np.int64)
    for m, d in mapping.items():
        lut[m] = d
    for i, item in enumerate(items, start=1):
        w, h = item.width, item.height
        anns = [a for a in item.annotations if a.score is None]
        xyxy = np.array([a.xyxy for a in anns], np.float64).reshape(-1, 4) * [w, h, w, h]
        gts.append(
            GroundTruth(
                xyxy,
                np.array([a.cls for a in anns], np.int64),
                np.array([a.iscrowd for a in anns], bool),
            )
        )
        data = require_blob(ws.blobs, item.sha256).read_bytes()
        dets, timing = predictor.predict_bytes(data, conf=conf, iou=iou, max_det=max_det)
        inference_ms.append(timing.total_ms)
        cls = dets.class_id.astype(np.int64)
        known = cls < len(lut)
        cls = np.where(known, lut[np.clip(cls, 0, len(lut) - 1)], -1)
        keep = cls >= 0
        preds.append(Predictions(dets.xyxy[keep], cls[keep], dets.confidence[keep]))
        if progress is not None:
            progress("evaluate", i, len(items))
    ms = np.asarray(inference_ms)
    return (
        gts,
        preds,
        {
            "per_image_ms_mean": round(float(ms.mean()), 3),
            "per_image_ms_p50": round(float(np.percentile(ms, 50)), 3),
        },
    )


def _evaluation_dict(s: Any, ev: Evaluation, full: bool) -> dict[str, Any]:
    version = s.get(DatasetVersion, ev.dataset_version_id)
    dataset = s.get(Dataset, version.dataset_id) if version is not None else None
    out: dict[str, Any] = {
        "id": ev.id,
        "run_id": ev.run_id,
        "export_id": ev.export_id,
        "dataset": dataset.name if dataset is not None else None,
        "version": version.label if version is not None else None,
        "split": ev.split,
        "status": ev.status,
        "metrics": dict(ev.metrics),
        "error": ev.error,
        "created_at": ev.created_at.isoformat() if ev.created_at else None,
    }
    if full:
        out["per_class"] = list(ev.per_class)
        out["details"] = dict(ev.details)
    return out


def list_evaluations(ws: Workspace, run_ref: str | None = None) -> list[dict[str, Any]]:
    """Every evaluation, oldest first (of one run when ``run_ref`` is given), without details.

    Raises:
        NotFoundError: no such run.
    """
    query = select(Evaluation).order_by(Evaluation.created_at)
    if run_ref is not None:
        from desktop_app.core.training import resolve_run

        query = query.where(Evaluation.run_id == resolve_run(ws, run_ref).id)
    with ws.session() as s:
        return [_evaluation_dict(s, ev, full=False) for ev in s.scalars(query)]


def get_evaluation(ws: Workspace, evaluation_id: str) -> dict[str, Any]:
    """One evaluation with its per-class rows and details (confusion matrix, curves, ...).

    Raises:
        NotFoundError: no such evaluation.
    """
    with ws.session() as s:
        ev = s.get(Evaluation, evaluation_id)
        if ev is None:
            raise NotFoundError(
                f"no evaluation {evaluation_id!r}; list them with: outpost evaluations list"
            )
        return _evaluation_dict(s, ev, full=True)
