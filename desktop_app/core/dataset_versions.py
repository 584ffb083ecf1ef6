"""Versions of a dataset: snapshots, tags, diffs, restores, split settings, training versions.

Numbered versions never change; the draft (number 0) is the one mutable working copy (see
:mod:`desktop_app.core.dataset_draft`). A snapshot turns the draft into the next numbered
version, or reuses the version that already has the draft's content hash. Tags are a
user's names for numbered versions (``shapes@stable``). A restore makes the draft a copy of
an older version, first saving a draft that no version holds yet, so nothing is lost.

Split settings have three levels: a training job's override wins over the dataset's own
setting (``Dataset.split_settings``), which wins over the default (auto, val 0.2, test 0,
seed 42). An import keeps the source's split (``split_method="source"``) and leaves the
dataset's setting empty; a setting is applied only when the user sets one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from desktop_app.core.dataset_draft import (
    copy_items,
    ensure_draft,
    get_draft,
    latest_version,
    refresh_version,
    touch,
)
from desktop_app.core.dataset_split import (
    DEFAULT_SPLIT,
    SPLITS,
    compute_split,
    content_hash,
    normalize_split_settings,
)
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import (
    AnnotationEdit,
    Dataset,
    DatasetItem,
    DatasetTag,
    DatasetVersion,
)

if TYPE_CHECKING:
    from desktop_app.core.datasets import VersionInfo
    from desktop_app.core.workspace import Workspace

__all__ = [
    "TAG_RE",
    "check_tag",
    "diff_versions",
    "list_tags",
    "resolve_training_version",
    "restore_version",
    "set_split",
    "snapshot",
    "split_settings",
    "tag_version",
    "untag",
]

TAG_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_VERSION_LIKE = re.compile(r"^[vV]?\d+$")
SNAPSHOT_ORIGINS = ("snapshot", "training", "restore")
EXAMPLES = 20  # how many examples a diff lists per kind of change
COORD_TOLERANCE = 1e-6

VersionRef = str | int | None


# ---- helpers ---------------------------------------------------------------------------


def check_tag(tag: str) -> str:
    """Return ``tag`` stripped, or raise when it cannot name a version.

    Raises:
        InvalidArgumentError: not 1-64 letters, digits, ``.``, ``_`` or ``-``; ``"draft"``;
            or shaped like a version number (``v3``, ``3``).
    """
    t = str(tag).strip()
    if not TAG_RE.match(t):
        raise InvalidArgumentError(
            f"tag {tag!r} is not valid; use 1-64 letters, digits, '.', '_' or '-' (e.g. stable)"
        )
    if t.lower() == "draft" or _VERSION_LIKE.match(t):
        raise InvalidArgumentError(
            f"tag {t!r} would be read as a version; choose another name (e.g. stable)"
        )
    return t


def _dataset(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFoundError(f"no dataset named {name!r}; list datasets with `outpost dataset list`")
    return dataset


def _find(session: Session, name: str, version: VersionRef) -> tuple[Dataset, DatasetVersion]:
    from desktop_app.core.datasets import find_version

    return find_version(session, name, version)


def _items(session: Session, version_id: int) -> list[DatasetItem]:
    return list(
        session.scalars(
            select(DatasetItem)
            .where(DatasetItem.version_id == version_id)
            .order_by(DatasetItem.file_name)
        )
    )


def _with_hash(session: Session, dataset: Dataset, digest: str) -> DatasetVersion | None:
    """The newest numbered version of ``dataset`` whose content hash is ``digest``."""
    return session.scalar(
        select(DatasetVersion)
        .where(
            DatasetVersion.dataset_id == dataset.id,
            DatasetVersion.number > 0,
            DatasetVersion.content_hash == digest,
        )
        .order_by(DatasetVersion.number.desc())
        .limit(1)
    )


def _next_number(session: Session, dataset: Dataset) -> int:
    top = session.scalar(
        select(func.max(DatasetVersion.number)).where(DatasetVersion.dataset_id == dataset.id)
    )
    return int(top or 0) + 1


def _split_counts(session: Session, version_id: int) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS, 0)
    rows = session.execute(
        select(DatasetItem.split, func.count())
        .where(DatasetItem.version_id == version_id)
        .group_by(DatasetItem.split)
    ).all()
    counts.update({split: int(n) for split, n in rows})
    return counts


def _new_version(
    session: Session,
    dataset: Dataset,
    source: DatasetVersion,
    *,
    origin: str,
    message: str | None,
) -> DatasetVersion:
    """Version N+1 with ``source``'s class names, split fields and problems (no items yet)."""
    row = DatasetVersion(
        dataset_id=dataset.id,
        number=_next_number(session, dataset),
        content_hash=source.content_hash,
        class_names=list(source.class_names),
        split_method=source.split_method,
        split_seed=source.split_seed,
        val_fraction=source.val_fraction,
        test_fraction=source.test_fraction,
        num_images=source.num_images,
        num_annotations=source.num_annotations,
        problems=list(source.problems or []),
        origin=origin,
        message=message,
    )
    session.add(row)
    session.flush()
    return row


