"""Stored datasets: integrity (re-hash every image), duplicates, versions and statistics.

Every function reads the workspace and writes nothing. Hashing goes through
:meth:`BlobStore.verify`, the same check ``outpost workspace check`` runs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion, TrainingRun

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

# COCO's area thresholds, in pixels: small < 32², medium < 96², large ≥ 96².
SMALL_AREA = 32**2
MEDIUM_AREA = 96**2


def _iso(dt: datetime) -> str:
    return (dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt).isoformat(
        timespec="seconds"
    )


def _versions(ws: Workspace, name: str, version: str | int | None) -> list[tuple[int, str]]:
    """(version id, "name@vN") of one version, or of every version when ``version`` is None."""
    from desktop_app.core.datasets import find_version

    with ws.session() as s:
        if version is not None:
            dataset, row = find_version(s, name, version)
            return [(row.id, f"{dataset.name}@{row.label}")]
        dataset, _ = find_version(s, name)
        return [(v.id, f"{dataset.name}@{v.label}") for v in dataset.versions]


def validate_dataset(ws: Workspace, name: str, version: str | int | None = None) -> dict[str, Any]:
    """Re-check every stored image of a version (or of all versions) against its sha256.

    Each blob is hashed once, however many items share it.

    Returns:
        ``{"ok", "dataset", "versions", "images", "blobs", "missing", "corrupt",
        "problems": [{"version", "file_name", "sha256", "kind", "problem"}, ...]}``
        (``kind`` is ``missing`` or ``corrupt``).

    Raises:
        NotFoundError: no such dataset or version.
    """
    refs = _versions(ws, name, version)
    with ws.session() as s:
        rows = s.execute(
            select(DatasetItem.version_id, DatasetItem.file_name, DatasetItem.image_sha256)
            .where(DatasetItem.version_id.in_([vid for vid, _ in refs]))
            .order_by(DatasetItem.version_id, DatasetItem.file_name)
        ).all()
    label = dict(refs)
    state: dict[str, str | None] = {}
    problems: list[dict[str, str]] = []
    for version_id, file_name, sha in rows:
        if sha not in state:
            if not ws.blobs.exists(sha):
                state[sha] = "missing"
            elif not ws.blobs.verify(sha):
                state[sha] = "corrupt"
            else:
                state[sha] = None
        wrong = state[sha]
        if wrong is not None:
            what = (
                "its stored image is missing from blobs/"
                if wrong == "missing"
                else "its stored image no longer matches its sha256 (corrupt)"
            )
            problems.append(
                {
                    "version": label[version_id],
                    "file_name": file_name,
                    "sha256": sha,
                    "problem": f"{what}; restore the workspace from a backup",
                    "kind": wrong,
                }
            )
    kinds = Counter(state.values())
    return {
        "ok": not problems,
        "dataset": name,
        "versions": [ref for _, ref in refs],
        "images": len(rows),
        "blobs": len(state),
        "missing": kinds["missing"],
        "corrupt": kinds["corrupt"],
        "problems": problems,
    }


def find_duplicates(ws: Workspace) -> dict[str, Any]:
    """Identical dataset versions (same content hash) and duplicate images (same sha256).

    An image is a duplicate when its sha256 appears more than once within one version, or in
    more than one dataset (versions of one dataset sharing an image are not duplicates).

    Returns:
        ``{"identical_datasets": [{"content_hash", "versions": ["name@vN", ...]}],
        "duplicate_images": [{"sha256", "within_version", "datasets",
        "locations": [{"version", "file_name"}]}]}``.
    """
    with ws.session() as s:
        versions = s.execute(
            select(
                DatasetVersion.id, Dataset.name, DatasetVersion.number, DatasetVersion.content_hash
            )
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .order_by(Dataset.name, DatasetVersion.number)
        ).all()
        dup_shas = (
            select(DatasetItem.image_sha256)
            .group_by(DatasetItem.image_sha256)
            .having(func.count() > 1)
        )
        items = s.execute(
            select(DatasetItem.image_sha256, DatasetItem.version_id, DatasetItem.file_name)
            .where(DatasetItem.image_sha256.in_(dup_shas))
            .order_by(DatasetItem.image_sha256, DatasetItem.version_id, DatasetItem.file_name)
        ).all()
    ref = {vid: f"{name}@v{number}" for vid, name, number, _ in versions}
    dataset_of = {vid: name for vid, name, _, _ in versions}
    by_hash: dict[str, list[str]] = defaultdict(list)
    for vid, _, _, content_hash in versions:
        by_hash[content_hash].append(ref[vid])
    identical = [
        {"content_hash": h, "versions": refs} for h, refs in by_hash.items() if len(refs) > 1
    ]
    by_sha: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for sha, vid, file_name in items:
        by_sha[sha].append((vid, file_name))
    images = []
    for sha, places in by_sha.items():
        per_version = Counter(vid for vid, _ in places)
        names = sorted({dataset_of[vid] for vid, _ in places})
        within = any(n > 1 for n in per_version.values())
        if within or len(names) > 1:
            images.append(
                {
                    "sha256": sha,
                    "within_version": within,
                    "datasets": names,
                    "locations": [{"version": ref[vid], "file_name": f} for vid, f in places],
                }
            )
    return {"identical_datasets": identical, "duplicate_images": images}


def list_versions(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """Every version of a dataset, oldest first (label, created, counts, content hash, splits).

    Raises:
        NotFoundError: no such dataset.
    """
    from desktop_app.core.datasets import dataset_summary

    return list(dataset_summary(ws, name)["versions"])


def dataset_stats(ws: Workspace, name: str, version: str | int | None = None) -> dict[str, Any]:
    """Statistics of one version (latest by default).

    Returns:
        ``{"dataset", "version", "content_hash", "images", "labelled_images",
        "labelled_ratio", "annotations", "annotations_per_class",
        "box_sizes": {"small", "medium", "large"}, "unique_images", "size_bytes",
        "created_at", "training_runs": [{"id", "status", "model", "framework", "created_at"}]}``.
        Box sizes use COCO's area thresholds in pixels (< 32², < 96², ≥ 96²).

    Raises:
        NotFoundError: no such dataset or version.
    """
    from desktop_app.core.datasets import get_version

    info = get_version(ws, name, version)
    with ws.session() as s:
        items = s.execute(
            select(
                DatasetItem.image_sha256, DatasetItem.width, DatasetItem.height, DatasetItem.boxes
            ).where(DatasetItem.version_id == info.id)
        ).all()
        shas = sorted({sha for sha, _, _, _ in items})
        sizes: dict[str, int] = {}
        for i in range(0, len(shas), 500):
            chunk = shas[i : i + 500]
            rows = s.execute(select(Blob.sha256, Blob.size).where(Blob.sha256.in_(chunk)))
            sizes.update({sha: size for sha, size in rows})
        runs = s.execute(
            select(
                TrainingRun.id,
                TrainingRun.status,
                TrainingRun.framework,
                TrainingRun.model,
                TrainingRun.created_at,
            )
            .where(TrainingRun.dataset_version_id == info.id)
            .order_by(TrainingRun.created_at)
        ).all()
    names = list(info.class_names)
    per_class = dict.fromkeys(names, 0)
    box_sizes = {"small": 0, "medium": 0, "large": 0}
    labelled = 0
    for _, width, height, boxes in items:
        labelled += bool(boxes)
        for b in boxes:
            per_class[names[int(b[0])]] += 1
            area = float(b[3]) * width * float(b[4]) * height
            key = "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"
            box_sizes[key] += 1
    size = 0
    for sha in shas:
        if sha in sizes:
            size += sizes[sha]
        elif ws.blobs.exists(sha):
            size += ws.blobs.path(sha).stat().st_size
    return {
        "dataset": info.dataset,
        "version": info.label,
        "content_hash": info.content_hash,
        "created_at": _iso(info.created_at),
        "images": len(items),
        "labelled_images": labelled,
        "labelled_ratio": labelled / len(items) if items else 0.0,
        "annotations": sum(per_class.values()),
        "annotations_per_class": per_class,
        "box_sizes": box_sizes,
        "unique_images": len(shas),
        "size_bytes": size,
        "splits": dict(info.splits),
        "training_runs": [
            {
                "id": run_id,
                "status": status,
                "framework": framework,
                "model": model,
                "created_at": _iso(created),
            }
            for run_id, status, framework, model, created in runs
        ],
    }
