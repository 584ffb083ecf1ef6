"""Datasets of a workspace: analyze, import, export, query, and write a training-ready copy.

The functions the CLI and the GUI call live here (analysis, imports, exports and the sample
generator are re-exported from their modules).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from desktop_app.core.dataset_analyze import analyze_dataset
from desktop_app.core.dataset_draft import get_draft, latest_version
from desktop_app.core.dataset_edit import (
    add_box,
    add_class,
    add_images,
    add_polygon,
    delete_annotation,
    delete_class,
    get_item,
    history,
    list_classes,
    list_items,
    merge_classes,
    move_box,
    redo,
    rename_class,
    set_annotation_class,
    set_image_class,
    set_label_status,
    undo,
    update_box,
)
from desktop_app.core.dataset_export import export_dataset, load_version, split_ref
from desktop_app.core.dataset_import import check_dataset_name, import_dataset, import_yolo
from desktop_app.core.dataset_integrity import (
    dataset_stats,
    find_duplicates,
    list_versions,
    validate_dataset,
)
from desktop_app.core.dataset_prelabel import accept_all, prelabel, review
from desktop_app.core.dataset_qa import qa_report
from desktop_app.core.dataset_sample import SampleSummary, write_sample_dataset
from desktop_app.core.dataset_split import compute_split
from desktop_app.core.dataset_versions import (
    TAG_RE,
    diff_versions,
    list_tags,
    resolve_training_version,
    restore_version,
    set_split,
    snapshot,
    split_settings,
    tag_version,
    untag,
)
from desktop_app.core.errors import DestinationNotEmptyError, InvalidArgumentError, NotFoundError
from desktop_app.core.formats import FORMATS
from desktop_app.core.formats.yolo import write_tree
from desktop_app.core.models import Dataset, DatasetItem, DatasetTag, DatasetVersion
from runtimes.fileio import atomic_write_text

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

__all__ = [
    "FORMATS",
    "SampleSummary",
    "VersionInfo",
    "accept_all",
    "add_box",
    "add_class",
    "add_images",
    "add_polygon",
    "analyze_dataset",
    "check_dataset_name",
    "compute_split",
    "dataset_stats",
    "dataset_summary",
    "delete_annotation",
    "delete_class",
    "diff_versions",
    "export_dataset",
    "find_duplicates",
    "get_item",
    "get_version",
    "history",
    "import_dataset",
    "import_yolo",
    "list_classes",
    "list_datasets",
    "list_items",
    "list_tags",
    "list_versions",
    "load_version",
    "materialize_yolo",
    "merge_classes",
    "move_box",
    "parse_version",
    "prelabel",
    "qa_report",
    "redo",
    "rename_class",
    "resolve_training_version",
    "restore_version",
    "review",
    "set_annotation_class",
    "set_image_class",
    "set_label_status",
    "set_split",
    "snapshot",
    "split_ref",
    "split_settings",
    "tag_version",
    "undo",
    "untag",
    "update_box",
    "validate_dataset",
    "write_sample_dataset",
]

MATERIALIZED_MARKER = ".outpost-materialized.json"
_VERSION_RE = re.compile(r"^[vV]?(\d+)$")


@dataclass(frozen=True)
class VersionInfo:
    """A dataset version, detached from the database session."""

    id: int
    dataset_id: int
    dataset: str
    number: int
    task: str
    content_hash: str
    class_names: tuple[str, ...]
    split_method: str
    split_seed: int
    val_fraction: float
    num_images: int
    num_annotations: int
    created_at: datetime
    splits: dict[str, int] = field(default_factory=dict)
    test_fraction: float = 0.0
    origin: str = "import"
    message: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``"v3"``, or ``"draft"`` for the draft (number 0)."""
        return "draft" if self.number == 0 else f"v{self.number}"

    @property
    def is_draft(self) -> bool:
        return self.number == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.label,
            "task": self.task,
            "content_hash": self.content_hash,
            "classes": list(self.class_names),
            "split_method": self.split_method,
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "images": self.num_images,
            "annotations": self.num_annotations,
            "splits": dict(self.splits),
            "created_at": _iso(self.created_at),
            "origin": self.origin,
            "message": self.message,
            "tags": list(self.tags),
            "draft": self.is_draft,
        }


def parse_version(version: str | int | None) -> int | None:
    """``"v3"``, ``"3"`` or ``3`` → 3; None → None (the latest).

    Raises:
        InvalidArgumentError: anything else.
    """
    if version is None:
        return None
    if isinstance(version, bool):
        raise InvalidArgumentError(f"version {version!r} is not valid; use v1, v2, ...")
    if isinstance(version, int):
        number = version
    else:
        m = _VERSION_RE.match(str(version).strip())
        if not m:
            raise InvalidArgumentError(f"version {version!r} is not valid; use v1, v2, ...")
        number = int(m.group(1))
    if number < 1:
        raise InvalidArgumentError(f"version {version!r} is not valid; versions start at v1")
    return number


