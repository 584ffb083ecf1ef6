"""Batch prediction: a run's exported model over a folder or a dataset version, kept on disk.

:func:`predict_batch` runs a package over every image of a folder (recursively; an image
that cannot be read or decoded is listed as an error and the rest go on) or of a dataset
version (optionally one split), writes one JSON line per image to
``<workspace>/predictions/<id>.jsonl`` (temp file + rename: a failed batch leaves nothing)
and records a :class:`~desktop_app.core.models.PredictionSet`. Each line is::

    {"file", "sha256", "width", "height", "detections": [{"class", "class_id", "score", "xyxy"}]}

with ``xyxy`` in pixels of the image and ``class_id`` the model's class index. A
classifier's lines have no detections and ``classes`` instead: its five most probable
classes, most probable first, ``[{"class", "class_id", "score"}]`` (named by the model's
own class list, which for an Ultralytics classifier is in sorted order).

:func:`to_prelabels` turns a stored set into pre-labelling proposals in a dataset's draft
(images matched by sha256, then by file name; classes by name), like
:func:`desktop_app.core.dataset_prelabel.prelabel` does with a live model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from desktop_app.core.blobs import require_blob
from desktop_app.core.dataset_prelabel import Proposal, check_statuses, store_proposals
from desktop_app.core.dataset_records import IMAGE_SUFFIXES, max_image_pixels
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.evaluation import check_split, resolve_export
from desktop_app.core.models import DatasetItem, PredictionSet
from runtimes.errors import ImageDecodeError
from runtimes.fileio import atomic_writer, sha256_bytes

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace
    from runtimes.predictor import Predictor

__all__ = [
    "get_prediction_set",
    "list_prediction_sets",
    "predict_batch",
    "read_predictions",
    "to_prelabels",
]

Progress = Callable[[str, int, int], None]  # stage, done, total
CLASSIFY_TOP_K = 5  # classes kept per image of a classifier


def predict_batch(
    ws: Workspace,
    *,
    run_ref: str | None = None,
    export_id: str | None = None,
    folder: Path | str | None = None,
    dataset: str | None = None,
    version: str | int | None = None,
    split: str | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Predict every image of a folder or a dataset version and store the results.

    Args:
        ws: The open workspace.
        run_ref: A run id or ``latest``: its newest completed ONNX export is used.
        export_id: An export id (or ``latest``) to use instead (or one of ``run_ref``'s).
        folder: A folder of images, searched recursively (hidden entries skipped).
        dataset: A dataset name (instead of ``folder``).
        version: The dataset version (``v2``, a tag, ``draft``; None: the latest).
        split: Only this split of the dataset version (``train``, ``val``, ``test``).
        conf: Confidence threshold.
        iou: NMS IoU threshold.
        progress: Called as ``progress("predict", done, total)``.

    Returns:
        The stored set as :func:`get_prediction_set` returns it (without images), plus
        ``errors``: ``[{"file", "error"}]`` of images that could not be read.

    Raises:
        NotFoundError: no such run, export, dataset, version or folder.
        InvalidArgumentError: not exactly one of ``folder``/``dataset``, ``split`` without a
            dataset, a bad split or threshold, or nothing to predict.
        PackageError: the package cannot be opened or run.
    """
    if (folder is None) == (dataset is None):
        raise InvalidArgumentError("pass either a folder or a dataset to predict on")
    if split is not None:
        if dataset is None:
            raise InvalidArgumentError("--split goes with --dataset, not with a folder")
        check_split(split)
    for label, value in (("conf", conf), ("iou", iou)):
        if not 0.0 <= float(value) <= 1.0:
            raise InvalidArgumentError(f"{label} must be between 0 and 1, got {value!r}")
    run_id, exp, package = resolve_export(ws, run_ref, export_id)
    version_id: int | None = None
    sources: list[tuple[str, Callable[[], bytes]]]
    if dataset is not None:
        sources, source, version_id = _dataset_sources(ws, dataset, version, split)
    else:
        root = Path(str(folder)).expanduser().resolve()
        if not root.is_dir():
            raise NotFoundError(f"{root} is not a folder; pass a folder of images")
        sources = [(p.relative_to(root).as_posix(), p.read_bytes) for p in _image_files(root)]
        source = str(root)
        if not sources:
            raise InvalidArgumentError(
                f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )

    from runtimes.predictor import Predictor

    set_id = "pred-" + uuid.uuid4().hex[:10]
    out = ws.root / "predictions" / f"{set_id}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    errors: list[dict[str, str]] = []
    images = detections = 0
    predictor = Predictor.from_path(package)
    try:
        class_names = list(predictor.class_names)
        runtime = predictor.backend.key
        with atomic_writer(out) as fh:
            for i, (name, read) in enumerate(sources, start=1):
                record = _predict_one(predictor, name, read, conf, iou)
                if "error" in record:
                    errors.append(record)
                else:
                    fh.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
                    images += 1
                    detections += len(record["detections"])
                if progress is not None:
                    progress("predict", i, len(sources))
    finally:
        predictor.close()
    params = {
        "conf": conf,
        "iou": iou,
        "split": split,
        "class_names": class_names,
        "runtime": runtime,
        "errors": errors,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    try:
        with ws.session() as s:
            s.add(
                PredictionSet(
                    id=set_id,
                    run_id=run_id,
                    export_id=exp.id,
                    source=source,
                    dataset_version_id=version_id,
                    num_images=images,
                    num_detections=detections,
                    path=ws.relative(out),
                    params=params,
                )
            )
    except BaseException:
        out.unlink(missing_ok=True)  # no file without its record
        raise
    result = get_prediction_set(ws, set_id, limit=0)
    result["errors"] = errors
    return result


def _image_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _dataset_sources(
    ws: Workspace, dataset: str, version: str | int | None, split: str | None
) -> tuple[list[tuple[str, Callable[[], bytes]]], str, int]:
    from desktop_app.core.dataset_export import load_version
    from desktop_app.core.datasets import find_version

    with ws.session() as s:
        _, row = find_version(s, dataset, version)
        version_id = row.id
    data = load_version(ws, dataset, version)
    items = [it for it in data.items if split is None or it.split == split]
    where = f"{dataset}@{data.version}" + (f":{split}" if split else "")
    if not items:
        raise InvalidArgumentError(
            f"{where} has no images; pick another split or version"
            if split
            else f"{where} has no images; add some first"
        )

    def reader(sha: str) -> Callable[[], bytes]:
        return lambda: require_blob(ws.blobs, sha).read_bytes()

    return [(it.file_name, reader(it.sha256)) for it in items], where, version_id


def _predict_one(
    predictor: Predictor, name: str, read: Callable[[], bytes], conf: float, iou: float
) -> dict[str, Any]:
    from runtimes.preprocess import decode_image

    try:
        data = read()
        img = decode_image(data, max_pixels=max_image_pixels())
    except OSError as exc:
        return {"file": name, "error": f"cannot read it: {exc.strerror or exc}"}
    except ImageDecodeError as exc:
        return {"file": name, "error": str(exc)}
    dets, _ = predictor.predict(img, conf=conf, iou=iou)
    record: dict[str, Any] = {
        "file": name,
        "sha256": sha256_bytes(data),
        "width": int(img.shape[1]),
        "height": int(img.shape[0]),
    }
    if dets.probs is not None:
        record["detections"] = []
        record["classes"] = [
            {"class": c["class_name"], "class_id": c["class_id"], "score": c["confidence"]}
            for c in dets.top_k(CLASSIFY_TOP_K)
        ]
        return record
    return {
        **record,
        "detections": [
            {
                "class": d["class_name"],
                "class_id": d["class_id"],
                "score": d["confidence"],
                "xyxy": d["xyxy"],
            }
            for d in dets.to_list()
        ],
    }


def _set_dict(ws: Workspace, row: PredictionSet) -> dict[str, Any]:
    params = dict(row.params)
    return {
        "id": row.id,
        "run_id": row.run_id,
        "export_id": row.export_id,
        "source": row.source,
        "dataset_version_id": row.dataset_version_id,
        "images": row.num_images,
        "detections": row.num_detections,
        "errors": len(params.get("errors", [])),
        "path": str(ws.resolve(row.path)),
        "params": params,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def list_prediction_sets(ws: Workspace) -> list[dict[str, Any]]:
    """Every stored prediction set, oldest first."""
    with ws.session() as s:
        return [
            _set_dict(ws, row)
            for row in s.scalars(select(PredictionSet).order_by(PredictionSet.created_at))
        ]


def _find_set(ws: Workspace, set_id: str) -> dict[str, Any]:
    with ws.session() as s:
        row = s.get(PredictionSet, set_id)
        if row is None:
            raise NotFoundError(
                f"no prediction set {set_id!r}; list them with: outpost predictions list"
            )
        return _set_dict(ws, row)


def read_predictions(ws: Workspace, set_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The per-image records of a set, in file order (the first ``limit`` when given).

    Raises:
        NotFoundError: no such set, or its file is gone.
    """
    path = Path(_find_set(ws, set_id)["path"])
    if not path.is_file():
        raise NotFoundError(
            f"the file of prediction set {set_id} is missing ({path}); predict again"
        )
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                records.append(json.loads(line))
    return records


def get_prediction_set(ws: Workspace, set_id: str, limit: int = 20) -> dict[str, Any]:
    """One set with its first ``limit`` image records under ``images``.

    Raises:
        NotFoundError: no such set, or its file is gone.
        InvalidArgumentError: a negative limit.
    """
    if limit < 0:
        raise InvalidArgumentError(f"limit must be 0 or more, got {limit!r}")
    out = _find_set(ws, set_id)
    out["images_shown"] = read_predictions(ws, set_id, limit) if limit else []
    return out


def to_prelabels(
    ws: Workspace,
    prediction_set_id: str,
    dataset: str,
    *,
    min_score: float = 0.25,
    only_status: Sequence[str] = ("unlabelled",),
) -> dict[str, Any]:
    """Store a prediction set's detections as proposals in a dataset's draft.

    Each record finds its draft image by sha256 first, then by file name (the whole
    relative name, then the base name when only one draft image has it). Images whose label
    status is not in ``only_status`` are left alone, as are records without a match. Their
    earlier proposals are replaced and they become ``needs_review``; detections scoring
    below ``min_score`` and of classes the dataset lacks (by name) are dropped. One journal
    entry: one undo removes it all.

    Returns:
        :func:`desktop_app.core.dataset_prelabel.store_proposals`' summary plus
        ``prediction_set``, ``unmatched`` (records without a draft image) and
        ``not_in_status`` (matched images left alone).

    Raises:
        NotFoundError: no such set or dataset.
        InvalidArgumentError: ``min_score`` outside 0..1, a bad status, or a
            classification dataset.
    """
    from desktop_app.core.dataset_edit import resolve_version

    if not 0.0 <= float(min_score) <= 1.0:
        raise InvalidArgumentError(f"min_score must be between 0 and 1, got {min_score!r}")
    statuses = set(check_statuses(only_status))
    records = read_predictions(ws, prediction_set_id)
    with ws.session() as s:
        ds, draft = resolve_version(s, dataset, "draft")
        if ds.task == "classify":
            raise InvalidArgumentError(
                f"dataset {dataset!r} is a classification dataset; proposals are boxes and "
                "need a detection dataset"
            )
        items = s.execute(
            select(DatasetItem.file_name, DatasetItem.image_sha256, DatasetItem.label_status)
            .where(DatasetItem.version_id == draft.id)
            .order_by(DatasetItem.file_name)
        ).all()
    by_sha: dict[str, str] = {}
    by_name = {fn: status for fn, _, status in items}
    by_base: dict[str, list[str]] = {}
    for name, sha, _ in items:
        by_sha.setdefault(sha, name)
        by_base.setdefault(PurePosixPath(name).name, []).append(name)
    found: dict[str, list[Proposal]] = {}
    unmatched: list[str] = []
    not_in_status = 0
    for rec in records:
        fn: str | None = by_sha.get(rec.get("sha256", ""))
        if fn is None and rec["file"] in by_name:
            fn = rec["file"]
        if fn is None:
            same_base = by_base.get(PurePosixPath(rec["file"]).name, [])
            fn = same_base[0] if len(same_base) == 1 else None
        if fn is None:
            unmatched.append(rec["file"])
            continue
        if by_name[fn] not in statuses:
            not_in_status += 1
            continue
        found[fn] = [
            (d["class"], float(d["score"]), [float(v) for v in d["xyxy"]])
            for d in rec["detections"]
            if float(d["score"]) >= min_score
        ]
    if found:
        out = store_proposals(ws, dataset, found, what=f"pre-label from {prediction_set_id}:")
    else:
        out = {
            "dataset": dataset,
            "images": 0,
            "proposals": 0,
            "empty_images": 0,
            "skipped_classes": {},
            "added_classes": [],
            "files": [],
        }
    return {
        **out,
        "prediction_set": prediction_set_id,
        "unmatched": unmatched,
        "not_in_status": not_in_status,
    }
