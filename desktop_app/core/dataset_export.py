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
from desktop_app.core.formats import get_format
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
            )
            .where(DatasetItem.version_id == row.id)
            .order_by(DatasetItem.file_name)
        ).all()
        items = tuple(
            ExportItem(fn, sha, w, h, split, tuple(Annotation.from_json(b) for b in boxes))
            for fn, sha, w, h, split, boxes in rows
        )
        return ExportDataset(
            dataset.name, row.label, row.content_hash, tuple(row.class_names), items
        )


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
    Images are copies of the blobs, each checked against its sha256. What the format cannot
    hold (polygons in YOLO detection, crowd flags in VOC, ...) is dropped and counted.

    Returns:
        ``{"dataset", "version", "format", "out", "images", "annotations", "dropped"}``.

    Raises:
        NotFoundError: no such dataset or version.
        InvalidArgumentError: unknown format.
        DestinationNotEmptyError: ``out`` exists and is not an empty folder.
        BlobIntegrityError: a stored image is missing or corrupt.
    """
    name, version = split_ref(ref)
    writer = get_format(fmt)
    dest = Path(out).expanduser().resolve()
    if as_zip and dest.suffix.lower() != ".zip":
        dest = dest.with_name(dest.name + ".zip")
    _check_new(dest)
    data = load_version(ws, name, version)
    caps = writer.capabilities
    dropped: Counter[str] = Counter()
    for item in data.items:
        for a in item.annotations:
            for key, kept in (
                ("polygons", caps.polygons),
                ("iscrowd", caps.iscrowd),
                ("difficult", caps.difficult),
                ("truncated", caps.truncated),
            ):
                dropped[key] += bool(getattr(a, key)) and not kept
    total = len(data.items)
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
        "dropped": {k: v for k, v in dropped.items() if v},
    }


def _check_new(dest: Path) -> None:
    if dest.is_dir() and not any(dest.iterdir()):
        return
    if dest.exists() or dest.is_symlink():
        raise DestinationNotEmptyError(
            f"{dest} already exists; choose a new path (or an empty folder) for the export"
        )
