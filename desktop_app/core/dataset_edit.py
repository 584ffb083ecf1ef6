"""Editing a dataset's draft: boxes, polygons, label status, classes and added images.

Every edit goes to the draft (:mod:`desktop_app.core.dataset_draft`; made from the latest
version on the first edit), so numbered versions never change. Each operation runs in one
transaction: it changes the draft's items, recomputes the draft's counts and content hash,
records the dataset's "last change", and writes one :class:`AnnotationEdit` journal entry
holding the before and after state of every item (and of the class list) it touched, so
:func:`undo` and :func:`redo` restore the exact state. A new edit clears the redo stack.

The journal's ``changes`` are ``{"items": {file_name: {"before": [boxes, status],
"after": [boxes, status]}}, "class_names": {"before": [...], "after": [...]},
"added": [item, ...]}`` (each key optional). Items are keyed by file name, which is unique
in the draft and survives undoing and redoing added images.

Images are addressed by file name, annotations by their index in the image's list.
Coordinates the caller passes and the item dictionaries return are in image pixels
(``xyxy``), with the normalised box alongside. ``Dataset.class_names`` follows the working
class list: class operations (and their undo) update it together with the draft's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from desktop_app.core.blobs import BlobBatch, register_blobs
from desktop_app.core.dataset_draft import ensure_draft, get_draft, latest_version, refresh_version
from desktop_app.core.dataset_draft import touch as touch_dataset
from desktop_app.core.dataset_records import (
    LABEL_STATUSES,
    Annotation,
    ScannedDataset,
    SourceImage,
    box_from_pixels,
    handing_images_to,
    inspect_images,
    is_image_name,
    snap,
)
from desktop_app.core.errors import (
    AlreadyExistsError,
    DatasetFormatError,
    InvalidArgumentError,
    NotFoundError,
    WorkspaceError,
)
from desktop_app.core.models import AnnotationEdit, Blob, Dataset, DatasetItem, DatasetVersion

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

__all__ = [
    "DraftEditor",
    "add_box",
    "add_class",
    "add_images",
    "add_polygon",
    "delete_annotation",
    "delete_class",
    "get_item",
    "history",
    "item_dict",
    "list_classes",
    "list_items",
    "merge_classes",
    "move_box",
    "redo",
    "rename_class",
    "set_annotation_class",
    "set_image_class",
    "set_label_status",
    "undo",
    "update_box",
]

SPLITS = ("train", "val", "test")
VersionRef = str | int | None


# ---- reading ---------------------------------------------------------------------------


def find_dataset(session: Session, name: str) -> Dataset:
    """The dataset row by name.

    Raises:
        NotFoundError: no such dataset.
    """
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFoundError(f"no dataset named {name!r}; list datasets with `outpost dataset list`")
    return dataset


def resolve_version(
    session: Session, name: str, version: VersionRef = None
) -> tuple[Dataset, DatasetVersion]:
    """The version to read: None or ``"draft"`` → the draft when there is one, else the latest
    version (what a draft would start from); ``"v2"``, ``2`` (or a tag) → that version.

    Raises:
        NotFoundError: no such dataset or version.
    """
    if version is None or (isinstance(version, str) and version.strip().lower() == "draft"):
        dataset = find_dataset(session, name)
        row = get_draft(session, dataset) or latest_version(session, dataset)
        if row is None:
            raise NotFoundError(f"dataset {name!r} has no versions; import it first")
        return dataset, row
    from desktop_app.core.datasets import find_version

    return find_version(session, name, version)


def item_dict(item: DatasetItem, class_names: Sequence[str]) -> dict[str, Any]:
    """An item as the GUI and the CLI see it: annotations with class names and pixel boxes.

    Each annotation has ``index``, ``class_id``, ``class_name``, ``xyxy`` (pixels),
    ``xyxy_norm`` (0..1), ``polygons`` (flat pixel lists), ``keypoints`` (pixel ``x, y, v``
    triplets), ``score`` (a proposal's confidence, else None) and the VOC/COCO flags.
    """
    w, h = item.width, item.height
    annotations = []
    for index, row in enumerate(item.boxes):
        a = Annotation.from_json(row)
        x0, y0, x1, y1 = a.xyxy
        kps = list(a.keypoints)
        for k in range(0, len(kps) - 2, 3):
            kps[k] *= w
            kps[k + 1] *= h
        annotations.append(
            {
                "index": index,
                "class_id": a.cls,
                "class_name": class_names[a.cls] if 0 <= a.cls < len(class_names) else str(a.cls),
                "xyxy": [x0 * w, y0 * h, x1 * w, y1 * h],
                "xyxy_norm": [x0, y0, x1, y1],
                "polygons": [
                    [v * (w if i % 2 == 0 else h) for i, v in enumerate(p)] for p in a.polygons
                ],
                "keypoints": kps,
                "score": a.score,
                "iscrowd": a.iscrowd,
                "difficult": a.difficult,
                "truncated": a.truncated,
            }
        )
    return {
        "file_name": item.file_name,
        "sha256": item.image_sha256,
        "width": w,
        "height": h,
        "split": item.split,
        "label_status": item.label_status,
        "annotations": annotations,
    }


def list_items(
    ws: Workspace,
    name: str,
    version: VersionRef = None,
    *,
    status: str | None = None,
    class_name: str | None = None,
    split: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The images of a version (the draft by default), by file name, filtered and paged.

    Args:
        ws: The open workspace.
        name: The dataset's name.
        version: None or ``"draft"`` (the working copy), or ``"v2"``/``2``.
        status: Only images with this label status.
        class_name: Only images with at least one annotation of this class.
        split: Only images of this split.
        offset: Skip this many matching images.
        limit: At most this many images (None: all).

    Raises:
        NotFoundError: no such dataset or version.
        InvalidArgumentError: an unknown status, split or class, or a negative offset/limit.
    """
    if status is not None:
        _check_status(status)
    if split is not None and split not in SPLITS:
        raise InvalidArgumentError(f"split {split!r} is not valid; use one of {', '.join(SPLITS)}")
    if offset < 0 or (limit is not None and limit < 0):
        raise InvalidArgumentError("offset and limit must be 0 or more")
    with ws.session() as s:
        _, row = resolve_version(s, name, version)
        names = list(row.class_names)
        class_id = _class_id(names, class_name, name) if class_name is not None else None
        query = select(DatasetItem).where(DatasetItem.version_id == row.id)
        if status is not None:
            query = query.where(DatasetItem.label_status == status)
        if split is not None:
            query = query.where(DatasetItem.split == split)
        out: list[dict[str, Any]] = []
        skipped = 0
        for item in s.scalars(query.order_by(DatasetItem.file_name)):
            if class_id is not None and not any(int(b[0]) == class_id for b in item.boxes):
                continue
            if skipped < offset:
                skipped += 1
                continue
            if limit is not None and len(out) >= limit:
                break
            out.append(item_dict(item, names))
        return out


def get_item(
    ws: Workspace, name: str, file_name: str, version: VersionRef = None
) -> dict[str, Any]:
    """One image of a version (the draft by default); see :func:`item_dict`.

    Raises:
        NotFoundError: no such dataset, version or image.
    """
    with ws.session() as s:
        _, row = resolve_version(s, name, version)
        return item_dict(_find_item(s, row, file_name, name), list(row.class_names))


def list_classes(ws: Workspace, name: str, version: VersionRef = None) -> list[dict[str, Any]]:
    """The classes of a version (the draft by default) with their annotation and image counts."""
    with ws.session() as s:
        _, row = resolve_version(s, name, version)
        names = list(row.class_names)
        boxes = s.scalars(select(DatasetItem.boxes).where(DatasetItem.version_id == row.id))
        counts = [0] * len(names)
        images = [0] * len(names)
        for item_boxes in boxes:
            seen = set()
            for b in item_boxes:
                cid = int(b[0])
                if 0 <= cid < len(names):
                    counts[cid] += 1
                    seen.add(cid)
            for cid in seen:
                images[cid] += 1
        return [
            {"id": i, "name": n, "annotations": counts[i], "images": images[i]}
            for i, n in enumerate(names)
        ]


# ---- the editor ------------------------------------------------------------------------


class DraftEditor:
    """One operation on a dataset's draft, inside the caller's session.

    Collects the before/after state of what it changes; :meth:`commit` refreshes the draft,
    touches the dataset and writes the journal entry.
    """

    def __init__(self, session: Session, name: str) -> None:
        self.session = session
        self.name = name
        self.dataset = find_dataset(session, name)
        self.draft = ensure_draft(session, self.dataset)
        self.items: dict[str, dict[str, Any]] = {}
        self.class_change: dict[str, list[Any]] | None = None
        self.added: list[dict[str, Any]] = []

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self.draft.class_names]

    def require_boxes(self, what: str) -> None:
        """Refuse a box operation on a classification dataset."""
        if self.dataset.task == "classify":
            raise InvalidArgumentError(
                f"dataset {self.name!r} is a classification dataset and has no boxes to {what}; "
                "set the image's class instead (set_image_class / `outpost dataset label --image-class`)"
            )

    def item(self, file_name: str) -> DatasetItem:
        """The draft's item, or NotFoundError."""
        return _find_item(self.session, self.draft, file_name, self.name)

    def all_items(self) -> list[DatasetItem]:
        return list(
            self.session.scalars(
                select(DatasetItem)
                .where(DatasetItem.version_id == self.draft.id)
                .order_by(DatasetItem.file_name)
            )
        )

    def class_id(self, class_name: str) -> int:
        return _class_id(self.class_names, class_name, self.name)

    def annotation(self, item: DatasetItem, index: int) -> Annotation:
        """The annotation at ``index`` of an item, or InvalidArgumentError."""
        n = len(item.boxes)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            valid = f"0..{n - 1}" if n else "none: the image has no annotations"
            raise InvalidArgumentError(
                f"{self.name}/{item.file_name}: annotation index {index!r} is out of range ({valid})"
            )
        return Annotation.from_json(item.boxes[index])

    def set_item(self, item: DatasetItem, boxes: list[Any], status: str) -> None:
        """Change an item's boxes and label status, recording its first "before" state."""
        entry = self.items.get(item.file_name)
        if entry is None:
            entry = {"before": [_copy_boxes(item.boxes), item.label_status]}
            self.items[item.file_name] = entry
        item.boxes = _copy_boxes(boxes)
        item.label_status = status
        entry["after"] = [_copy_boxes(boxes), status]

    def set_class_names(self, names: list[str]) -> None:
        """Change the draft's class list (and the dataset's mirror of it)."""
        if self.class_change is None:
            self.class_change = {"before": self.class_names}
        self.draft.class_names = list(names)
        self.dataset.class_names = list(names)
        self.class_change["after"] = list(names)

    def add_item(self, record: dict[str, Any]) -> None:
        """Add a new item to the draft (``record`` as :func:`_item_record` makes it)."""
        self.session.add(_new_item(self.draft.id, record))
        self.added.append(dict(record))

    def commit(self, op: str, summary: str) -> AnnotationEdit | None:
        """Refresh the draft, touch the dataset and journal the change (None when nothing changed)."""
        changes: dict[str, Any] = {}
        items = {fn: e for fn, e in self.items.items() if e["before"] != e["after"]}
        if items:
            changes["items"] = items
        if self.class_change is not None and self.class_change["before"] != self.class_change.get(
            "after"
        ):
            changes["class_names"] = self.class_change
        if self.added:
            changes["added"] = self.added
        self.session.flush()
        refresh_version(self.session, self.draft)
        if not changes:
            return None
        touch_dataset(self.dataset)
        self.session.execute(
            delete(AnnotationEdit).where(
                AnnotationEdit.dataset_id == self.dataset.id, AnnotationEdit.undone.is_(True)
            )
        )
        entry = AnnotationEdit(dataset_id=self.dataset.id, op=op, summary=summary, changes=changes)
        self.session.add(entry)
        self.session.flush()
        return entry