def list_datasets(ws: Workspace) -> list[dict[str, Any]]:
    """Every dataset with its latest numbered version, sorted by name.

    ``versions`` counts numbered versions; ``draft`` is True when the dataset has a draft
    and ``draft_changed`` when that draft differs from the latest version.
    """
    with ws.session() as s:
        datasets = s.scalars(select(Dataset).order_by(Dataset.name)).all()
        out = []
        for d in datasets:
            numbered = [v for v in d.versions if not v.is_draft]
            draft = next((v for v in d.versions if v.is_draft), None)
            latest = numbered[-1] if numbered else None
            out.append(
                {
                    "name": d.name,
                    "task": d.task,
                    "classes": list(d.class_names),
                    "source_format": d.source_format,
                    "versions": len(numbered),
                    "draft": draft is not None,
                    "draft_changed": _draft_changed(draft, latest),
                    "latest": latest.label if latest else None,
                    "images": latest.num_images if latest else 0,
                    "annotations": latest.num_annotations if latest else 0,
                    "content_hash": latest.content_hash if latest else None,
                    "created_at": _iso(d.created_at),
                }
            )
    return out


def get_version(ws: Workspace, name: str, version: str | int | None = None) -> VersionInfo:
    """A dataset version: ``"v1"``, ``1``, a tag, ``"draft"``, or None for the latest.

    Raises:
        NotFoundError: no such dataset or version.
    """
    with ws.session() as s:
        dataset, row = find_version(s, name, version)
        return _info(s, dataset, row)


def find_version(
    session: Session, name: str, version: str | int | None = None
) -> tuple[Dataset, DatasetVersion]:
    """The dataset and version rows, inside the caller's session (for callers that write).

    ``version`` is ``"v2"``, ``2``, a tag (``"stable"``), ``"draft"`` (the mutable working
    copy), or None for the latest numbered version (never the draft).

    Raises:
        NotFoundError: no such dataset or version, or no draft.
        InvalidArgumentError: ``version`` is neither a version, a tag of the dataset nor
            "draft".
    """
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFoundError(f"no dataset named {name!r}; list datasets with `outpost dataset list`")
    ref = version.strip() if isinstance(version, str) else version
    if isinstance(ref, str) and ref.lower() == "draft":
        draft = get_draft(session, dataset)
        if draft is None:
            raise NotFoundError(
                f"dataset {name!r} has no draft (nothing was edited since its latest version); "
                f"edit it, or restore a version with `outpost dataset restore {name}@v1`"
            )
        return dataset, draft
    if isinstance(ref, str) and not _VERSION_RE.match(ref) and TAG_RE.match(ref):
        tagged = session.scalar(
            select(DatasetVersion)
            .join(DatasetTag, DatasetTag.version_id == DatasetVersion.id)
            .where(DatasetTag.dataset_id == dataset.id, DatasetTag.tag == ref)
        )
        if tagged is None:  # a misspelt version as much as a missing tag
            raise InvalidArgumentError(
                f"{ref!r} is neither a version (v1, v2, ...) nor a tag of dataset {name!r}; "
                f"list them with `outpost dataset versions {name}`"
            )
        return dataset, tagged
    number = parse_version(version)
    query = select(DatasetVersion).where(
        DatasetVersion.dataset_id == dataset.id, DatasetVersion.number > 0
    )
    if number is None:
        row = session.scalar(query.order_by(DatasetVersion.number.desc()).limit(1))
    else:
        row = session.scalar(query.where(DatasetVersion.number == number))
    if row is None:
        which = f"version v{number}" if number is not None else "versions"
        raise NotFoundError(
            f"dataset {name!r} has no {which}; list them with `outpost dataset versions {name}`"
        )
    return dataset, row


