"""Consistency check of a workspace: database integrity, schema revision, blobs, packages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from desktop_app.core import workspace_db as db
from desktop_app.core.models import Base, Blob, DatasetItem, Export
from runtimes.fileio import sha256_file

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

MAX_LISTED = 50  # problems of one kind listed one by one before they are summarised


@dataclass
class CheckReport:
    """The outcome of :meth:`Workspace.check`.

    Attributes:
        ok: True when no problem was found.
        problems: One line per problem, each saying what is wrong and what to do.
        counts: Rows per table, plus ``blob_files`` (files in blobs/) and
            ``unreferenced_blob_files`` (files with no ``blobs`` row; harmless leftovers).
    """

    ok: bool = True
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, problem: str) -> None:
        self.problems.append(problem)
        self.ok = False

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "counts": dict(self.counts)}


def run_check(ws: Workspace) -> CheckReport:
    """Run every check on ``ws`` and collect the problems (never raises for a finding)."""
    report = CheckReport()
    try:
        _check_sqlite(ws, report)
        _check_revision(ws, report)
        _count_rows(ws, report)
        registered = _check_blobs(ws, report)
        _check_items(ws, report, registered)
        _check_exports(ws, report)
    except SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0]
        report.add(f"the database cannot be read ({reason}); restore a backup of {ws.db_path}")
    return report


def _add_limited(report: CheckReport, lines: list[str], what: str) -> None:
    for line in lines[:MAX_LISTED]:
        report.add(line)
    if len(lines) > MAX_LISTED:
        report.add(f"... and {len(lines) - MAX_LISTED} more {what}")


def _check_sqlite(ws: Workspace, report: CheckReport) -> None:
    with ws.engine.connect() as conn:
        rows = [r[0] for r in conn.execute(text("PRAGMA integrity_check"))]
        if rows != ["ok"]:
            _add_limited(
                report,
                [f"database integrity: {r}; restore {ws.db_path} from a backup" for r in rows],
                "integrity errors",
            )
        broken = conn.execute(text("PRAGMA foreign_key_check")).fetchall()
        _add_limited(
            report,
            [
                f"table {t} row {rowid} points to a missing row of {parent}; restore a backup"
                for t, rowid, parent, _ in broken
            ],
            "foreign-key errors",
        )


def _check_revision(ws: Workspace, report: CheckReport) -> None:
    current, head = db.current_revision(ws.engine), db.head_revision()
    if current != head:
        report.add(
            f"database schema is at {current or 'nothing'}, this Outpost expects {head}; reopen the workspace to migrate it"
        )


def _count_rows(ws: Workspace, report: CheckReport) -> None:
    with ws.session() as s:
        for table in Base.metadata.sorted_tables:
            report.counts[table.name] = s.scalar(select(func.count()).select_from(table)) or 0


def _check_blobs(ws: Workspace, report: CheckReport) -> set[str]:
    with ws.session() as s:
        rows = s.execute(select(Blob.sha256, Blob.size).order_by(Blob.sha256)).all()
    known: set[str] = set()
    missing: list[str] = []
    corrupt: list[str] = []
    for sha, size in rows:
        known.add(sha)
        path = ws.blobs.path(sha)
        if not path.is_file():
            missing.append(f"blob {sha} is missing ({path}); restore it from a backup")
        elif path.stat().st_size != size or not ws.blobs.verify(sha):
            corrupt.append(
                f"blob {sha} is corrupt (its content no longer matches its sha256); restore it from a backup"
            )
    _add_limited(report, missing, "missing blobs")
    _add_limited(report, corrupt, "corrupt blobs")
    files = list(ws.blobs.iter_shas())
    report.counts["blob_files"] = len(files)
    report.counts["unreferenced_blob_files"] = sum(1 for f in files if f not in known)
    return known


def _check_items(ws: Workspace, report: CheckReport, registered: set[str]) -> None:
    """Dataset images whose blob has neither a row nor a file (registered ones are checked above)."""
    with ws.session() as s:
        shas = s.scalars(
            select(DatasetItem.image_sha256).distinct().order_by(DatasetItem.image_sha256)
        ).all()
    lines = [
        f"dataset image {sha} is missing from blobs/ and from the blobs table; restore a backup"
        for sha in shas
        if sha not in registered and not ws.blobs.exists(sha)
    ]
    _add_limited(report, lines, "missing dataset images")


def _check_exports(ws: Workspace, report: CheckReport) -> None:
    with ws.session() as s:
        rows = s.execute(
            select(Export.id, Export.package_path, Export.package_sha256)
            .where(Export.package_path.is_not(None))
            .order_by(Export.id)
        ).all()
    lines: list[str] = []
    for export_id, package_path, package_sha in rows:
        path = ws.resolve(str(package_path))
        if not path.is_file():
            lines.append(f"export {export_id}: package {path} is missing; export the run again")
        elif package_sha and sha256_file(path) != package_sha:
            lines.append(
                f"export {export_id}: package {path} has changed since it was written; export the run again"
            )
    _add_limited(report, lines, "package problems")