def _snapshot(
    session: Session, dataset: Dataset, *, message: str | None, origin: str
) -> tuple[DatasetVersion, bool]:
    """The numbered version holding the draft's content, made now when none does.

    Returns:
        (version, created). Without a draft, the latest version (not created).

    Raises:
        NotFoundError: the dataset has no version at all.
    """
    draft = get_draft(session, dataset)
    if draft is None:
        latest = latest_version(session, dataset)
        if latest is None:
            raise NotFoundError(f"dataset {dataset.name!r} has no version; import it first")
        return latest, False
    refresh_version(session, draft)
    same = _with_hash(session, dataset, draft.content_hash)
    if same is not None:
        return same, False
    row = _new_version(session, dataset, draft, origin=origin, message=message)
    copy_items(session, draft.id, row.id)
    return row, True


def _version_dict(row: DatasetVersion) -> dict[str, Any]:
    return {
        "version": row.label,
        "content_hash": row.content_hash,
        "images": row.num_images,
        "annotations": row.num_annotations,
        "origin": row.origin,
        "message": row.message,
    }


# ---- snapshots and tags ----------------------------------------------------------------


def snapshot(
    ws: Workspace, name: str, *, message: str | None = None, origin: str = "snapshot"
) -> dict[str, Any]:
    """Turn the draft into the next numbered version, or reuse the version that equals it.

    With no draft, or a draft whose content hash equals an existing version's, that version
    is reused. Otherwise version N+1 is made as a copy of the draft's items, class names,
    split fields and problems. The draft stays (it equals the new version).

    Args:
        ws: The open workspace.
        name: The dataset's name.
        message: What changed (shown in ``outpost dataset versions``).
        origin: ``"snapshot"``, ``"training"`` or ``"restore"``.

    Returns:
        ``{"dataset", "version", "created", "reused", "content_hash", "images",
        "annotations", "origin", "message"}``.

    Raises:
        NotFoundError: no such dataset, or it has no version.
        InvalidArgumentError: an unknown origin.
    """
    if origin not in SNAPSHOT_ORIGINS:
        raise InvalidArgumentError(
            f"snapshot origin {origin!r} is not known; use {', '.join(SNAPSHOT_ORIGINS)}"
        )
    with ws.session() as s:
        dataset = _dataset(s, name)
        row, created = _snapshot(s, dataset, message=message, origin=origin)
        return {
            "dataset": dataset.name,
            **_version_dict(row),
            "created": created,
            "reused": not created,
        }


def tag_version(ws: Workspace, name: str, version: VersionRef, tag: str) -> dict[str, Any]:
    """Name a numbered version with a tag (``shapes@stable``); an existing tag moves.

    Returns:
        ``{"dataset", "tag", "version", "moved_from"}`` (``moved_from`` is the version the
        tag named before, or None).

    Raises:
        InvalidArgumentError: a bad tag name, ``version`` is the draft, or it is neither a
            version nor a tag.
        NotFoundError: no such dataset or version.
    """
    t = check_tag(tag)
    with ws.session() as s:
        dataset, row = _find(s, name, version)
        if row.is_draft:
            raise InvalidArgumentError(
                f"tags name numbered versions; snapshot the draft first with "
                f"`outpost dataset snapshot {name}`"
            )
        existing = s.scalar(
            select(DatasetTag).where(DatasetTag.dataset_id == dataset.id, DatasetTag.tag == t)
        )
        moved_from = None
        if existing is None:
            s.add(DatasetTag(dataset_id=dataset.id, tag=t, version_id=row.id))
        else:
            old = s.get(DatasetVersion, existing.version_id)
            moved_from = old.label if old is not None and old.id != row.id else None
            existing.version_id = row.id
        return {"dataset": dataset.name, "tag": t, "version": row.label, "moved_from": moved_from}


