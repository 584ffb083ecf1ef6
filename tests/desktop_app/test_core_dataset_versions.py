"""Versions of a dataset: the draft everywhere, snapshots, tags, diffs, restores and stats."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from desktop_app import cli
from desktop_app.core import datasets
from desktop_app.core.dataset_draft import ensure_draft, refresh_version, touch
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import (
    AnnotationEdit,
    DatasetItem,
    DatasetTag,
    DatasetVersion,
    TrainingRun,
)
from desktop_app.core.workspace import Workspace

COUNT, SIZE = 12, 64


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("versions") / "shapes"
    write_sample_dataset(out, seed=5, count=COUNT, size=SIZE)
    return out


@pytest.fixture
def shapes(ws: Workspace, source: Path) -> Workspace:
    datasets.import_yolo(ws, source, "shapes")
    return ws


def edit_draft(ws: Workspace, change: Callable[[list[DatasetItem]], None]) -> str:
    """Change the draft's items (sorted by file name) through the ORM; returns its hash."""
    with ws.session() as s:
        dataset, _ = datasets.find_version(s, "shapes")
        draft = ensure_draft(s, dataset)
        items = list(
            s.scalars(
                select(DatasetItem)
                .where(DatasetItem.version_id == draft.id)
                .order_by(DatasetItem.file_name)
            )
        )
        change(items)
        s.flush()
        touch(dataset)
        return refresh_version(s, draft)


def add_box(items: list[DatasetItem]) -> None:
    items[0].boxes = [*items[0].boxes, [0, 0.5, 0.5, 0.1, 0.1]]


def version_rows(ws: Workspace) -> list[tuple[int, str, str]]:
    with ws.session() as s:
        return [
            (n, h, o)
            for n, h, o in s.execute(
                select(DatasetVersion.number, DatasetVersion.content_hash, DatasetVersion.origin)
                .where(DatasetVersion.number > 0)
                .order_by(DatasetVersion.number)
            )
        ]


def run_cli(capfd: pytest.CaptureFixture[str], ws: Workspace, *argv: str) -> tuple[int, Any]:
    code = cli.main(["dataset", *argv, "--workspace", str(ws.root), "--json"])
    out = capfd.readouterr().out
    return code, json.loads(out) if out.strip() else None


# ---- the draft in reads -------------------------------------------------------------------


def test_latest_never_returns_the_draft_and_draft_needs_one(shapes: Workspace) -> None:
    ws = shapes
    with pytest.raises(NotFoundError, match="has no draft"):
        datasets.get_version(ws, "shapes", "draft")
    assert datasets.list_datasets(ws)[0]["draft"] is False
    v1 = datasets.get_version(ws, "shapes")
    edit_draft(ws, add_box)
    assert datasets.get_version(ws, "shapes").label == "v1"
    draft = datasets.get_version(ws, "shapes", "draft")
    assert draft.label == "draft" and draft.is_draft
    assert draft.num_annotations == v1.num_annotations + 1
    assert draft.content_hash != v1.content_hash
    rows = datasets.list_versions(ws, "shapes")
    assert [r["version"] for r in rows] == ["v1", "draft"]
    assert rows[-1]["changed"] is True and rows[-1]["draft"] is True
    summary = datasets.dataset_summary(ws, "shapes")
    assert summary["latest"]["version"] == "v1"
    assert summary["draft"] == {"exists": True, "changed": True}
    listed = datasets.list_datasets(ws)[0]
    assert listed["versions"] == 1 and listed["latest"] == "v1"
    assert listed["draft"] is True and listed["draft_changed"] is True


def test_unchanged_draft_is_not_listed(shapes: Workspace) -> None:
    edit_draft(shapes, lambda items: None)
    assert [r["version"] for r in datasets.list_versions(shapes, "shapes")] == ["v1"]
    summary = datasets.dataset_summary(shapes, "shapes")
    assert summary["draft"] == {"exists": True, "changed": False}
    assert datasets.list_datasets(shapes)[0]["draft_changed"] is False