# ---- box operations --------------------------------------------------------------------


def add_box(
    ws: Workspace, name: str, file_name: str, class_name: str, xyxy_pixels: Sequence[float]
) -> dict[str, Any]:
    """Add a box (pixel corners) of ``class_name`` to an image; an unlabelled image becomes labelled.

    Returns:
        The updated item (see :func:`item_dict`).

    Raises:
        NotFoundError: no such dataset or image.
        InvalidArgumentError: unknown class, a box outside the image or without area, or a
            classification dataset.
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        ed.require_boxes("add")
        item = ed.item(file_name)
        cid = ed.class_id(class_name)
        x0, y0, x1, y1 = _norm_box(xyxy_pixels, item, name)
        boxes = [*item.boxes, Annotation.from_xyxy(cid, x0, y0, x1, y1).to_json()]
        ed.set_item(item, boxes, _labelled_if_unlabelled(item.label_status))
        ed.commit("add_box", f"add a {class_name} box to {file_name}")
        return item_dict(item, ed.class_names)


def add_polygon(
    ws: Workspace,
    name: str,
    file_name: str,
    class_name: str,
    points_pixels: Sequence[Sequence[float]],
) -> dict[str, Any]:
    """Add a polygon (``[(x, y), ...]`` in pixels, 3 points or more); its box is its bounds.

    Points may lie up to 1 pixel outside the image (they are clipped), like boxes.

    Raises:
        NotFoundError: no such dataset or image.
        InvalidArgumentError: fewer than 3 points, points outside the image, no area, an
            unknown class, or a classification dataset.
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        ed.require_boxes("add")
        item = ed.item(file_name)
        cid = ed.class_id(class_name)
        pts = _points(points_pixels, name, file_name)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, y0, x1, y1 = _norm_box((min(xs), min(ys), max(xs), max(ys)), item, name)
        w, h = item.width, item.height
        flat: list[float] = []
        for x, y in pts:
            flat += [snap(min(max(x, 0.0), w) / w), snap(min(max(y, 0.0), h) / h)]
        ann = Annotation.from_xyxy(cid, x0, y0, x1, y1, polygons=(tuple(flat),))
        ed.set_item(item, [*item.boxes, ann.to_json()], _labelled_if_unlabelled(item.label_status))
        ed.commit("add_polygon", f"add a {class_name} polygon to {file_name}")
        return item_dict(item, ed.class_names)


