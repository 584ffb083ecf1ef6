"""Model-assisted pre-labelling of a dataset's draft, and the review of its proposals.

:func:`prelabel` runs an exported package (:class:`runtimes.predictor.Predictor`) over the
draft's unlabelled images and stores what it finds as proposals: annotations carrying a
``score``, on images marked ``needs_review``. Model classes map to the dataset's classes by
name. Everything it writes is one journal entry, so one undo removes it.

Reviewing: :func:`review` accepts an image's proposals (the scores are dropped, the image
becomes ``labelled``) or rejects them (proposals removed; the image goes back to
``unlabelled``, or ``labelled`` when annotations someone added by hand remain).
:func:`accept_all` accepts every image under review whose proposals all score at least
``min_score``. Editing a proposal before accepting it is ordinary editing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from desktop_app.core.blobs import require_blob
from desktop_app.core.dataset_edit import DraftEditor, find_dataset, item_dict, resolve_version
from desktop_app.core.dataset_records import LABEL_STATUSES, Annotation, Progress
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import DatasetItem

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

Proposal = tuple[str, float, Sequence[float]]  # model class name, score, xyxy in pixels

__all__ = ["accept_all", "check_statuses", "prelabel", "review", "store_proposals"]


def prelabel(
    ws: Workspace,
    name: str,
    *,
    export_id: str | None = None,
    package: Path | str | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    only_status: Sequence[str] = ("unlabelled",),
    limit: int | None = None,
    add_missing_classes: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Propose annotations for the draft's images with an exported model.

    Each image whose label status is in ``only_status`` (by file name, at most ``limit``)
    is read from the blob store and predicted; its earlier proposals are replaced by the
    new ones (annotations without a score stay) and it is marked ``needs_review``, also
    when the model found nothing (so a person confirms it is background).

    Args:
        ws: The open workspace.
        name: The dataset's name.
        export_id: An export's id (or ``latest``) whose package to run.
        package: A ``.outpost.zip`` or extracted package folder (instead of ``export_id``).
        conf: Confidence threshold.
        iou: NMS IoU threshold.
        only_status: Which images to predict (label statuses).
        limit: At most this many images.
        add_missing_classes: Add model classes the dataset lacks (else their detections
            are skipped and counted).
        progress: Called as ``progress("prelabel", done, total)``.

    Returns:
        ``{"dataset", "images", "proposals", "empty_images", "skipped_classes":
        {model class: detections skipped}, "added_classes": [...], "files": [...]}``.

    Raises:
        NotFoundError: no such dataset, export or package, or a stored image is missing.
        InvalidArgumentError: neither or both of ``export_id`` and ``package``, bad
            thresholds or statuses, or a classification dataset.
        PackageError: the package cannot be opened or run.
    """
    statuses = _check_args(export_id, package, conf, iou, only_status, limit)
    pkg = _package_path(ws, export_id, package)
    with ws.session() as s:
        dataset, version = resolve_version(s, name, "draft")
        if dataset.task == "classify":
            raise InvalidArgumentError(
                f"dataset {name!r} is a classification dataset; pre-labelling proposes boxes "
                "and needs a detection dataset"
            )
        query = (
            select(DatasetItem.file_name, DatasetItem.image_sha256)
            .where(
                DatasetItem.version_id == version.id,
                DatasetItem.label_status.in_(statuses),
            )
            .order_by(DatasetItem.file_name)
        )
        if limit is not None:
            query = query.limit(limit)
        todo = [(fn, sha) for fn, sha in s.execute(query).all()]

    from runtimes.predictor import Predictor

    predictor = Predictor.from_path(pkg)
    found: dict[str, list[Proposal]] = {}
    try:
        for i, (fn, sha) in enumerate(todo, start=1):
            data = require_blob(ws.blobs, sha).read_bytes()
            dets, _ = predictor.predict_bytes(data, conf=conf, iou=iou)
            found[fn] = [
                (d["class_name"], float(d["confidence"]), [float(v) for v in d["xyxy"]])
                for d in dets.to_list()
            ]
            if progress is not None:
                progress("prelabel", i, len(todo))
    finally:
        predictor.close()

    return store_proposals(ws, name, found, add_missing_classes=add_missing_classes)


def store_proposals(
    ws: Workspace,
    name: str,
    found: Mapping[str, Sequence[Proposal]],
    *,
    add_missing_classes: bool = False,
    what: str = "pre-label",
) -> dict[str, Any]:
    """Store proposals in the draft: one journal entry, every listed image ``needs_review``.

    Each image's earlier proposals are replaced (annotations without a score stay); an image
    with no proposal is also marked for review (a person confirms it is background).

    Args:
        ws: The open workspace.
        name: The dataset's name.
        found: Draft file name → ``(model class name, score, xyxy pixels)`` proposals.
        add_missing_classes: Add class names the dataset lacks (else those proposals are
            skipped and counted).
        what: The journal summary's verb.

    Returns:
        ``{"dataset", "images", "proposals", "empty_images", "skipped_classes",
        "added_classes", "files"}`` as :func:`prelabel` describes.

    Raises:
        NotFoundError: no such dataset or draft image.
    """
    skipped: Counter[str] = Counter()
    added_classes: list[str] = []
    proposals = empty = 0
    with ws.session() as s:
        ed = DraftEditor(s, name)
        names = ed.class_names
        if add_missing_classes:
            for model_class in dict.fromkeys(c for props in found.values() for c, _, _ in props):
                if model_class not in names:
                    names.append(model_class)
                    added_classes.append(model_class)
            if added_classes:
                ed.set_class_names(names)
        for fn, proposed in found.items():
            item = ed.item(fn)
            boxes = [b for b in item.boxes if Annotation.from_json(b).score is None]
            new = 0
            for class_name, score, xyxy in proposed:
                if class_name not in names:
                    skipped[class_name] += 1
                    continue
                box = _clip(xyxy, item.width, item.height)
                if box is None:
                    continue
                ann = Annotation.from_xyxy(names.index(class_name), *box, score=round(score, 6))
                boxes.append(ann.to_json())
                new += 1
            proposals += new
            empty += new == 0
            ed.set_item(item, boxes, "needs_review")
        n = len(found)
        ed.commit("prelabel", f"{what} {n} image{'s' if n != 1 else ''} ({proposals} proposals)")
    return {
        "dataset": name,
        "images": len(found),
        "proposals": proposals,
        "empty_images": empty,
        "skipped_classes": dict(sorted(skipped.items())),
        "added_classes": added_classes,
        "files": sorted(found),
    }


