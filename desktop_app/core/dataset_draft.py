"""A dataset's draft: the one mutable working copy (``DatasetVersion.number == 0``).

Numbered versions never change. Edits, class changes, added images and pre-labelling
proposals go to the draft, which is made on first use as a copy of the latest version.
A snapshot turns the draft's content into the next numbered version, or reuses an existing
version with the same content hash.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from desktop_app.core.dataset_split import content_hash
from desktop_app.core.errors import NotFoundError
from desktop_app.core.models import Dataset, DatasetItem, DatasetVersion

DRAFT = 0


def get_draft(session: Session, dataset: Dataset) -> DatasetVersion | None:
    """The dataset's draft row, or None when nobody has edited since the last version."""
    return session.scalar(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.number == DRAFT
        )
    )


def latest_version(session: Session, dataset: Dataset) -> DatasetVersion | None:
    """The highest numbered version (never the draft), or None."""
    return session.scalar(
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.number > DRAFT)
        .order_by(DatasetVersion.number.desc())
        .limit(1)
    )


def ensure_draft(session: Session, dataset: Dataset) -> DatasetVersion:
    """The draft, made now as a copy of the latest version when there is none.

    Raises:
        NotFoundError: the dataset has no version to start a draft from.
    """
    draft = get_draft(session, dataset)
    if draft is not None:
        return draft
    base = latest_version(session, dataset)
    if base is None:
        raise NotFoundError(f"dataset {dataset.name!r} has no version to edit; import it first")
    draft = DatasetVersion(
        dataset_id=dataset.id,
        number=DRAFT,
        content_hash=base.content_hash,
        class_names=list(base.class_names),
        split_method=base.split_method,
        split_seed=base.split_seed,
        val_fraction=base.val_fraction,
        test_fraction=base.test_fraction,
        num_images=base.num_images,
        num_annotations=base.num_annotations,
        problems=list(base.problems or []),
        origin="draft",
        message=f"draft from {base.label}",
    )
    session.add(draft)
    session.flush()
    copy_items(session, base.id, draft.id)
    return draft


def copy_items(session: Session, source_version_id: int, target_version_id: int) -> None:
    """Copy every item of one version into another (an empty one)."""
    rows = session.execute(
        select(
            DatasetItem.file_name,
            DatasetItem.image_sha256,
            DatasetItem.width,
            DatasetItem.height,
            DatasetItem.split,
            DatasetItem.label_status,
            DatasetItem.boxes,
        ).where(DatasetItem.version_id == source_version_id)
    ).all()
    session.add_all(
        DatasetItem(
            version_id=target_version_id,
            file_name=fn,
            image_sha256=sha,
            width=w,
            height=h,
            split=split,
            label_status=status,
            boxes=list(boxes),
        )
        for fn, sha, w, h, split, status, boxes in rows
    )
    session.flush()


def discard_draft(session: Session, dataset: Dataset) -> bool:
    """Drop the draft and its items; True when there was one."""
    draft = get_draft(session, dataset)
    if draft is None:
        return False
    session.execute(delete(DatasetItem).where(DatasetItem.version_id == draft.id))
    session.delete(draft)
    session.flush()
    return True


def refresh_version(session: Session, version: DatasetVersion) -> str:
    """Recompute a (draft) version's counts and content hash from its items; returns the hash."""
    rows = session.execute(
        select(
            DatasetItem.file_name,
            DatasetItem.image_sha256,
            DatasetItem.boxes,
            DatasetItem.split,
            DatasetItem.label_status,
        ).where(DatasetItem.version_id == version.id)
    ).all()
    version.content_hash = content_hash(version.class_names, [tuple(r) for r in rows])
    version.num_images = len(rows)
    version.num_annotations = sum(len(r[2]) for r in rows)
    return version.content_hash


def touch(dataset: Dataset) -> None:
    """Record that the dataset changed now (its "last change")."""
    dataset.updated_at = datetime.now(timezone.utc)