def test_validate_includes_the_draft_and_duplicates_ignore_it(shapes: Workspace) -> None:
    edit_draft(shapes, lambda items: None)  # a draft equal to v1
    report = datasets.validate_dataset(shapes, "shapes")
    assert report["ok"] and report["versions"] == ["shapes@v1", "shapes@draft"]
    assert report["images"] == 2 * COUNT
    assert datasets.validate_dataset(shapes, "shapes", "draft")["versions"] == ["shapes@draft"]
    dups = datasets.find_duplicates(shapes)
    assert dups["identical_datasets"] == [] and dups["duplicate_images"] == []


# ---- snapshots --------------------------------------------------------------------------


def test_snapshot_without_a_draft_reuses_the_latest(shapes: Workspace) -> None:
    r = datasets.snapshot(shapes, "shapes")
    assert r["version"] == "v1" and r["created"] is False and r["reused"] is True
    assert len(version_rows(shapes)) == 1


def test_snapshot_creates_a_version_then_reuses_it(shapes: Workspace) -> None:
    ws = shapes
    with ws.session() as s:
        s.execute(
            DatasetVersion.__table__.update()
            .where(DatasetVersion.number == 1)
            .values(problems=["a.jpg: skipped"])
        )
    draft_hash = edit_draft(ws, add_box)
    r = datasets.snapshot(ws, "shapes", message="one more circle")
    assert r == {
        **r,
        "version": "v2",
        "created": True,
        "reused": False,
        "content_hash": draft_hash,
        "origin": "snapshot",
        "message": "one more circle",
    }
    v2 = datasets.get_version(ws, "shapes", "v2")
    assert v2.num_annotations == r["annotations"] and v2.origin == "snapshot"
    with ws.session() as s:
        row = s.scalar(select(DatasetVersion).where(DatasetVersion.number == 2))
        assert row is not None and row.problems == ["a.jpg: skipped"]
        n_items = s.scalar(select(func.count()).where(DatasetItem.version_id == row.id))
    assert n_items == COUNT
    # the draft stays and equals v2: snapshotting again reuses v2
    assert datasets.get_version(ws, "shapes", "draft").content_hash == draft_hash
    again = datasets.snapshot(ws, "shapes")
    assert again["version"] == "v2" and again["reused"] is True
    # a draft edited back to v1's content reuses v1
    edit_draft(ws, lambda items: setattr(items[0], "boxes", items[0].boxes[:-1]))
    assert datasets.snapshot(ws, "shapes")["version"] == "v1"
    assert [n for n, _, _ in version_rows(ws)] == [1, 2]


def test_snapshot_refuses_unknown_origin_and_dataset(shapes: Workspace) -> None:
    edit_draft(shapes, add_box)
    with pytest.raises(InvalidArgumentError, match="origin"):
        datasets.snapshot(shapes, "shapes", origin="draft")
    with pytest.raises(NotFoundError, match="no dataset"):
        datasets.snapshot(shapes, "nope")
    assert len(version_rows(shapes)) == 1


# ---- tags -------------------------------------------------------------------------------


def test_tags_resolve_move_and_untag(shapes: Workspace) -> None:
    ws = shapes
    edit_draft(ws, add_box)
    datasets.snapshot(ws, "shapes")
    r = datasets.tag_version(ws, "shapes", "v1", "stable")
    assert r == {"dataset": "shapes", "tag": "stable", "version": "v1", "moved_from": None}
    assert datasets.get_version(ws, "shapes", "stable").label == "v1"
    moved = datasets.tag_version(ws, "shapes", "v2", "stable")
    assert moved["moved_from"] == "v1"
    assert datasets.get_version(ws, "shapes", "stable").label == "v2"
    datasets.tag_version(ws, "shapes", "v1", "first.import_1")
    assert [(t["tag"], t["version"]) for t in datasets.list_tags(ws, "shapes")] == [
        ("first.import_1", "v1"),
        ("stable", "v2"),
    ]
    rows = {r["version"]: r["tags"] for r in datasets.list_versions(ws, "shapes")}
    assert rows == {"v1": ["first.import_1"], "v2": ["stable"]}
    assert datasets.untag(ws, "shapes", "stable")["version"] == "v2"
    with pytest.raises(InvalidArgumentError, match="neither a version .* nor a tag"):
        datasets.get_version(ws, "shapes", "stable")
    with pytest.raises(NotFoundError, match="no tag"):
        datasets.untag(ws, "shapes", "stable")