def update_box(
    ws: Workspace, name: str, file_name: str, index: int, xyxy_pixels: Sequence[float]
) -> dict[str, Any]:
    """Move or resize annotation ``index`` to new pixel corners.

    Its polygons and keypoints follow the box (mapped from the old box onto the new one).

    Raises:
        NotFoundError: no such dataset or image.
        InvalidArgumentError: index out of range, a box outside the image or without area, or
            a classification dataset.
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        ed.require_boxes("resize")
        item = ed.item(file_name)
        old = ed.annotation(item, index)
        new = _refit(old, _norm_box(xyxy_pixels, item, name))
        boxes = list(item.boxes)
        boxes[index] = new.to_json()
        ed.set_item(item, boxes, item.label_status)
        ed.commit("update_box", f"resize annotation {index} of {file_name}")
        return item_dict(item, ed.class_names)


def move_box(
    ws: Workspace, name: str, file_name: str, index: int, dx: float, dy: float
) -> dict[str, Any]:
    """Shift annotation ``index`` by ``(dx, dy)`` pixels, stopping at the image's edges.

    Raises:
        NotFoundError: no such dataset or image.
        InvalidArgumentError: index out of range, a non-finite shift, or a classification dataset.
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        ed.require_boxes("move")
        item = ed.item(file_name)
        old = ed.annotation(item, index)
        try:
            fdx, fdy = float(dx), float(dy)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"shift ({dx!r}, {dy!r}) is not a pair of numbers") from None
        if not all(abs(v) < float("inf") for v in (fdx, fdy)):
            raise InvalidArgumentError(f"shift ({dx!r}, {dy!r}) is not finite; pass pixel offsets")
        x0, y0, x1, y1 = old.xyxy
        ndx = min(max(fdx / item.width, -max(x0, 0.0)), max(1.0 - x1, 0.0))
        ndy = min(max(fdy / item.height, -max(y0, 0.0)), max(1.0 - y1, 0.0))
        new = _refit(old, (x0 + ndx, y0 + ndy, x1 + ndx, y1 + ndy))
        boxes = list(item.boxes)
        boxes[index] = new.to_json()
        ed.set_item(item, boxes, item.label_status)
        ed.commit("move_box", f"move annotation {index} of {file_name}")
        return item_dict(item, ed.class_names)


