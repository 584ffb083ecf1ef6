"""The rows a thumbnail grid needs, read without loading annotations.

A grid over 100,000 images must not build 100,000 annotation dictionaries: it reads the
light columns (id, file name, image hash, split, label status) in one query, and each
image's annotations only when it is opened (``desktop_app.core.datasets.get_item``). The
class filter reads the annotation column and nothing else; the QA filter takes the file names
the QA report names (``desktop_app.core.datasets.qa_report``). Runs off the UI thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from desktop_app.core.dataset_edit import SPLITS, resolve_version
from desktop_app.core.datasets import qa_report
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import DatasetItem
from desktop_app.core.workspace import Workspace

LABEL_STATUSES = ("labelled", "unlabelled", "needs_review")


def _fetch_all(session: Session, query: Select[Any] | Any) -> list[tuple[Any, ...]]:
    """Every row of ``query`` as plain tuples, straight from the database driver.

    Skips the ORM's per-row objects: 100,000 rows come back several times faster, which is
    most of the time a large grid takes to appear.
    """
    compiled = query.compile(dialect=session.get_bind().dialect)
    params: Any = (
        tuple(compiled.params[k] for k in compiled.positiontup or ())
        if compiled.positional
        else compiled.params
    )
    raw = session.connection().connection.driver_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        cursor.execute(str(compiled), params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _boxes(value: Any) -> list[Any]:
    """The JSON column as the driver returns it (text) or already decoded."""
    if isinstance(value, str):
        decoded = json.loads(value)
        return decoded if isinstance(decoded, list) else []
    return list(value or [])


def working_qa_report(
    ws: Workspace, name: str, version: str | None = None, max_examples: int = 20
) -> dict[str, Any]:
    """The QA report of ``version``; None: the draft when there is one, else the latest."""
    if version is not None:
        return qa_report(ws, name, version, max_examples=max_examples)
    try:
        return qa_report(ws, name, "draft", max_examples=max_examples)
    except NotFoundError:
        return qa_report(ws, name, None, max_examples=max_examples)


@dataclass(frozen=True)
class ItemFilter:
    """What the grid shows: None everywhere means every image of the version."""

    class_name: str | None = None
    status: str | None = None
    split: str | None = None
    qa_check: str | None = None

    def active(self) -> bool:
        """True when any filter is set."""
        return any(v is not None for v in (self.class_name, self.status, self.split, self.qa_check))


class ItemRow(NamedTuple):
    """One image of the grid (annotations are read when it is opened).

    A named tuple: 100,000 of them are made in a fraction of the time dataclasses take.
    """

    id: int
    file_name: str
    sha256: str
    split: str
    label_status: str


@dataclass(frozen=True)
class ItemIndex:
    """The filtered rows of one version, with its label and class names."""

    dataset: str
    version: str
    class_names: tuple[str, ...]
    rows: list[ItemRow]
    total: int
    offset: int = 0
    complete: bool = True  # False: more rows follow from ``offset + len(rows)``


def item_index(
    ws: Workspace,
    name: str,
    version: str | None = None,
    filters: ItemFilter | None = None,
    *,
    offset: int = 0,
    limit: int | None = None,
) -> ItemIndex:
    """The images of ``name`` (the draft, else the latest version) that pass ``filters``.

    ``offset``/``limit`` page through the rows by file name (a grid shows its first page at
    once and reads the rest after); the class and QA filters read every row and ignore them.

    Raises:
        NotFoundError: no such dataset or version.
        InvalidArgumentError: an unknown class, split or label status.
    """
    f = filters or ItemFilter()
    if f.split is not None and f.split not in SPLITS:
        raise InvalidArgumentError(
            f"split {f.split!r} is not valid; use one of {', '.join(SPLITS)}"
        )
    if f.status is not None and f.status not in LABEL_STATUSES:
        raise InvalidArgumentError(
            f"label status {f.status!r} is not valid; use one of {', '.join(LABEL_STATUSES)}"
        )
    qa_files: set[str] | None = None
    if f.qa_check is not None:
        report = working_qa_report(ws, name, version, max_examples=10**9)
        qa_files = {
            str(ex["file_name"])
            for finding in report["findings"]
            if finding["check"] == f.qa_check
            for ex in finding["examples"]
            if ex.get("file_name")
        }
    with ws.session() as s:
        _, row = resolve_version(s, name, version)
        names = tuple(row.class_names)
        class_id: int | None = None
        if f.class_name is not None:
            if f.class_name not in names:
                raise InvalidArgumentError(
                    f"dataset {name!r} has no class {f.class_name!r}; pick one of its classes"
                )
            class_id = names.index(f.class_name)
        cols = [
            DatasetItem.id,
            DatasetItem.file_name,
            DatasetItem.image_sha256,
            DatasetItem.split,
            DatasetItem.label_status,
        ]
        if class_id is not None:
            cols.append(DatasetItem.boxes)
        query = select(*cols).where(DatasetItem.version_id == row.id)
        if f.status is not None:
            query = query.where(DatasetItem.label_status == f.status)
        if f.split is not None:
            query = query.where(DatasetItem.split == f.split)
        total = row.num_images
        label = row.label
        query = query.order_by(DatasetItem.file_name)
        paged = class_id is None and qa_files is None
        if paged and offset:
            query = query.offset(offset)
        if paged and limit is not None:
            query = query.limit(limit + 1)  # one more tells whether more rows follow
        records = _fetch_all(s, query)
    if paged:
        more = limit is not None and len(records) > limit
        rows = list(map(ItemRow._make, records[:limit] if more else records))
        return ItemIndex(name, label, names, rows, total, offset, not more)
    else:
        rows = []
        for rec in records:
            if class_id is not None and not any(
                int(b[0]) == class_id for b in (_boxes(rec[5]) or [])
            ):
                continue
            if qa_files is not None and rec[1] not in qa_files:
                continue
            rows.append(ItemRow._make(rec[:5]))
    return ItemIndex(name, label, names, rows, total)
