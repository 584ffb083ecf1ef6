"""Stored datasets: integrity (re-hash every image), duplicates, versions and statistics.

Every function reads the workspace and writes nothing. Hashing goes through
:meth:`BlobStore.verify`, the same check ``outpost workspace check`` runs.
"""

from __future__ import annotations

import math
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
# The box-area histogram: relative areas from 10**AREA_LOG_MIN to 1 in AREA_BINS log bins.
AREA_LOG_MIN = -4
AREA_BINS = 10
LABEL_STATUS_KEYS = ("labelled", "unlabelled", "needs_review")


def _iso(dt: datetime) -> str:
    return (dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt).isoformat(
        timespec="seconds"
    )


def _versions(ws: Workspace, name: str, version: str | int | None) -> list[tuple[int, str]]:
    """(version id, "name@vN") of one version, or of every version when ``version`` is None.

    Every version means the numbered ones, oldest first, then the draft when there is one.
    """
    from desktop_app.core.datasets import find_version

    with ws.session() as s:
        if version is not None:
            dataset, row = find_version(s, name, version)
            return [(row.id, f"{dataset.name}@{row.label}")]
        dataset, _ = find_version(s, name)
        ordered = sorted(dataset.versions, key=lambda v: (v.is_draft, v.number))
        return [(v.id, f"{dataset.name}@{v.label}") for v in ordered]


def validate_dataset(ws: Workspace, name: str, version: str | int | None = None) -> dict[str, Any]:
    """Re-check every stored image of a version (or of all versions) against its sha256.

    All versions include the draft when there is one (``name@draft``). Each blob is hashed
    once, however many items share it.

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
    Drafts take no part in identical-dataset detection (a draft usually equals its latest
    version); their images count like any version's (``name@draft``).

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
    ref = {
        vid: f"{name}@draft" if number == 0 else f"{name}@v{number}"
        for vid, name, number, _ in versions
    }
    dataset_of = {vid: name for vid, name, _, _ in versions}
    by_hash: dict[str, list[str]] = defaultdict(list)
    for vid, _, number, content_hash in versions:
        if number > 0:
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

    Each entry has its ``tags``, ``origin`` and ``message``. A ``"draft"`` entry (with
    ``"changed": true``) comes last when the draft differs from the latest version.

    Raises:
        NotFoundError: no such dataset.
    """
    from desktop_app.core.datasets import dataset_summary

    return list(dataset_summary(ws, name)["versions"])


def area_bins() -> list[float]:
    """Edges of the box-area histogram: relative area (box / image) on 10 log-spaced bins.

    The edges run from 1e-4 (a box of 1% by 1% of the image) to 1; smaller boxes count in
    the first bin.
    """
    return [10 ** (AREA_LOG_MIN * (1 - i / AREA_BINS)) for i in range(AREA_BINS + 1)]


def _area_bin(relative_area: float) -> int:
    if relative_area <= 0:
        return 0
    position = (math.log10(relative_area) - AREA_LOG_MIN) / -AREA_LOG_MIN * AREA_BINS
    return min(max(int(position), 0), AREA_BINS - 1)


def dataset_stats(ws: Workspace, name: str, version: str | int | None = None) -> dict[str, Any]:
    """Statistics of one version (latest by default; a tag or ``"draft"`` works too).

    Returns:
        ``{"dataset", "version", "content_hash", "created_at", "last_change", "images",
        "label_status": {"labelled", "unlabelled", "needs_review"}, "labelled_images",
        "labelled_ratio", "annotations", "annotations_per_class",
        "box_sizes": {"small", "medium", "large"}, "box_area_histogram": {"edges",
        "counts", "per_class": {name: counts}}, "unique_images", "size_bytes", "splits",
        "training_runs": [{"id", "status", "model", "framework", "created_at"}],
        "versions_used_by_runs": {"vN": [run ids]}}``.
        An image is labelled when its label status is "labelled" (a labelled image may
        have no boxes: a background image). Box sizes use COCO's area thresholds in pixels
        (< 32², < 96², ≥ 96²); the histogram uses the box's area relative to its image.
        ``last_change`` is the dataset's last edit, else its latest version's creation.

    Raises:
        NotFoundError: no such dataset or version.
    """
    from desktop_app.core.datasets import get_version

    info = get_version(ws, name, version)
    with ws.session() as s:
        items = s.execute(
            select(
                DatasetItem.image_sha256,
                DatasetItem.width,
                DatasetItem.height,
                DatasetItem.boxes,
                DatasetItem.label_status,
            ).where(DatasetItem.version_id == info.id)
        ).all()
        shas = sorted({row[0] for row in items})
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
        used = s.execute(
            select(DatasetVersion.number, TrainingRun.id)
            .join(TrainingRun, TrainingRun.dataset_version_id == DatasetVersion.id)
            .where(DatasetVersion.dataset_id == info.dataset_id)
            .order_by(DatasetVersion.number, TrainingRun.created_at)
        ).all()
        dataset = s.get(Dataset, info.dataset_id)
        newest = s.scalar(
            select(func.max(DatasetVersion.created_at)).where(
                DatasetVersion.dataset_id == info.dataset_id, DatasetVersion.number > 0
            )
        )
        changed_at = dataset.updated_at if dataset is not None else None
    last_change = changed_at or newest or info.created_at
    names = list(info.class_names)
    per_class = dict.fromkeys(names, 0)
    box_sizes = {"small": 0, "medium": 0, "large": 0}
    histogram = [0] * AREA_BINS
    per_class_hist = {n: [0] * AREA_BINS for n in names}
    status: Counter[str] = Counter({k: 0 for k in LABEL_STATUS_KEYS})
    for _, width, height, boxes, label_status in items:
        status[label_status] += 1
        for b in boxes:
            cls = int(b[0])
            cls_name = names[cls] if 0 <= cls < len(names) else f"#{cls}"
            per_class[cls_name] = per_class.get(cls_name, 0) + 1
            area = float(b[3]) * width * float(b[4]) * height
            key = "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"
            box_sizes[key] += 1
            k = _area_bin(float(b[3]) * float(b[4]))
            histogram[k] += 1
            per_class_hist.setdefault(cls_name, [0] * AREA_BINS)[k] += 1
    size = 0
    for sha in shas:
        if sha in sizes:
            size += sizes[sha]
        elif ws.blobs.exists(sha):
            size += ws.blobs.path(sha).stat().st_size
    by_version: dict[str, list[str]] = {}
    for number, run_id in used:
        by_version.setdefault("draft" if number == 0 else f"v{number}", []).append(run_id)
    labelled = status["labelled"]
    return {
        "dataset": info.dataset,
        "version": info.label,
        "content_hash": info.content_hash,
        "created_at": _iso(info.created_at),
        "last_change": _iso(last_change),
        "images": len(items),
        "label_status": dict(status),
        "labelled_images": labelled,
        "labelled_ratio": labelled / len(items) if items else 0.0,
        "annotations": sum(per_class.values()),
        "annotations_per_class": per_class,
        "box_sizes": box_sizes,
        "box_area_histogram": {
            "edges": area_bins(),
            "counts": histogram,
            "per_class": per_class_hist,
        },
        "unique_images": len(shas),
        "size_bytes": size,
        "splits": dict(info.splits),
        "training_runs": [
            {
                "id": run_id,
                "status": status_,
                "framework": framework,
                "model": model,
                "created_at": _iso(created),
            }
            for run_id, status_, framework, model, created in runs
        ],
        "versions_used_by_runs": by_version,
    }