def delete_annotation(ws: Workspace, name: str, file_name: str, index: int) -> dict[str, Any]:
    """Delete annotation ``index`` of an image (its label status stays as it is).

    Raises:
        NotFoundError: no such dataset or image.
        InvalidArgumentError: index out of range.
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        item = ed.item(file_name)
        ed.annotation(item, index)
        boxes = [b for i, b in enumerate(item.boxes) if i != index]
        ed.set_item(item, boxes, item.label_status)
        ed.commit("delete_annotation", f"delete annotation {index} of {file_name}")
        return item_dict(item, ed.class_names)


def set_annotation_class(
    ws: Workspace, name: str, file_name: str, index: int, class_name: str
) -> dict[str, Any]:
    """Give annotation ``index`` of an image another class.

    Raises:
        NotFoundError: no such dataset or image.
        InvalidArgumentError: index out of range or unknown class.
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        item = ed.item(file_name)
        ed.annotation(item, index)
        cid = ed.class_id(class_name)
        boxes = _copy_boxes(item.boxes)
        boxes[index][0] = cid
        ed.set_item(item, boxes, item.label_status)
        ed.commit("set_class", f"set annotation {index} of {file_name} to {class_name}")
        return item_dict(item, ed.class_names)


def set_image_class(ws: Workspace, name: str, file_name: str, class_name: str) -> dict[str, Any]:
    """Classification datasets: set an image's class (its one whole-image annotation); labelled.

    Raises:
        NotFoundError: no such dataset or image.
        InvalidArgumentError: unknown class, or the dataset is not a classification dataset.
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        if ed.dataset.task != "classify":
            raise InvalidArgumentError(
                f"dataset {name!r} is a {ed.dataset.task} dataset, not classification; "
                "add boxes instead (add_box / `outpost dataset label --add`)"
            )
        item = ed.item(file_name)
        cid = ed.class_id(class_name)
        ed.set_item(item, [Annotation.whole_image(cid).to_json()], "labelled")
        ed.commit("set_image_class", f"set the class of {file_name} to {class_name}")
        return item_dict(item, ed.class_names)


def set_label_status(
    ws: Workspace, name: str, file_names: Sequence[str], status: str
) -> list[dict[str, Any]]:
    """Set the label status (labelled, unlabelled, needs_review) of one or more images.

    Raises:
        NotFoundError: no such dataset, or one of the images is not in it (nothing changes).
        InvalidArgumentError: an unknown status or no file names.
    """
    _check_status(status)
    if isinstance(file_names, str):
        file_names = [file_names]
    if not file_names:
        raise InvalidArgumentError("name at least one image to set the label status of")
    with ws.session() as s:
        ed = DraftEditor(s, name)
        items = [ed.item(fn) for fn in dict.fromkeys(file_names)]
        for item in items:
            ed.set_item(item, list(item.boxes), status)
        what = items[0].file_name if len(items) == 1 else f"{len(items)} images"
        ed.commit("set_status", f"mark {what} {status}")
        return [item_dict(item, ed.class_names) for item in items]


# ---- classes ---------------------------------------------------------------------------


def add_class(ws: Workspace, name: str, class_name: str) -> list[dict[str, Any]]:
    """Append a class to the draft's class list; returns the classes (see :func:`list_classes`).

    Raises:
        AlreadyExistsError: the class exists.
        InvalidArgumentError: an empty name.
    """
    new = _check_class_name(class_name)
    with ws.session() as s:
        ed = DraftEditor(s, name)
        if new in ed.class_names:
            raise AlreadyExistsError(f"dataset {name!r} already has a class {new!r}")
        ed.set_class_names([*ed.class_names, new])
        ed.commit("add_class", f"add class {new}")
    return list_classes(ws, name)


def rename_class(ws: Workspace, name: str, old: str, new: str) -> list[dict[str, Any]]:
    """Rename a class (its id and annotations stay).

    Raises:
        InvalidArgumentError: ``old`` is not a class, or ``new`` is empty.
        AlreadyExistsError: ``new`` is already a class.
    """
    new = _check_class_name(new)
    with ws.session() as s:
        ed = DraftEditor(s, name)
        cid = ed.class_id(old)
        if new in ed.class_names:
            raise AlreadyExistsError(
                f"dataset {name!r} already has a class {new!r}; merge the two classes instead"
            )
        names = ed.class_names
        names[cid] = new
        ed.set_class_names(names)
        ed.commit("rename_class", f"rename class {old} to {new}")
    return list_classes(ws, name)


def merge_classes(
    ws: Workspace, name: str, sources: Sequence[str], into: str
) -> list[dict[str, Any]]:
    """Merge classes: annotations of ``sources`` become ``into``; the sources are removed.

    ``into`` must be a class (it may also be listed among the sources). Later classes move
    down to fill the gaps and every annotation of the draft is renumbered.

    Raises:
        InvalidArgumentError: an unknown class, or nothing to merge.
    """
    if isinstance(sources, str):
        sources = [sources]
    with ws.session() as s:
        ed = DraftEditor(s, name)
        ed.class_id(into)
        for src in sources:
            ed.class_id(src)
        drop = {src for src in sources if src != into}
        if not drop:
            raise InvalidArgumentError(
                f"nothing to merge into {into!r}; name at least one other class"
            )
        _remap_classes(ed, drop, into)
        ed.commit("merge_classes", f"merge {', '.join(sorted(drop))} into {into}")
    return list_classes(ws, name)


def delete_class(
    ws: Workspace, name: str, class_name: str, *, remap_to: str | None = None
) -> list[dict[str, Any]]:
    """Delete a class. Without ``remap_to`` its annotations are deleted (images keep their
    label status); with it they move to that class. Later classes move down.

    Raises:
        InvalidArgumentError: an unknown class, or ``remap_to`` equals the deleted class.
    """
    with ws.session() as s:
        ed = DraftEditor(s, name)
        ed.class_id(class_name)
        if remap_to is not None:
            ed.class_id(remap_to)
            if remap_to == class_name:
                raise InvalidArgumentError(
                    f"cannot remap class {class_name!r} to itself; name another class"
                )
        _remap_classes(ed, {class_name}, remap_to)
        what = f"delete class {class_name}" + (f" (to {remap_to})" if remap_to else "")
        ed.commit("delete_class", what)
    return list_classes(ws, name)


def _remap_classes(ed: DraftEditor, drop: set[str], into: str | None) -> None:
    """Remove the classes ``drop``; their annotations go to ``into`` (or are deleted)."""
    old_names = ed.class_names
    new_names = [n for n in old_names if n not in drop]
    mapping: dict[int, int | None] = {}
    for i, n in enumerate(old_names):
        if n in drop:
            mapping[i] = new_names.index(into) if into is not None else None
        else:
            mapping[i] = new_names.index(n)
    for item in ed.all_items():
        boxes: list[Any] = []
        for row in item.boxes:
            target = mapping.get(int(row[0]), int(row[0]))
            if target is None:
                continue
            new_row = _copy_boxes([row])[0]
            new_row[0] = target
            boxes.append(new_row)
        if boxes != item.boxes:
            ed.set_item(item, boxes, item.label_status)
    ed.set_class_names(new_names)


# ---- added images ----------------------------------------------------------------------


def add_images(
    ws: Workspace,
    name: str,
    path: Path | str | Sequence[Path | str],
    *,
    split: str | None = None,
) -> dict[str, Any]:
    """Add images (a folder, searched recursively, or image files) to the draft, unlabelled.

    Every image is hashed and decoded before anything is stored; one bad image adds nothing.
    A folder's images keep their path under the folder as file name; single files their
    own name. Without ``split`` each image's split is drawn from its file name (stable) with
    the draft's val and test fractions. Undoable (undo removes the items; the stored blobs
    stay until a workspace clean-up).

    Returns:
        ``{"dataset", "added", "files", "duplicates": [{"file_name", "same_as"}],
        "splits": {...}}``; ``duplicates`` lists added images whose content the draft
        already held (they are added all the same).

    Raises:
        NotFoundError: no such dataset or path.
        InvalidArgumentError: no images found, or an unknown split.
        AlreadyExistsError: an image's file name is already in the draft (nothing added).
        DatasetFormatError: an image cannot be read, or is cut short or damaged (nothing added).
    """
    if split is not None and split not in SPLITS:
        raise InvalidArgumentError(f"split {split!r} is not valid; use one of {', '.join(SPLITS)}")
    root, sources = _image_sources(path)
    batch = BlobBatch(ws.blobs)  # each image is staged from the bytes its check just read
    try:
        with handing_images_to(batch.add):
            scanned = inspect_images(root, "images", [], sources, has_source_split=False)
        return _add_checked_images(ws, name, scanned, split, batch)
    finally:
        batch.discard()  # what a failure left staged (the stored blobs stay)


def _add_checked_images(
    ws: Workspace, name: str, scanned: ScannedDataset, split: str | None, batch: BlobBatch
) -> dict[str, Any]:
    created: list[str] = []
    try:
        batch.commit([img.sha256 for img in scanned.images], created)
        sizes = {img.sha256: img.size for img in scanned.images}
        with ws.session() as s:
            ed = DraftEditor(s, name)
            existing = dict(
                s.execute(
                    select(DatasetItem.file_name, DatasetItem.image_sha256).where(
                        DatasetItem.version_id == ed.draft.id
                    )
                ).all()
            )
            clash = [img.file_name for img in scanned.images if img.file_name in existing]
            if clash:
                more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
                raise AlreadyExistsError(
                    f"dataset {name!r} already has an image named {clash[0]!r}{more}; rename the file"
                )
            by_sha = {sha: fn for fn, sha in sorted(existing.items(), reverse=True)}
            register_blobs(s, sizes)
            duplicates = []
            splits: dict[str, int] = dict.fromkeys(SPLITS, 0)
            for img in scanned.images:
                if img.sha256 in by_sha:
                    duplicates.append({"file_name": img.file_name, "same_as": by_sha[img.sha256]})
                else:
                    by_sha[img.sha256] = img.file_name
                chosen = split or _drawn_split(img.file_name, ed.draft)
                splits[chosen] += 1
                ed.add_item(
                    {
                        "file_name": img.file_name,
                        "sha256": img.sha256,
                        "width": img.width,
                        "height": img.height,
                        "split": chosen,
                        "label_status": "unlabelled",
                        "boxes": [],
                    }
                )
            n = len(scanned.images)
            ed.commit("add_images", f"add {n} image{'s' if n != 1 else ''}")
    except IntegrityError as exc:
        _discard_blobs(ws, created)
        reason = str(exc.orig).splitlines()[0] if exc.orig else "constraint failed"
        raise WorkspaceError(
            f"adding images to {name!r} failed in the database ({reason}); run a workspace check"
        ) from None
    except BaseException:
        _discard_blobs(ws, created)
        raise
    return {
        "dataset": name,
        "added": len(scanned.images),
        "files": [img.file_name for img in scanned.images],
        "duplicates": duplicates,
        "splits": splits,
    }


def _image_sources(path: Path | str | Sequence[Path | str]) -> tuple[Path, list[SourceImage]]:
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    if not paths:
        raise InvalidArgumentError("name a folder or image files to add")
    sources: list[SourceImage] = []
    roots: list[Path] = []
    for p in paths:
        p = p.expanduser()
        if p.is_dir():
            folder = p.resolve()
            roots.append(folder)
            for f in sorted(folder.rglob("*")):
                rel = f.relative_to(folder)
                if f.is_file() and is_image_name(f.name) and not _hidden(rel.parts):
                    sources.append(SourceImage(rel.as_posix(), f, None, ()))
        elif p.is_file():
            if not is_image_name(p.name):
                raise InvalidArgumentError(
                    f"{p} is not an image file (by its suffix); pass .jpg, .png, ... files"
                )
            roots.append(p.resolve().parent)
            sources.append(SourceImage(p.name, p.resolve(), None, ()))
        else:
            raise NotFoundError(f"{p} does not exist; pass an image folder or image files")
    if not sources:
        raise InvalidArgumentError(f"no images found in {', '.join(map(str, paths))}")
    return Path(os.path.commonpath(roots)), sources


def _hidden(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def _drawn_split(file_name: str, draft: DatasetVersion) -> str:
    """A split drawn from the file name's hash with the draft's fractions (the same every time)."""
    u = int(hashlib.sha256(file_name.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    test = float(draft.test_fraction or 0.0)
    if u < test:
        return "test"
    if u < test + float(draft.val_fraction):
        return "val"
    return "train"


def _discard_blobs(ws: Workspace, shas: list[str]) -> None:
    """Remove blobs this call created unless the database references them."""
    if not shas:
        return
    try:
        with ws.session() as s:
            keep = set(s.scalars(select(Blob.sha256).where(Blob.sha256.in_(shas))))
    except Exception:  # the database itself failed: the blobs are ours
        keep = set()
    for sha in shas:
        if sha not in keep:
            ws.blobs.delete(sha)


# ---- undo / redo -----------------------------------------------------------------------


def undo(ws: Workspace, name: str) -> dict[str, Any]:
    """Revert the latest edit of the dataset's draft exactly; returns the journal entry.

    Raises:
        NotFoundError: no such dataset, or nothing to undo.
    """
    return _step(ws, name, redo=False)


def redo(ws: Workspace, name: str) -> dict[str, Any]:
    """Apply again the edit undone last; returns the journal entry.

    Raises:
        NotFoundError: no such dataset, or nothing to redo.
    """
    return _step(ws, name, redo=True)


def _step(ws: Workspace, name: str, *, redo: bool) -> dict[str, Any]:
    """Undo the newest applied edit, or redo the oldest undone one."""
    order = AnnotationEdit.id.asc() if redo else AnnotationEdit.id.desc()
    with ws.session() as s:
        dataset = find_dataset(s, name)
        entry = s.scalar(
            select(AnnotationEdit)
            .where(AnnotationEdit.dataset_id == dataset.id, AnnotationEdit.undone.is_(redo))
            .order_by(order)
            .limit(1)
        )
        if entry is None:
            raise NotFoundError(f"nothing to {'redo' if redo else 'undo'} in dataset {name!r}")
        _apply(s, dataset, entry, "after" if redo else "before")
        entry.undone = not redo
        return _entry_dict(entry)


def history(ws: Workspace, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The dataset's journal, newest first; undone entries (the redo stack) are flagged."""
    with ws.session() as s:
        dataset = find_dataset(s, name)
        rows = s.scalars(
            select(AnnotationEdit)
            .where(AnnotationEdit.dataset_id == dataset.id)
            .order_by(AnnotationEdit.id.desc())
            .limit(max(0, limit))
        )
        return [_entry_dict(r) for r in rows]


