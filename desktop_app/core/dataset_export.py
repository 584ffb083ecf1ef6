"""Export a stored dataset version to a format's folder or zip (the importer reads it back)."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from desktop_app.core.dataset_archive import write_zip
from desktop_app.core.dataset_records import Annotation, ExportDataset, ExportItem, Progress
from desktop_app.core.errors import DestinationNotEmptyError, InvalidArgumentError
from desktop_app.core.formats import FORMATS, DatasetFormat, get_format
from desktop_app.core.models import DatasetItem

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace


def split_ref(ref: str) -> tuple[str, str | None]:
    """``"shapes@v2"`` → ("shapes", "v2"); ``"shapes"`` → ("shapes", None)."""
    name, sep, version = ref.partition("@")
    if sep and not version.strip():
        raise InvalidArgumentError(f"{ref!r} names no version after '@'; use NAME@v2")
    return name, (version.strip() if sep else None)


def load_version(ws: Workspace, name: str, version: str | int | None = None) -> ExportDataset:
    """A stored version with all its items and annotations, detached from the database.

    Raises:
        NotFoundError: no such dataset or version.
    """
    from desktop_app.core.datasets import find_version

    with ws.session() as s:
        dataset, row = find_version(s, name, version)
        rows = s.execute(
            select(
                DatasetItem.file_name,
                DatasetItem.image_sha256,
                DatasetItem.width,
                DatasetItem.height,
                DatasetItem.split,
                DatasetItem.boxes,
                DatasetItem.label_status,
            )
            .where(DatasetItem.version_id == row.id)
            .order_by(DatasetItem.file_name)
        ).all()
        items = tuple(
            ExportItem(
                fn,
                sha,
                w,
                h,
                split,
                tuple(Annotation.from_json(b) for b in boxes),
                status or "labelled",
            )
            for fn, sha, w, h, split, boxes, status in rows
        )
        task = dataset.task or "detect"
        return ExportDataset(
            dataset.name,
            row.label,
            row.content_hash,
            tuple(row.class_names),
            items,
            task=task,
            keypoint_shape=_keypoint_shape(task, items),
        )


def _keypoint_shape(task: str, items: tuple[ExportItem, ...]) -> tuple[int, int] | None:
    """``(K, 3)`` for a pose version: K from the first annotation with keypoints."""
    if task != "pose":
        return None
    for item in items:
        for a in item.annotations:
            if a.keypoints:
                return len(a.keypoints) // 3, 3
    return None


def dropped_by(fmt: str, data: ExportDataset) -> dict[str, int]:
    """What writing ``data`` as ``fmt`` leaves out, counted per kind (empty: nothing).

    Kinds: ``polygons``, ``keypoints``, ``rle``, ``iscrowd``, ``difficult``, ``truncated``
    (annotations whose extra is lost), ``unlabelled`` (images the format cannot mark as
    unlabelled: written without annotations, or left out of a classification layout) and
    ``unclassified`` (classification images without a class, left out). A segment version
    keeps one outline per object in a format that holds polygons only as its segment task
    (YOLO): the extra outlines count as dropped ``polygons``.

    Raises:
        InvalidArgumentError: unknown format, or one that cannot hold the version's task.
    """
    caps = _writer_for(fmt, data.task).capabilities
    dropped: Counter[str] = Counter()
    core = {"segment": "polygons", "pose": "keypoints"}.get(data.task)
    for item in data.items:
        if item.label_status == "unlabelled" and (not caps.unlabelled or data.task == "classify"):
            dropped["unlabelled"] += 1
        elif data.task == "classify" and not item.annotations:
            dropped["unclassified"] += 1
        for a in item.annotations:
            for key, kept in (
                ("polygons", caps.polygons),
                ("keypoints", caps.keypoints),
                ("rle", caps.rle),
                ("iscrowd", caps.iscrowd),
                ("difficult", caps.difficult),
                ("truncated", caps.truncated),
            ):
                if not getattr(a, key) or kept:
                    continue
                if key == core:  # the task's own data: held, one outline per object
                    dropped[key] += key == "polygons" and len(a.polygons) > 1
                else:
                    dropped[key] += 1
    return {k: v for k, v in dropped.items() if v}


def _writer_for(fmt: str, task: str) -> DatasetFormat:
    writer = get_format(fmt)
    if task not in writer.capabilities.tasks:
        able = sorted(k for k, f in FORMATS.items() if task in f.capabilities.tasks)
        raise InvalidArgumentError(
            f"format {fmt!r} cannot hold a {task} dataset; export it as {', '.join(able) or 'another format'}"
        )
    return writer


def export_dataset(
    ws: Workspace,
    ref: str,
    fmt: str,
    out: Path | str,
    *,
    as_zip: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``NAME[@VERSION]`` (latest by default) as a ``fmt`` folder, or a zip with ``as_zip``.

    The folder is built under a temp name beside ``out`` and renamed into place; a zip is
    written to a temp name, fsynced and renamed. ``out`` must be new (or an empty folder).
    Images are copies of the blobs, each checked against its sha256. A format that cannot
    hold the version's task (classify as VOC, ...) is refused; what else it cannot hold
    (polygons in YOLO detection, crowd flags in VOC, unlabelled marks, ...) is dropped and
    counted (see :func:`dropped_by`).

    Returns:
        ``{"dataset", "version", "format", "out", "images", "annotations", "dropped"}``.

    Raises:
        NotFoundError: no such dataset or version.
        InvalidArgumentError: unknown format, or one that cannot hold the version's task.
        DestinationNotEmptyError: ``out`` exists and is not an empty folder.
        BlobIntegrityError: a stored image is missing or corrupt.
    """
    name, version = split_ref(ref)
    get_format(fmt)  # an unknown format is refused before anything is read
    dest = Path(out).expanduser().resolve()
    if as_zip and dest.suffix.lower() != ".zip":
        dest = dest.with_name(dest.name + ".zip")
    _check_new(dest)
    data = load_version(ws, name, version)
    writer = _writer_for(fmt, data.task)
    dropped = dropped_by(fmt, data)
    left_out = dropped.get("unclassified", 0)
    if data.task == "classify":  # a classification layout has no place for these images
        left_out += dropped.get("unlabelled", 0)
    total = len(data.items) - left_out
    done = 0

    def copy_image(sha: str, target: Path) -> None:
        nonlocal done
        ws.blobs.copy_to(sha, target)
        done += 1
        if progress is not None:
            progress("export", done, total)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        writer.write(data, tmp, copy_image)
        if as_zip:
            write_zip(tmp, dest)
            shutil.rmtree(tmp)
        else:
            if dest.is_dir():
                dest.rmdir()  # empty, checked above
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "dataset": data.name,
        "version": data.version,
        "format": writer.key,
        "out": str(dest),
        "images": total,
        "annotations": sum(len(i.annotations) for i in data.items),
        "dropped": dropped,
    }


def _check_new(dest: Path) -> None:
    if dest.is_dir() and not any(dest.iterdir()):
        return
    if dest.exists() or dest.is_symlink():
        raise DestinationNotEmptyError(
            f"{dest} already exists; choose a new path (or an empty folder) for the export"
        )