@pytest.mark.parametrize("bad", ["draft", "DRAFT", "v3", "3", "has space", "", "é", "x" * 65])
def test_bad_tag_names_are_refused(shapes: Workspace, bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        datasets.tag_version(shapes, "shapes", "v1", bad)
    with shapes.session() as s:
        assert s.scalar(select(func.count()).select_from(DatasetTag)) == 0


def test_tagging_the_draft_or_a_missing_version_is_refused(shapes: Workspace) -> None:
    edit_draft(shapes, add_box)
    with pytest.raises(InvalidArgumentError, match="snapshot the draft"):
        datasets.tag_version(shapes, "shapes", "draft", "wip")
    with pytest.raises(NotFoundError):
        datasets.tag_version(shapes, "shapes", "v9", "wip")
    with shapes.session() as s:
        assert s.scalar(select(func.count()).select_from(DatasetTag)) == 0


# ---- diff -------------------------------------------------------------------------------


def test_diff_reports_crafted_changes(shapes: Workspace) -> None:
    ws = shapes
    before: dict[str, Any] = {}

    def change(items: list[DatasetItem]) -> None:
        a, b, c, d, e, f = items[:6]
        before.update(removed=a.boxes[0], changed=c.boxes[0], f=list(f.boxes))
        a.boxes = a.boxes[1:]  # one removed
        b.boxes = [*b.boxes, [1, 0.3, 0.3, 0.2, 0.2]]  # one added
        cls = int(c.boxes[0][0])
        c.boxes = [[(cls + 1) % 3, *c.boxes[0][1:5]], *c.boxes[1:]]  # one class change
        d.split = "test" if d.split != "test" else "train"  # one split move
        e.label_status = "needs_review"
        f.boxes = [[b0[0], b0[1] + 1e-8, *b0[2:]] for b0 in f.boxes]  # within tolerance

    edit_draft(ws, change)
    d = datasets.diff_versions(ws, "shapes", "v1", "draft")
    assert d["a"] == "v1" and d["b"] == "draft" and d["identical"] is False
    assert d["images"]["added"] == d["images"]["removed"] == d["images"]["changed"] == 0
    ann = d["annotations"]
    assert (ann["added"], ann["removed"], ann["changed"], ann["images"]) == (1, 1, 1, 3)
    by_image = {e["file_name"]: e for e in ann["examples"]}
    changed = next(e for e in by_image.values() if e["changed"])
    assert changed["boxes"]["changed"][0]["change"] == "class"
    assert d["splits"]["moved"] == 1 and len(d["splits"]["examples"]) == 1
    assert d["label_status"]["changed"] == 1
    assert d["label_status"]["examples"][0]["to"] == "needs_review"
    assert d["classes"]["added"] == [] and d["classes"]["removed"] == []
    deltas = {k: v["delta"] for k, v in d["class_counts"].items()}
    assert sum(deltas.values()) == 0  # one removed, one added; a class change moves one
    assert all(v["b"] - v["a"] == v["delta"] for v in d["class_counts"].values())
    same = datasets.diff_versions(ws, "shapes", "v1", "v1")
    assert same["identical"] and same["annotations"]["images"] == 0


def test_diff_images_and_classes(shapes: Workspace) -> None:
    ws = shapes

    def change(items: list[DatasetItem]) -> None:
        items[0].image_sha256 = items[1].image_sha256  # same name, other image

    edit_draft(ws, change)
    with ws.session() as s:
        dataset, _ = datasets.find_version(s, "shapes")
        draft = ensure_draft(s, dataset)
        gone = s.scalar(
            select(DatasetItem)
            .where(DatasetItem.version_id == draft.id)
            .order_by(DatasetItem.file_name.desc())
        )
        assert gone is not None
        s.add(
            DatasetItem(
                version_id=draft.id,
                file_name="new.jpg",
                image_sha256=gone.image_sha256,
                width=SIZE,
                height=SIZE,
                split="train",
                label_status="unlabelled",
                boxes=[],
            )
        )
        removed_name = gone.file_name
        s.delete(gone)
        draft.class_names = [*draft.class_names, "star"]
        s.flush()
        refresh_version(s, draft)
    d = datasets.diff_versions(ws, "shapes", "v1", "draft")
    assert d["images"]["added"] == 1 and d["images"]["examples"]["added"] == ["new.jpg"]
    assert d["images"]["removed"] == 1 and d["images"]["examples"]["removed"] == [removed_name]
    assert d["images"]["changed"] == 1
    assert d["classes"]["added"] == ["star"]
    assert d["class_counts"]["star"] == {"a": 0, "b": 0, "delta": 0}
    with pytest.raises(NotFoundError):
        datasets.diff_versions(ws, "shapes", "v1", "v7")


# ---- restore ----------------------------------------------------------------------------


def test_restore_auto_saves_the_draft_then_restores(shapes: Workspace) -> None:
    ws = shapes
    v1 = datasets.get_version(ws, "shapes", "v1")
    edit_draft(ws, add_box)
    datasets.snapshot(ws, "shapes")  # v2
    unsaved = edit_draft(ws, lambda items: setattr(items[1], "boxes", []))
    with ws.session() as s:
        dataset_id = datasets.find_version(s, "shapes")[0].id
        s.add(AnnotationEdit(dataset_id=dataset_id, op="delete", summary="x", changes={}))
    before = version_rows(ws)
    r = datasets.restore_version(ws, "shapes", "v1")
    assert r["restored"] == "v1" and r["auto_saved"] == "v3" and r["journal_cleared"] == 1
    after = version_rows(ws)
    assert after[:2] == before and after[2][1] == unsaved
    draft = datasets.get_version(ws, "shapes", "draft")
    assert draft.content_hash == v1.content_hash and draft.num_images == COUNT
    assert draft.origin == "restore"
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(AnnotationEdit)) == 0
    # the draft now equals v1, which a version holds: nothing to auto-save
    r2 = datasets.restore_version(ws, "shapes", "v3")
    assert r2["auto_saved"] is None
    assert datasets.get_version(ws, "shapes", "draft").content_hash == unsaved
    assert version_rows(ws) == after