def _apply(s: Session, dataset: Dataset, entry: AnnotationEdit, side: str) -> None:
    """Put the draft in the ``side`` ("before" or "after") state of a journal entry."""
    draft = get_draft(s, dataset)
    if draft is None:
        raise NotFoundError(
            f"dataset {dataset.name!r} has no draft for its edit history; edit it again instead"
        )
    changes = entry.changes
    classes = changes.get("class_names")
    if classes is not None:
        draft.class_names = list(classes[side])
        dataset.class_names = list(classes[side])
    added = changes.get("added", [])
    if added and side == "before":
        s.execute(
            delete(DatasetItem).where(
                DatasetItem.version_id == draft.id,
                DatasetItem.file_name.in_([a["file_name"] for a in added]),
            )
        )
    elif added:
        for record in added:
            s.add(_new_item(draft.id, record))
    for fn, change in changes.get("items", {}).items():
        item = s.scalar(
            select(DatasetItem).where(
                DatasetItem.version_id == draft.id, DatasetItem.file_name == fn
            )
        )
        if item is None:
            raise NotFoundError(
                f"{dataset.name}/{fn} is no longer in the draft; the edit cannot be reverted"
            )
        boxes, status = change[side]
        item.boxes = _copy_boxes(boxes)
        item.label_status = status
    s.flush()
    refresh_version(s, draft)
    touch_dataset(dataset)