def dataset_summary(ws: Workspace, name: str) -> dict[str, Any]:
    """A dataset, its versions, and per-class and per-split counts of its latest version.

    ``versions`` lists the numbered versions, oldest first, then a ``"draft"`` entry (with
    ``"changed": true``) when the dataset has a draft that differs from its latest version.
    ``draft`` is ``{"exists", "changed"}``. Each entry carries its tags.

    Raises:
        NotFoundError: no such dataset.
    """
    with ws.session() as s:
        dataset, latest = find_version(s, name)
        draft = get_draft(s, dataset)
        changed = _draft_changed(draft, latest_version(s, dataset))
        versions = [_info(s, dataset, v).to_dict() for v in dataset.versions if not v.is_draft]
        if draft is not None and changed:
            versions.append({**_info(s, dataset, draft).to_dict(), "changed": True})
        items = s.execute(
            select(DatasetItem.split, DatasetItem.boxes).where(DatasetItem.version_id == latest.id)
        ).all()
    names = list(latest.class_names)
    boxes_per_class = {n: 0 for n in names}
    boxes_per_split: Counter[str] = Counter()
    background = 0
    for split, boxes in items:
        background += not boxes
        boxes_per_split[split] += len(boxes)
        for b in boxes:
            boxes_per_class[names[int(b[0])]] += 1
    return {
        "name": dataset.name,
        "task": dataset.task,
        "classes": list(dataset.class_names),
        "source_format": dataset.source_format,
        "created_at": _iso(dataset.created_at),
        "latest": next(v for v in reversed(versions) if not v["draft"]),
        "versions": versions,
        "draft": {"exists": draft is not None, "changed": changed},
        "split_settings": dataset.split_settings,
        "boxes_per_class": boxes_per_class,
        "boxes_per_split": dict(boxes_per_split),
        "background_images": background,
    }


def materialize_yolo(
    ws: Workspace,
    name: str,
    version: str | int | None = None,
    out_dir: Path | str | None = None,
) -> Path:
    """Write a training-ready YOLO folder for a dataset version (latest by default).

    Layout: ``images/{train,val}``, ``labels/{train,val}`` (and ``test`` when the version has
    test images), ``data.yaml``. Only labelled images go in: an unlabelled image, or one
    whose proposals still await review, would teach the model that its objects are
    background. Images are copies of the blobs, never links, so a trainer cannot alter
    stored data; each copy is checked against its sha256. The folder is built under a temp
    name and renamed into place. A folder this function wrote before is replaced; any other
    non-empty folder is refused.

    Args:
        ws: The open workspace.
        name: The dataset's name.
        version: ``"v2"``, ``2``, or None for the latest.
        out_dir: The folder to write (required).

    Returns:
        The path of the written ``data.yaml``.

    Raises:
        InvalidArgumentError: no ``out_dir`` was given.
        NotFoundError: no such dataset or version.
        DestinationNotEmptyError: ``out_dir`` is not empty and was not written by this function.
        BlobIntegrityError: a stored image is missing or corrupt.
        InvalidArgumentError: the version has no labelled training image.
    """
    if out_dir is None:
        raise InvalidArgumentError("materialize_yolo needs out_dir; pass the folder to write")
    out = Path(out_dir).expanduser().resolve()
    _check_destination(out)
    data = load_version(ws, name, version)
    labelled = tuple(i for i in data.items if i.label_status == "labelled")
    if not any(i.split == "train" for i in labelled):
        raise InvalidArgumentError(
            f"{data.name}@{data.version} has no labelled image in its train split; label images or review proposals first"
        )
    data = dataclasses.replace(data, items=labelled)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write_tree(data, tmp, ws.blobs.copy_to, yaml_path=str(out))
        marker = {"dataset": data.name, "version": data.version, "content_hash": data.content_hash}
        atomic_write_text(tmp / MATERIALIZED_MARKER, json.dumps(marker, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "data.yaml"


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DestinationNotEmptyError(f"{out} is a file; choose a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MATERIALIZED_MARKER).is_file():
        raise DestinationNotEmptyError(
            f"{out} is not empty; choose a new or empty folder for the dataset copy"
        )


def _info(s: Session, dataset: Dataset, row: DatasetVersion) -> VersionInfo:
    counts = s.execute(
        select(DatasetItem.split, func.count())
        .where(DatasetItem.version_id == row.id)
        .group_by(DatasetItem.split)
    ).all()
    splits = {"train": 0, "val": 0, "test": 0}
    splits.update({split: n for split, n in counts})
    tags = s.scalars(
        select(DatasetTag.tag).where(DatasetTag.version_id == row.id).order_by(DatasetTag.tag)
    ).all()
    return VersionInfo(
        id=row.id,
        dataset_id=dataset.id,
        dataset=dataset.name,
        number=row.number,
        task=dataset.task,
        content_hash=row.content_hash,
        class_names=tuple(row.class_names),
        split_method=row.split_method,
        split_seed=row.split_seed,
        val_fraction=row.val_fraction,
        num_images=row.num_images,
        num_annotations=row.num_annotations,
        created_at=_utc(row.created_at),
        splits=splits,
        test_fraction=row.test_fraction,
        origin=row.origin,
        message=row.message,
        tags=tuple(tags),
    )


def _draft_changed(draft: DatasetVersion | None, latest: DatasetVersion | None) -> bool:
    """True when there is a draft and its content differs from the latest version's."""
    if draft is None:
        return False
    return latest is None or draft.content_hash != latest.content_hash


def _utc(dt: datetime) -> datetime:
    """SQLite returns naive datetimes; they were written in UTC."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def _iso(dt: datetime) -> str:
    return _utc(dt).isoformat(timespec="seconds")
