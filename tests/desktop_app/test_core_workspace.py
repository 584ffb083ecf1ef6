from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select, text

from desktop_app.core import datasets
from desktop_app.core.errors import DestinationNotEmptyError, WorkspaceError
from desktop_app.core.models import Blob, Export, Project, TrainingRun
from desktop_app.core.workspace import Workspace, default_workspace_dir
from desktop_app.core.workspace_db import head_revision, run_migration


def _backups(root: Path) -> list[Path]:
    return sorted((root / "backups").glob("outpost-*-pre-*.db"))


def test_open_creates_layout_at_head(ws: Workspace) -> None:
    for name in ("blobs", "runs", "exports", "backups", "yolo_config"):
        assert (ws.root / name).is_dir()
    assert ws.revision() == head_revision()
    assert ws.mlflow_tracking_uri == f"sqlite:///{ws.root / 'mlflow.db'}"
    assert ws.yolo_config_dir == ws.root / "yolo_config"
    with ws.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    with ws.session() as s:
        assert s.scalars(select(Project.name)).all() == ["default"]
    assert ws.default_project_id() >= 1
    assert _backups(ws.root) == []
    report = ws.check()
    assert report.ok and report.problems == [] and report.counts["projects"] == 1


def test_second_open_is_a_no_op(ws: Workspace) -> None:
    ws.close()
    again = Workspace.open(ws.root)
    try:
        assert again.revision() == head_revision()
        assert _backups(ws.root) == []
        with again.session() as s:
            assert len(s.scalars(select(Project)).all()) == 1
    finally:
        again.close()


def test_older_database_is_backed_up_then_migrated(ws: Workspace) -> None:
    ws.close()
    run_migration(ws.db_path, "base", downgrade=True)
    with sqlite3.connect(ws.db_path) as conn:
        assert "datasets" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    again = Workspace.open(ws.root)
    try:
        backups = _backups(ws.root)
        assert len(backups) == 1 and backups[0].name.endswith("-pre-base.db")
        assert again.revision() == head_revision()
        assert again.check().ok
    finally:
        again.close()
    with sqlite3.connect(backups[0]) as conn:  # the copy is the pre-migration state
        assert "datasets" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


def test_newer_database_is_refused(ws: Workspace) -> None:
    ws.close()
    with sqlite3.connect(ws.db_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(WorkspaceError, match="newer Outpost; update Outpost"):
        Workspace.open(ws.root)
    assert _backups(ws.root) == []


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "foreign"
    root.mkdir()
    with sqlite3.connect(root / "outpost.db") as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    with pytest.raises(WorkspaceError, match="not an Outpost database"):
        Workspace.open(root)


def test_corrupt_database_is_a_workspace_error(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "outpost.db").write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(WorkspaceError, match="cannot open the database") as info:
        Workspace.open(root)
    assert "\n" not in str(info.value)


def test_open_without_create_needs_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no workspace"):
        Workspace.open(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_default_workspace_dir_honours_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OUTPOST_WORKSPACE", str(tmp_path / "w"))
    assert default_workspace_dir() == tmp_path / "w"
    monkeypatch.delenv("OUTPOST_WORKSPACE")
    assert default_workspace_dir().name == "workspace"


def test_session_rolls_back_on_error(ws: Workspace) -> None:
    with pytest.raises(RuntimeError), ws.session() as s:
        s.add(Project(name="half-done"))
        s.flush()
        raise RuntimeError("boom")
    with ws.session() as s:
        assert s.scalar(select(Project).where(Project.name == "half-done")) is None


def test_foreign_keys_are_enforced(ws: Workspace) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), ws.session() as s:
        s.add(
            TrainingRun(
                id="r1",
                project_id=999,
                dataset_version_id=999,
                framework="x",
                task="detect",
                model="m",
                run_dir="r",
            )
        )


def test_check_passes_then_reports_tampered_and_missing_blobs(ws: Workspace, sample: Path) -> None:
    datasets.import_yolo(ws, sample, "shapes")
    report = ws.check()
    assert report.ok, report.problems
    assert (
        report.counts["dataset_items"] == 40
        and report.counts["blob_files"] == report.counts["blobs"]
    )
    with ws.session() as s:
        first, second = s.scalars(select(Blob.sha256).order_by(Blob.sha256).limit(2)).all()
    ws.blobs.path(first).write_bytes(b"tampered")
    ws.blobs.path(second).unlink()
    report = ws.check()
    assert not report.ok
    assert any(first in p and "corrupt" in p for p in report.problems)
    assert any(second in p and "missing" in p for p in report.problems)
    assert all("\n" not in p for p in report.problems)


def test_check_reports_missing_export_package(ws: Workspace, sample: Path) -> None:
    datasets.import_yolo(ws, sample, "shapes")
    version = datasets.get_version(ws, "shapes")
    with ws.session() as s:
        s.add(
            TrainingRun(
                id="run1",
                project_id=ws.default_project_id(),
                dataset_version_id=version.id,
                framework="ultralytics",
                task="detect",
                model="yolo11n",
                run_dir="runs/run1",
            )
        )
        s.flush()  # no relationship orders these two inserts
        s.add(
            Export(
                id="exp1",
                run_id="run1",
                format="onnx",
                status="completed",
                package_path="exports/gone.outpost.zip",
            )
        )
        pkg = ws.exports_dir / "changed.outpost.zip"
        pkg.write_bytes(b"zip")
        s.add(
            Export(
                id="exp2",
                run_id="run1",
                format="onnx",
                status="completed",
                package_path=str(pkg),
                package_sha256="0" * 64,
            )
        )
    report = ws.check()
    assert not report.ok and any("exp1" in p and "missing" in p for p in report.problems)
    assert any("exp2" in p and "changed" in p for p in report.problems)


def test_backup_is_consistent_and_opens(ws: Workspace, sample: Path, tmp_path: Path) -> None:
    datasets.import_yolo(ws, sample, "shapes")
    (ws.runs_dir / "run1").mkdir()
    (ws.runs_dir / "run1" / "log.txt").write_text("epoch 1\n")
    with sqlite3.connect(ws.mlflow_db_path) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
        conn.execute("INSERT INTO runs VALUES ('a')")
    dest = ws.backup(tmp_path / "bk")
    assert dest == tmp_path / "bk"
    assert (dest / "runs" / "run1" / "log.txt").read_text() == "epoch 1\n"
    assert (dest / "exports").is_dir()
    with sqlite3.connect(dest / "mlflow.db") as conn:
        assert conn.execute("SELECT id FROM runs").fetchall() == [("a",)]
    copy = Workspace.open(dest, create=False)
    try:
        assert datasets.list_datasets(copy) == datasets.list_datasets(ws)
        assert copy.check().ok
    finally:
        copy.close()
    assert not list(tmp_path.glob(".bk.*"))


def test_backup_refuses_a_non_empty_destination(ws: Workspace, tmp_path: Path) -> None:
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(DestinationNotEmptyError):
        ws.backup(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (ws.backup(empty) / "outpost.db").is_file()