def _entry_dict(entry: AnnotationEdit) -> dict[str, Any]:
    changes = entry.changes or {}
    files = sorted(changes.get("items", {})) + [a["file_name"] for a in changes.get("added", [])]
    return {
        "id": entry.id,
        "op": entry.op,
        "summary": entry.summary,
        "undone": bool(entry.undone),
        "created_at": entry.created_at.isoformat(timespec="seconds") if entry.created_at else None,
        "images": len(files),
        "files": files[:20],
        "classes_changed": "class_names" in changes,
    }


# ---- helpers ---------------------------------------------------------------------------


def _find_item(s: Session, version: DatasetVersion, file_name: str, name: str) -> DatasetItem:
    item = s.scalar(
        select(DatasetItem).where(
            DatasetItem.version_id == version.id, DatasetItem.file_name == file_name
        )
    )
    if item is None:
        raise NotFoundError(
            f"dataset {name!r} ({version.label}) has no image {file_name!r}; "
            f"list them with `outpost dataset items {name}`"
        )
    return item


def _new_item(version_id: int, record: dict[str, Any]) -> DatasetItem:
    return DatasetItem(
        version_id=version_id,
        file_name=record["file_name"],
        image_sha256=record["sha256"],
        width=record["width"],
        height=record["height"],
        split=record["split"],
        label_status=record["label_status"],
        boxes=_copy_boxes(record["boxes"]),
    )