def test_restore_without_a_draft_makes_one(shapes: Workspace) -> None:
    r = datasets.restore_version(shapes, "shapes", "v1")
    assert r["auto_saved"] is None
    assert datasets.get_version(shapes, "shapes", "draft").num_images == COUNT


def test_restore_refuses_the_draft_and_missing_versions(shapes: Workspace) -> None:
    draft_hash = edit_draft(shapes, add_box)
    with pytest.raises(InvalidArgumentError, match="numbered version"):
        datasets.restore_version(shapes, "shapes", "draft")
    with pytest.raises(NotFoundError):
        datasets.restore_version(shapes, "shapes", "v5")
    with pytest.raises(InvalidArgumentError):
        datasets.restore_version(shapes, "shapes", "not a version!")
    assert datasets.get_version(shapes, "shapes", "draft").content_hash == draft_hash
    assert len(version_rows(shapes)) == 1


# ---- stats ------------------------------------------------------------------------------


def test_stats_status_histogram_last_change_and_runs(shapes: Workspace) -> None:
    ws = shapes
    st1 = datasets.dataset_stats(ws, "shapes")
    assert st1["last_change"] == st1["created_at"]
    assert st1["label_status"] == {"labelled": COUNT, "unlabelled": 0, "needs_review": 0}

    def change(items: list[DatasetItem]) -> None:
        items[0].label_status = "unlabelled"
        items[0].boxes = []
        items[1].label_status = "needs_review"

    edit_draft(ws, change)
    st = datasets.dataset_stats(ws, "shapes", "draft")
    assert st["version"] == "draft"
    assert st["label_status"] == {"labelled": COUNT - 2, "unlabelled": 1, "needs_review": 1}
    assert st["labelled_images"] == COUNT - 2
    assert st["labelled_ratio"] == (COUNT - 2) / COUNT
    assert st["last_change"] >= st1["last_change"]
    hist = st["box_area_histogram"]
    assert len(hist["edges"]) == 11 and len(hist["counts"]) == 10
    assert hist["edges"][0] == pytest.approx(1e-4) and hist["edges"][-1] == pytest.approx(1.0)
    assert sum(hist["counts"]) == st["annotations"]
    for name, counts in hist["per_class"].items():
        assert sum(counts) == st["annotations_per_class"][name]

    v1 = datasets.get_version(ws, "shapes", "v1")
    project = ws.default_project_id()
    with ws.session() as s:
        for run_id in ("run-a", "run-b"):
            s.add(
                TrainingRun(
                    id=run_id,
                    project_id=project,
                    dataset_version_id=v1.id,
                    framework="ultralytics",
                    task="detect",
                    model="yolo11n.yaml",
                    status="completed",
                    run_dir=f"runs/{run_id}",
                )
            )
    st = datasets.dataset_stats(ws, "shapes", "draft")
    assert st["training_runs"] == []
    assert st["versions_used_by_runs"] == {"v1": ["run-a", "run-b"]}