def review(ws: Workspace, name: str, file_name: str, *, accept: bool = True) -> dict[str, Any]:
    """Accept or reject the proposals of one image under review; returns the updated item.

    Raises:
        NotFoundError: no such dataset or image.
        InvalidArgumentError: the image is not under review (``needs_review``).
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        item = ed.item(file_name)
        if item.label_status != "needs_review":
            raise InvalidArgumentError(
                f"{name}/{file_name} is {item.label_status}, not under review; nothing to "
                "accept or reject"
            )
        if accept:
            boxes = [_strip_score(b) for b in item.boxes]
            ed.set_item(item, boxes, "labelled")
        else:
            boxes = [b for b in item.boxes if Annotation.from_json(b).score is None]
            ed.set_item(item, boxes, "labelled" if boxes else "unlabelled")
        verb = "accept" if accept else "reject"
        ed.commit("review", f"{verb} the proposals of {file_name}")
        return item_dict(item, ed.class_names)


def accept_all(ws: Workspace, name: str, min_score: float = 0.0) -> dict[str, Any]:
    """Accept every image under review whose proposals all score at least ``min_score``.

    Images with a weaker proposal stay under review. One journal entry.

    Returns:
        ``{"dataset", "accepted", "left", "files"}`` (``files``: the accepted images).

    Raises:
        NotFoundError: no such dataset.
        InvalidArgumentError: ``min_score`` outside 0..1.
    """
    if not 0.0 <= float(min_score) <= 1.0:
        raise InvalidArgumentError(f"min_score must be between 0 and 1, got {min_score!r}")
    with ws.session() as s:
        find_dataset(s, name)
        ed = DraftEditor(s, name)
        accepted: list[str] = []
        left = 0
        for item in ed.all_items():
            if item.label_status != "needs_review":
                continue
            scores = [Annotation.from_json(b).score for b in item.boxes]
            if any(sc is not None and sc < min_score for sc in scores):
                left += 1
                continue
            ed.set_item(item, [_strip_score(b) for b in item.boxes], "labelled")
            accepted.append(item.file_name)
        ed.commit("review", f"accept the proposals of {len(accepted)} images")
    return {"dataset": name, "accepted": len(accepted), "left": left, "files": accepted}


def _check_args(
    export_id: str | None,
    package: Path | str | None,
    conf: float,
    iou: float,
    only_status: Sequence[str],
    limit: int | None,
) -> list[str]:
    if (export_id is None) == (package is None):
        raise InvalidArgumentError("pass either an export id or a package path to pre-label with")
    for label, value in (("conf", conf), ("iou", iou)):
        if not 0.0 <= float(value) <= 1.0:
            raise InvalidArgumentError(f"{label} must be between 0 and 1, got {value!r}")
    if limit is not None and limit < 1:
        raise InvalidArgumentError(f"limit must be 1 or more, got {limit!r}")
    return check_statuses(only_status)


def check_statuses(only_status: Sequence[str]) -> list[str]:
    """The label statuses as a list, or InvalidArgumentError for an unknown or empty one."""
    statuses = [only_status] if isinstance(only_status, str) else list(only_status)
    bad = [st for st in statuses if st not in LABEL_STATUSES]
    if bad or not statuses:
        raise InvalidArgumentError(
            f"label status {bad[0] if bad else None!r} is not valid; use {', '.join(LABEL_STATUSES)}"
        )
    return statuses


def _package_path(ws: Workspace, export_id: str | None, package: Path | str | None) -> Path:
    if package is not None:
        path = Path(package).expanduser()
        if not path.exists():
            raise NotFoundError(
                f"{path} does not exist; pass a .outpost.zip or an extracted package folder"
            )
        return path
    from desktop_app.core.exports import get_export

    exp = get_export(ws, str(export_id))
    if not exp.package_path:
        raise NotFoundError(
            f"export {exp.id} has no package ({exp.status}); pick a completed export"
        )
    path = ws.resolve(exp.package_path)
    if not path.exists():
        raise NotFoundError(f"the package of export {exp.id} is missing ({path}); export again")
    return path


def _clip(
    xyxy: Sequence[float], width: int, height: int
) -> tuple[float, float, float, float] | None:
    """Normalised corners of a pixel box clipped to the image; None when nothing is left."""
    x0, y0, x1, y1 = np.clip(np.asarray(xyxy, dtype=np.float64), 0.0, [width, height] * 2)
    if not (x1 > x0 and y1 > y0):
        return None
    return (float(x0) / width, float(y0) / height, float(x1) / width, float(y1) / height)


def _strip_score(row: Sequence[Any]) -> list[Any]:
    """A stored box without its ``score`` extra."""
    new = list(row)
    if len(new) > 5 and isinstance(new[5], dict):
        extra = {k: v for k, v in new[5].items() if k != "score"}
        new = new[:5] + ([extra] if extra else [])
    return new