def _class_id(names: Sequence[str], class_name: str, dataset: str) -> int:
    if class_name in names:
        return list(names).index(class_name)
    known = ", ".join(names) if names else "none yet"
    raise InvalidArgumentError(
        f"dataset {dataset!r} has no class {class_name!r} (classes: {known}); "
        f"add it with `outpost dataset classes {dataset} add {class_name}`"
    )


def _check_class_name(class_name: str) -> str:
    clean = str(class_name).strip()
    if not clean or "\n" in clean:
        raise InvalidArgumentError(f"class name {class_name!r} is empty or spans lines; name it")
    return clean


def _check_status(status: str) -> None:
    if status not in LABEL_STATUSES:
        raise InvalidArgumentError(
            f"label status {status!r} is not valid; use one of {', '.join(LABEL_STATUSES)}"
        )


def _labelled_if_unlabelled(status: str) -> str:
    return "labelled" if status == "unlabelled" else status


def _copy_boxes(boxes: Iterable[Any]) -> list[Any]:
    """A deep copy of stored boxes (lists and their extras dict), so JSON columns see a new value."""
    out: list[Any] = []
    for row in boxes:
        new = list(row)
        if len(new) > 5 and isinstance(new[5], dict):
            new[5] = {
                k: ([list(p) for p in v] if k == "polygons" else list(v) if k == "keypoints" else v)
                for k, v in new[5].items()
            }
        out.append(new)
    return out