# ---- CLI --------------------------------------------------------------------------------


def test_cli_snapshot_tag_diff_restore_versions(
    shapes: Workspace, capfd: pytest.CaptureFixture[str]
) -> None:
    ws = shapes
    edit_draft(ws, add_box)
    code, r = run_cli(capfd, ws, "snapshot", "shapes", "-m", "more")
    assert code == 0 and r["version"] == "v2" and r["created"] is True
    code, r = run_cli(capfd, ws, "tag", "shapes@v1", "stable")
    assert code == 0 and r["version"] == "v1"
    code, d = run_cli(capfd, ws, "diff", "shapes", "stable", "v2")
    assert code == 0 and d["a"] == "v1" and d["annotations"]["added"] == 1
    code, rows = run_cli(capfd, ws, "versions", "shapes")
    assert [(r["version"], r["tags"]) for r in rows] == [("v1", ["stable"]), ("v2", [])]
    code, r = run_cli(capfd, ws, "restore", "shapes@stable")
    assert code == 0 and r["restored"] == "v1" and r["auto_saved"] is None
    code, r = run_cli(capfd, ws, "untag", "shapes", "stable")
    assert code == 0 and r["tag"] == "stable"
    assert cli.main(["dataset", "tag", "shapes@v1", "v2", "--workspace", str(ws.root)]) == 1
    assert "would be read as a version" in capfd.readouterr().err
    assert cli.main(["dataset", "restore", "shapes", "--workspace", str(ws.root)]) == 1
    capfd.readouterr()

    assert cli.main(["dataset", "versions", "shapes", "--workspace", str(ws.root)]) == 0
    text = capfd.readouterr().out
    assert "draft*" in text and "restored from v1" in text and "more" in text
    assert cli.main(["dataset", "diff", "shapes", "v2", "--workspace", str(ws.root)]) == 0
    text = capfd.readouterr().out
    assert text.startswith("shapes: v2 -> draft") and "annotations: +0 -1" in text
    assert cli.main(["dataset", "stats", "shapes@v2", "--workspace", str(ws.root)]) == 0
    text = capfd.readouterr().out
    assert "label status: labelled=" in text and "box area" in text