def untag(ws: Workspace, name: str, tag: str) -> dict[str, Any]:
    """Remove a tag.

    Returns:
        ``{"dataset", "tag", "version"}`` (the version it named).

    Raises:
        NotFoundError: no such dataset or tag.
    """
    with ws.session() as s:
        dataset = _dataset(s, name)
        row = s.scalar(
            select(DatasetTag).where(DatasetTag.dataset_id == dataset.id, DatasetTag.tag == tag)
        )
        if row is None:
            raise NotFoundError(
                f"dataset {name!r} has no tag {tag!r}; list tags with `outpost dataset versions {name}`"
            )
        version = s.get(DatasetVersion, row.version_id)
        s.delete(row)
        return {
            "dataset": dataset.name,
            "tag": tag,
            "version": version.label if version is not None else None,
        }


def list_tags(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """Every tag of a dataset, by name: ``[{"tag", "version", "created_at"}]``.

    Raises:
        NotFoundError: no such dataset.
    """
    with ws.session() as s:
        dataset = _dataset(s, name)
        rows = s.execute(
            select(DatasetTag.tag, DatasetVersion.number, DatasetTag.created_at)
            .join(DatasetVersion, DatasetVersion.id == DatasetTag.version_id)
            .where(DatasetTag.dataset_id == dataset.id)
            .order_by(DatasetTag.tag)
        ).all()
    return [
        {"tag": tag, "version": f"v{number}", "created_at": created.isoformat(timespec="seconds")}
        for tag, number, created in rows
    ]


# ---- diff ------------------------------------------------------------------------------


def _named_box(box: Sequence[Any], names: Sequence[str]) -> tuple[str, tuple[float, ...], Any]:
    cls = int(box[0])
    name = str(names[cls]) if 0 <= cls < len(names) else f"#{cls}"
    extra = box[5] if len(box) > 5 else None
    return name, tuple(float(v) for v in box[1:5]), extra


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(abs(x - y) <= COORD_TOLERANCE for x, y in zip(a, b, strict=True))


def _box_changes(
    a: Sequence[Sequence[Any]],
    b: Sequence[Sequence[Any]],
    names_a: Sequence[str],
    names_b: Sequence[str],
) -> dict[str, list[Any]]:
    """Boxes added, removed and changed between two box lists of one image.

    Boxes match when class name and coordinates agree (within 1e-6); a matched pair whose
    extras (polygons, keypoints, flags) differ, or a pair at the same coordinates with
    another class, is "changed".
    """
    left = [_named_box(x, names_a) for x in a]
    right = [_named_box(x, names_b) for x in b]
    free = list(range(len(right)))
    unmatched: list[int] = []
    changed: list[dict[str, Any]] = []
    for i, (cls, xywh, extra) in enumerate(left):
        j = next((j for j in free if right[j][0] == cls and _close(right[j][1], xywh)), None)
        if j is None:
            unmatched.append(i)
            continue
        free.remove(j)
        if right[j][2] != extra:
            changed.append({"class": cls, "box": list(xywh), "change": "details"})
    removed: list[dict[str, Any]] = []
    for i in unmatched:
        cls, xywh, _ = left[i]
        j = next((j for j in free if _close(right[j][1], xywh)), None)
        if j is None:
            removed.append({"class": cls, "box": list(xywh)})
        else:
            free.remove(j)
            changed.append(
                {"class": right[j][0], "from_class": cls, "box": list(xywh), "change": "class"}
            )
    added = [{"class": right[j][0], "box": list(right[j][1])} for j in free]
    return {"added": added, "removed": removed, "changed": changed}


def diff_versions(ws: Workspace, name: str, a: VersionRef, b: VersionRef) -> dict[str, Any]:
    """What changed from version ``a`` to version ``b`` (either may be ``"draft"`` or a tag).

    Images are matched by file name. Annotation changes are counted over images present in
    both versions (added and removed images show in the class counts). Lists of examples
    hold at most 20 entries; the counts are complete.

    Returns:
        ``{"dataset", "a", "b", "identical",
        "images": {"added", "removed", "changed", "examples": {...}}`` (changed: same file
        name, different image), ``"annotations": {"added", "removed", "changed", "images",
        "examples": [{"file_name", "added", "removed", "changed"}]}``, ``"splits": {"moved",
        "a", "b", "examples": [{"file_name", "from", "to"}]}``, ``"classes": {"a", "b",
        "added", "removed"}``, ``"class_counts": {name: {"a", "b", "delta"}}``,
        ``"label_status": {"changed", "examples": [{"file_name", "from", "to"}]}}``.

    Raises:
        NotFoundError: no such dataset or version, or no draft.
        InvalidArgumentError: a reference that is neither a version nor a tag.
    """
    with ws.session() as s:
        _, row_a = _find(s, name, a)
        _, row_b = _find(s, name, b)
        label_a, label_b = row_a.label, row_b.label
        hash_a, hash_b = row_a.content_hash, row_b.content_hash
        names_a, names_b = list(row_a.class_names), list(row_b.class_names)
        items_a = {
            i.file_name: (i.image_sha256, i.split, i.label_status, list(i.boxes))
            for i in _items(s, row_a.id)
        }
        items_b = {
            i.file_name: (i.image_sha256, i.split, i.label_status, list(i.boxes))
            for i in _items(s, row_b.id)
        }
    added = sorted(set(items_b) - set(items_a))
    removed = sorted(set(items_a) - set(items_b))
    both = sorted(set(items_a) & set(items_b))
    replaced = [fn for fn in both if items_a[fn][0] != items_b[fn][0]]
    moves = [
        {"file_name": fn, "from": items_a[fn][1], "to": items_b[fn][1]}
        for fn in both
        if items_a[fn][1] != items_b[fn][1]
    ]
    statuses = [
        {"file_name": fn, "from": items_a[fn][2], "to": items_b[fn][2]}
        for fn in both
        if items_a[fn][2] != items_b[fn][2]
    ]
    totals: Counter[str] = Counter()
    per_image = []
    for fn in both:
        changes = _box_changes(items_a[fn][3], items_b[fn][3], names_a, names_b)
        if any(changes.values()):
            counts = {k: len(v) for k, v in changes.items()}
            totals.update(counts)
            per_image.append({"file_name": fn, **counts, "boxes": changes})
    count_a = _class_counts(items_a.values(), names_a)
    count_b = _class_counts(items_b.values(), names_b)
    class_counts = {
        cls: {
            "a": count_a.get(cls, 0),
            "b": count_b.get(cls, 0),
            "delta": count_b.get(cls, 0) - count_a.get(cls, 0),
        }
        for cls in list(dict.fromkeys([*names_a, *names_b, *count_a, *count_b]))
    }
    return {
        "dataset": name,
        "a": label_a,
        "b": label_b,
        "identical": hash_a == hash_b,
        "images": {
            "added": len(added),
            "removed": len(removed),
            "changed": len(replaced),
            "examples": {
                "added": added[:EXAMPLES],
                "removed": removed[:EXAMPLES],
                "changed": replaced[:EXAMPLES],
            },
        },
        "annotations": {
            "added": totals["added"],
            "removed": totals["removed"],
            "changed": totals["changed"],
            "images": len(per_image),
            "examples": per_image[:EXAMPLES],
        },
        "splits": {
            "moved": len(moves),
            "a": _counts(v[1] for v in items_a.values()),
            "b": _counts(v[1] for v in items_b.values()),
            "examples": moves[:EXAMPLES],
        },
        "classes": {
            "a": names_a,
            "b": names_b,
            "added": [c for c in names_b if c not in names_a],
            "removed": [c for c in names_a if c not in names_b],
        },
        "class_counts": class_counts,
        "label_status": {"changed": len(statuses), "examples": statuses[:EXAMPLES]},
    }


def _counts(splits: Any) -> dict[str, int]:
    out = dict.fromkeys(SPLITS, 0)
    out.update(Counter(splits))
    return out


def _class_counts(items: Any, names: Sequence[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _, _, _, boxes in items:
        counts.update(_named_box(b, names)[0] for b in boxes)
    return counts


# ---- restore ---------------------------------------------------------------------------


def restore_version(ws: Workspace, name: str, version: VersionRef) -> dict[str, Any]:
    """Make the draft a copy of a numbered version (its items, classes and split).

    A draft that no numbered version holds is first saved as a new version ("auto-saved
    before restoring vN"), so nothing is lost. The edit journal is cleared: its entries
    describe a draft that no longer exists. Numbered versions are not changed.

    Returns:
        ``{"dataset", "restored", "auto_saved", "journal_cleared", "draft": {"images",
        "annotations", "content_hash"}}`` (``auto_saved`` is the saved version, or None).

    Raises:
        NotFoundError: no such dataset or version.
        InvalidArgumentError: ``version`` is the draft itself, or neither a version nor a tag.
    """
    with ws.session() as s:
        dataset, row = _find(s, name, version)
        if row.is_draft:
            raise InvalidArgumentError(
                f"name a numbered version to restore (e.g. {name}@v1), not the draft"
            )
        auto_saved = None
        draft = get_draft(s, dataset)
        if draft is not None:
            refresh_version(s, draft)
            if _with_hash(s, dataset, draft.content_hash) is None:
                saved, _ = _snapshot(
                    s,
                    dataset,
                    message=f"auto-saved before restoring {row.label}",
                    origin="snapshot",
                )
                auto_saved = saved.label
            s.execute(delete(DatasetItem).where(DatasetItem.version_id == draft.id))
            s.flush()
        else:
            draft = ensure_draft(s, dataset)
            s.execute(delete(DatasetItem).where(DatasetItem.version_id == draft.id))
            s.flush()
        copy_items(s, row.id, draft.id)
        draft.class_names = list(row.class_names)
        draft.split_method = row.split_method
        draft.split_seed = row.split_seed
        draft.val_fraction = row.val_fraction
        draft.test_fraction = row.test_fraction
        draft.problems = list(row.problems or [])
        draft.origin = "restore"
        draft.message = f"restored from {row.label}"
        refresh_version(s, draft)
        dataset.class_names = list(row.class_names)
        cleared = s.execute(delete(AnnotationEdit).where(AnnotationEdit.dataset_id == dataset.id))
        touch(dataset)
        return {
            "dataset": dataset.name,
            "restored": row.label,
            "auto_saved": auto_saved,
            "journal_cleared": int(getattr(cleared, "rowcount", 0) or 0),
            "draft": {
                "images": draft.num_images,
                "annotations": draft.num_annotations,
                "content_hash": draft.content_hash,
            },
        }


# ---- split settings --------------------------------------------------------------------


def split_settings(ws: Workspace, name: str) -> dict[str, Any]:
    """The dataset's split setting and the split of its draft (or latest version).

    Returns:
        ``{"dataset", "settings", "level": "dataset"|"default", "version", "split_method",
        "splits": {"train", "val", "test"}}``.

    Raises:
        NotFoundError: no such dataset, or it has no version.
    """
    with ws.session() as s:
        dataset = _dataset(s, name)
        row = get_draft(s, dataset) or latest_version(s, dataset)
        if row is None:
            raise NotFoundError(f"dataset {name!r} has no version; import it first")
        stored = dataset.split_settings
        return {
            "dataset": dataset.name,
            "settings": normalize_split_settings(stored or {}),
            "level": "dataset" if stored else "default",
            "version": row.label,
            "split_method": row.split_method,
            "splits": _split_counts(s, row.id),
        }


def set_split(ws: Workspace, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Store the dataset's split setting and apply it to the draft (made when needed).

    Every item of the draft gets the split :func:`compute_split` gives it; the draft's
    split fields, counts and content hash follow, and the dataset's "last change" is now.
    Nothing is written when the setting is invalid.

    Args:
        ws: The open workspace.
        name: The dataset's name.
        settings: A split setting (missing keys take the default's values).

    Returns:
        ``{"dataset", "version": "draft", "settings", "splits", "moved"}`` (``moved``: how
        many images changed split).

    Raises:
        NotFoundError: no such dataset, or it has no version.
        InvalidArgumentError: an invalid setting, a manual setting that leaves images
            unassigned, or assignments naming images the draft does not have.
    """
    normalized = normalize_split_settings(settings)
    with ws.session() as s:
        dataset = _dataset(s, name)
        draft = ensure_draft(s, dataset)
        items = _items(s, draft.id)
        splits = compute_split([(i.file_name, i.boxes) for i in items], normalized)
        moved = 0
        for item, split in zip(items, splits, strict=True):
            if item.split != split:
                item.split = split
                moved += 1
        draft.split_method = normalized["method"]
        draft.split_seed = normalized["seed"]
        draft.val_fraction = normalized["val"]
        draft.test_fraction = normalized["test"]
        dataset.split_settings = normalized
        s.flush()
        refresh_version(s, draft)
        touch(dataset)
        return {
            "dataset": dataset.name,
            "version": draft.label,
            "settings": normalized,
            "splits": _counts(splits),
            "moved": moved,
        }


# ---- training --------------------------------------------------------------------------


def _describe(settings: Mapping[str, Any]) -> str:
    return (
        f"method={settings['method']} val={settings['val']:g} test={settings['test']:g} "
        f"seed={settings['seed']}"
    )


def resolve_training_version(
    ws: Workspace,
    name: str,
    version: VersionRef = None,
    split_override: Mapping[str, Any] | None = None,
) -> VersionInfo:
    """The numbered version a training run trains on, made or reused as needed.

    Without ``version`` the draft is snapshotted (origin "training"; an unchanged draft
    reuses its version; with no draft, the latest version). An explicit version is used as
    it is (``"draft"`` is snapshotted first). With a split override (whose keys win over the
    dataset's setting, which wins over the default), the version's images are split again;
    when that changes any split, a version with the new split is made (origin "training",
    message "split override ...") or the existing one with that content hash is reused.

    Raises:
        NotFoundError: no such dataset or version.
        InvalidArgumentError: an invalid split override.
    """
    from desktop_app.core.datasets import get_version

    with ws.session() as s:
        if version is None or (isinstance(version, str) and version.strip().lower() == "draft"):
            dataset = _dataset(s, name)
            row, _ = _snapshot(s, dataset, message="snapshot for training", origin="training")
        else:
            dataset, row = _find(s, name, version)
        if split_override:
            settings = normalize_split_settings(
                split_override, base=dataset.split_settings or DEFAULT_SPLIT
            )
            items = _items(s, row.id)
            splits = compute_split([(i.file_name, i.boxes) for i in items], settings)
            if any(i.split != sp for i, sp in zip(items, splits, strict=True)):
                digest = content_hash(
                    row.class_names,
                    [
                        (i.file_name, i.image_sha256, i.boxes, sp, i.label_status)
                        for i, sp in zip(items, splits, strict=True)
                    ],
                )
                existing = _with_hash(s, dataset, digest)
                if existing is not None:
                    row = existing
                else:
                    source = row
                    row = _new_version(
                        s,
                        dataset,
                        source,
                        origin="training",
                        message=f"split override {_describe(settings)} of {source.label}",
                    )
                    copy_items(s, source.id, row.id)
                    by_name = dict(zip((i.file_name for i in items), splits, strict=True))
                    for item in _items(s, row.id):
                        item.split = by_name[item.file_name]
                    row.split_method = settings["method"]
                    row.split_seed = settings["seed"]
                    row.val_fraction = settings["val"]
                    row.test_fraction = settings["test"]
                    s.flush()
                    refresh_version(s, row)
        number = row.number
    return get_version(ws, name, number)