def _norm_box(
    corners: Sequence[float], item: DatasetItem, name: str
) -> tuple[float, float, float, float]:
    if len(corners) != 4:
        raise InvalidArgumentError(f"a box is 4 numbers x0 y0 x1 y1, got {len(corners)}")
    try:
        return box_from_pixels(corners, item.width, item.height, f"{name}/{item.file_name}")
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"box {list(corners)!r} is not 4 numbers ({exc})") from None
    except DatasetFormatError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _points(
    points: Sequence[Sequence[float]], name: str, file_name: str
) -> list[tuple[float, float]]:
    try:
        pts = [(float(p[0]), float(p[1])) for p in points]
        if any(len(p) != 2 for p in points):
            raise ValueError("each point is (x, y)")
    except (TypeError, ValueError, IndexError):
        raise InvalidArgumentError(
            f"{name}/{file_name}: a polygon is a list of (x, y) pixel points"
        ) from None
    if len(pts) < 3:
        raise InvalidArgumentError(
            f"{name}/{file_name}: a polygon needs 3 points or more, got {len(pts)}"
        )
    return pts


def _refit(old: Annotation, box: tuple[float, float, float, float]) -> Annotation:
    """``old`` with a new normalised box; polygons and labelled keypoints follow it."""
    ox0, oy0, ox1, oy1 = old.xyxy
    nx0, ny0, nx1, ny1 = box
    sx = (nx1 - nx0) / (ox1 - ox0) if ox1 > ox0 else 1.0
    sy = (ny1 - ny0) / (oy1 - oy0) if oy1 > oy0 else 1.0

    def fx(x: float) -> float:
        return snap(min(max(nx0 + (x - ox0) * sx, 0.0), 1.0))

    def fy(y: float) -> float:
        return snap(min(max(ny0 + (y - oy0) * sy, 0.0), 1.0))

    polygons = tuple(
        tuple(fx(v) if i % 2 == 0 else fy(v) for i, v in enumerate(p)) for p in old.polygons
    )
    kps = list(old.keypoints)
    for k in range(0, len(kps) - 2, 3):
        if kps[k + 2] > 0:
            kps[k], kps[k + 1] = fx(kps[k]), fy(kps[k + 1])
    return Annotation.from_xyxy(
        old.cls,
        nx0,
        ny0,
        nx1,
        ny1,
        polygons=polygons,
        keypoints=tuple(kps),
        rle=old.rle,
        iscrowd=old.iscrowd,
        difficult=old.difficult,
        truncated=old.truncated,
        score=old.score,
    )
