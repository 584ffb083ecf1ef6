"""Import a dataset (YOLO, COCO, VOC, or a zip of one) as version v1 of a new dataset.

Every format reader produces the same records (:mod:`desktop_app.core.dataset_records`);
one writer here validates nothing twice and stores them: blobs first, then one transaction.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from desktop_app.core.blobs import BlobBatch, Renamer, register_blobs
from desktop_app.core.dataset_archive import opened_source
from desktop_app.core.dataset_records import (
    Progress,
    ScannedDataset,
    ScannedImage,
    handing_images_to,
    prefetching,
)
from desktop_app.core.dataset_split import (
    check_val_fraction,
    content_hash_encoded,
    dominant_classes,
    encode_boxes_all,
    stratified_split,
)
from desktop_app.core.errors import (
    AlreadyExistsError,
    DatasetFormatError,
    InvalidArgumentError,
    WorkspaceError,
)
from desktop_app.core.formats import read_dataset
from desktop_app.core.image_prefetch import ImagePrefetch
from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

_ITEMS = cast(Table, DatasetItem.__table__)
_ITEM_COLUMNS = (
    "version_id",
    "file_name",
    "image_sha256",
    "width",
    "height",
    "split",
    "label_status",
    "boxes",
)
_INSERT_ITEMS = (
    f"INSERT INTO {_ITEMS.name} ({', '.join(_ITEMS.c[c].name for c in _ITEM_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ITEM_COLUMNS)})"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_dataset_name(name: str) -> str:
    """Return ``name`` when it is a valid dataset name, else raise InvalidArgumentError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgumentError(
            f"dataset name {name!r} is not valid; use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def import_yolo(
    ws: Workspace,
    path: Path | str,
    name: str,
    val_fraction: float = 0.2,
    seed: int = 42,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Import a YOLO detection dataset as version v1 of a new dataset.

    The same as :func:`import_dataset` with ``fmt="yolo"``.
    """
    return import_dataset(
        ws, path, name, "yolo", val_fraction=val_fraction, seed=seed, progress=progress
    )


def import_dataset(
    ws: Workspace,
    path: Path | str,
    name: str,
    fmt: str = "auto",
    val_fraction: float = 0.2,
    seed: int = 42,
    *,
    progress: Progress | None = None,
    lenient: bool = False,
) -> dict[str, Any]:
    """Import a dataset folder, annotation file or ``.zip`` as version v1 of a new dataset.

    Everything is validated before anything is written. Strict (the default), the first
    problem stops the import; ``lenient`` skips each bad annotation or image instead, stores
    the rest, and keeps the list of what was skipped on the version (its QA report shows it).
    A source with no valid image left is refused either way. Then the images are stored as blobs
    and one transaction creates the dataset, its version, the blob rows and the items; if
    that fails, the blobs this import added are removed again.

    The split comes from the source when it has both train and val
    (``split_method="source"``); otherwise it is drawn with ``seed``, stratified by each
    image's dominant class (``split_method="auto"``), keeping any source test split. Images
    a split source leaves unassigned are drawn (``split_method="partial"``).

    Args:
        ws: The open workspace.
        path: The dataset folder, a COCO JSON file, a YOLO ``data.yaml``, or a zip of one.
        name: The new dataset's name.
        fmt: ``"auto"`` (detect) or a key of :data:`desktop_app.core.formats.FORMATS`.
        val_fraction: Share of images for val when Outpost draws the split.
        seed: Seed of the split.
        progress: Called as ``progress(stage, done, total)`` with stage "validate" or "store".
        lenient: Skip what is invalid (listing it) instead of refusing the whole source.

    Returns:
        ``{"dataset", "version", "task", "format", "classes", "splits": {"train", "val",
        "test"}, "images", "unlabelled", "annotations", "content_hash", "split_method",
        "source", "problem_count", "problems"}`` (``problems``: one line per skipped item).

    Raises:
        DatasetFormatError: the source is not valid (one line naming the file and problem),
            or, lenient, nothing valid is left of it.
        AlreadyExistsError: a dataset with this name exists.
        InvalidArgumentError: the name, format or ``val_fraction`` is invalid.
    """
    check_dataset_name(name)
    vf = check_val_fraction(val_fraction)
    _refuse_existing(ws, name)
    batch = BlobBatch(ws.blobs)  # each image is staged from the bytes its check just read
    prefetch = ImagePrefetch(batch)  # ... by a helper process while the annotations are parsed
    try:
        with (
            _gc_paused(),
            opened_source(Path(path)) as folder,
            handing_images_to(batch.add),
            prefetching(prefetch),
        ):
            try:
                scanned = read_dataset(folder, fmt, progress, lenient=lenient)
            except BaseException:
                prefetch.close()  # at once: its temp files not adopted are removed
                raise
            summary = store_scanned(
                ws, scanned, name, vf, seed, progress, batch=batch, renamer=prefetch
            )
    finally:
        prefetch.close()
        batch.discard()  # what a failure left staged (the stored blobs stay)
    if folder != Path(path).expanduser():
        summary["source"] = str(Path(path).expanduser().resolve())
    return summary


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a source is read and stored.

    A large COCO file is a million small objects, and building its records allocates as
    many again: the collector would walk them over and over (about a third of the parse
    time) to find no garbage (records form no cycles). It resumes when the import ends,
    also on an error, and is left off when the caller had turned it off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # what survived the import joins the oldest generation without a scan (the
            # first collection after it would otherwise walk a million young objects)
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def store_scanned(
    ws: Workspace,
    scanned: ScannedDataset,
    name: str,
    val_fraction: float,
    seed: int,
    progress: Progress | None = None,
    *,
    batch: BlobBatch | None = None,
    renamer: Renamer | None = None,
) -> dict[str, Any]:
    """Store a validated dataset as version v1 of a new dataset named ``name`` (atomically).

    With ``batch`` (the images were staged while they were read, see
    :func:`desktop_app.core.dataset_records.handing_images_to`), the staged images are
    stored; otherwise each image file is copied into the store. With a ``renamer`` too (the
    import's helper process), the staged blobs are stored by it while this thread builds
    the split, the content hash and the rows; they are durable before the rows are written.

    Raises:
        DatasetFormatError: ``scanned`` holds no image (a lenient read skipped them all).
    """
    if not scanned.images:
        skipped = len(scanned.problems)
        first = f" (first: {scanned.problems[0]})" if scanned.problems else ""
        raise DatasetFormatError(
            f"{scanned.root}: no valid image is left after skipping {skipped} problems{first}; fix the source"
        )
    created: list[str] = []
    finish = _start_blobs(ws, scanned.images, progress, batch, renamer)
    stored = False
    try:
        boxes = [_boxes_json(img) for img in scanned.images]  # the stored form, built once
        encoded = encode_boxes_all(boxes)  # its JSON, for the hash and the rows
        splits, method = _assign_splits(scanned, boxes, val_fraction, seed)
        items = [
            (img.file_name, img.sha256, text, split, _status(img))
            for img, text, split in zip(scanned.images, encoded, splits, strict=True)
        ]
        digest = content_hash_encoded(scanned.class_names, items)
        project_id = ws.default_project_id()
        stored = True  # from here on, a failure is the blobs' own or a later one
        finish(created)
        with ws.session() as s:
            _create_rows(
                s, project_id, name, scanned, items, boxes, method, seed, val_fraction, digest
            )
    except IntegrityError as exc:
        _discard_blobs(ws, created)
        _refuse_existing(ws, name)  # another process took the name meanwhile
        reason = str(exc.orig).splitlines()[0] if exc.orig else "constraint failed"
        raise WorkspaceError(
            f"importing {name!r} failed in the database ({reason}); run a workspace check"
        ) from None
    except BaseException:
        if not stored:  # let the blobs' storing end, to know which blobs it created
            with contextlib.suppress(Exception):
                finish(created)
        _discard_blobs(ws, created)
        raise
    counts = Counter(splits)
    return {
        "dataset": name,
        "version": "v1",
        "task": scanned.task,
        "format": scanned.format,
        "classes": list(scanned.class_names),
        "splits": {k: counts.get(k, 0) for k in ("train", "val", "test")},
        "images": len(scanned.images),
        "unlabelled": sum(not img.labelled for img in scanned.images),
        "annotations": sum(len(img.boxes) for img in scanned.images),
        "content_hash": digest,
        "split_method": method,
        "source": str(scanned.root),
        "problem_count": len(scanned.problems),
        "problems": list(scanned.problems),
    }


def _boxes_json(img: ScannedImage) -> list[list[Any]]:
    return [a.to_json() for a in img.boxes]


def _status(img: ScannedImage) -> str:
    return "labelled" if img.labelled else "unlabelled"


def _refuse_existing(ws: Workspace, name: str) -> None:
    with ws.session() as s:
        if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
            raise AlreadyExistsError(
                f"a dataset named {name!r} already exists; choose another name"
            )


def _assign_splits(
    scanned: ScannedDataset, boxes: list[list[list[Any]]], vf: float, seed: int
) -> tuple[list[str], str]:
    """Keep the source's train/val split when it has both; otherwise draw one.

    With a source split, images the source leaves unassigned are drawn into train/val
    (``split_method="partial"``). Without one, every image not in the source's test split
    is drawn (``"auto"``).
    """
    images = scanned.images
    source = [img.source_split for img in images]
    keep = scanned.has_source_split and "train" in source and "val" in source
    if keep and None not in source:
        return [str(s) for s in source], "source"
    if keep:
        pool = [i for i, s in enumerate(source) if s is None]
    else:
        pool = [i for i, s in enumerate(source) if s != "test"]
    strata = dominant_classes([boxes[i] for i in pool], len(scanned.class_names))
    drawn = stratified_split(strata, vf, seed)
    out = [s or "train" for s in source] if keep else ["test"] * len(images)
    for i, split in zip(pool, drawn, strict=True):
        out[i] = split
    return out, "partial" if keep else "auto"


def _start_blobs(
    ws: Workspace,
    images: tuple[ScannedImage, ...],
    progress: Progress | None,
    batch: BlobBatch | None,
    renamer: Renamer | None,
) -> Callable[[list[str]], None]:
    """Begin storing every image in the blob store; returns the call that finishes it,
    recording the blobs it created in the list it is given.

    Images already stored (by their sha256) are not copied again; every new blob is durable
    when the returned call returns (see :meth:`BlobStore.ingest_files` and
    :meth:`BlobBatch.start_commit`).
    """
    total = len(images)
    if batch is not None:
        if progress is not None:
            progress("store", 0, total)
        done = batch.start_commit([img.sha256 for img in images], renamer)

        def finish_batch(created: list[str]) -> None:
            done(created)
            if progress is not None:
                progress("store", total, total)

        return finish_batch

    def copy(created: list[str]) -> None:
        stored = ws.blobs.ingest_files(
            [img.path for img in images],
            expected=[img.sha256 for img in images],
            created=created,
            progress=None
            if progress is None
            else (lambda done, total: progress("store", done, total)),
        )
        for img, blob in zip(images, stored, strict=True):
            if blob.sha256 != img.sha256:
                raise DatasetFormatError(
                    f"{img.path} changed while it was imported; run the import again"
                )

    return copy


def _create_rows(
    s: Session,
    project_id: int,
    name: str,
    scanned: ScannedDataset,
    items: list[tuple[str, str, str, str, str]],
    boxes: list[list[list[Any]]],
    method: str,
    seed: int,
    vf: float,
    digest: str,
) -> None:
    names = list(scanned.class_names)
    dataset = Dataset(
        project_id=project_id,
        name=name,
        task=scanned.task,
        class_names=names,
        source_format=scanned.format,
    )
    version = DatasetVersion(
        dataset=dataset,
        number=1,
        content_hash=digest,
        class_names=names,
        split_method=method,
        split_seed=seed,
        val_fraction=vf,
        num_images=len(scanned.images),
        num_annotations=sum(len(b) for b in boxes),
        problems=list(scanned.problems),
        origin="import",
    )
    s.add_all([dataset, version])
    register_blobs(s, {img.sha256: img.size for img in scanned.images})
    s.flush()
    vid = version.id
    rows = [
        (vid, fn, sha, img.width, img.height, split, status, text)
        for img, (fn, sha, text, split, status) in zip(scanned.images, items, strict=True)
    ]
    # one executemany at the driver: the boxes go in as the JSON text already encoded for
    # the content hash (valid JSON for the column), with no per-row bind processing
    s.connection().exec_driver_sql(_INSERT_ITEMS, rows)


def _discard_blobs(ws: Workspace, shas: list[str]) -> None:
    """Remove blobs this import created, unless another transaction registered them meanwhile."""
    if not shas:
        return
    keep: set[str] = set()
    try:
        with ws.session() as s:
            for i in range(0, len(shas), 500):
                keep.update(
                    s.scalars(select(Blob.sha256).where(Blob.sha256.in_(shas[i : i + 500])))
                )
    except Exception:  # the database itself failed: the blobs are ours, remove them all
        keep = set()
    for sha in shas:
        if sha not in keep:
            ws.blobs.delete(sha)
