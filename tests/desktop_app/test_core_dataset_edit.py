from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from desktop_app.cli import main
from desktop_app.core import dataset_edit as de
from desktop_app.core import datasets
from desktop_app.core.dataset_draft import get_draft
from desktop_app.core.errors import (
    AlreadyExistsError,
    DatasetFormatError,
    InvalidArgumentError,
    NotFoundError,
)
from desktop_app.core.models import AnnotationEdit, Blob, Dataset, DatasetItem, DatasetVersion
from desktop_app.core.workspace import Workspace

W, H = 64, 48
CLASSES = ["circle", "square", "triangle"]
# file stem -> YOLO label lines (cls cx cy w h)
LABELS = {
    "a": ["0 0.25 0.25 0.25 0.25", "1 0.75 0.5 0.25 0.5"],
    "b": ["2 0.5 0.5 0.5 0.5"],
    "c": [],
    "d": ["0 0.5 0.5 0.125 0.25"],
}


def _image(path: Path, seed: int, w: int = W, h: int = H) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _make_dataset(ws: Workspace, root: Path, name: str = "shapes") -> None:
    for i, (stem, lines) in enumerate(LABELS.items()):
        _image(root / "images" / f"{stem}.png", i)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{stem}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    data = {
        "path": str(root),
        "train": "images",
        "val": "images",
        "names": dict(enumerate(CLASSES)),
    }
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    datasets.import_dataset(ws, root, name, "yolo")


@pytest.fixture
def shapes(ws: Workspace, tmp_path: Path) -> Workspace:
    _make_dataset(ws, tmp_path / "src")
    return ws


def _v1(ws: Workspace) -> tuple[str, list[tuple[str, Any, str]]]:
    with ws.session() as s:
        _, v1 = datasets.find_version(s, "shapes", "v1")
        items = s.execute(
            select(DatasetItem.file_name, DatasetItem.boxes, DatasetItem.label_status)
            .where(DatasetItem.version_id == v1.id)
            .order_by(DatasetItem.file_name)
        ).all()
        return v1.content_hash, [tuple(r) for r in items]


def _draft_hash(ws: Workspace) -> str:
    with ws.session() as s:
        dataset = de.find_dataset(s, "shapes")
        draft = get_draft(s, dataset)
        assert draft is not None
        return draft.content_hash


def _count(ws: Workspace, model: Any) -> int:
    with ws.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


# ---- reading -----------------------------------------------------------------------------


def test_list_and_get_items(shapes: Workspace) -> None:
    items = de.list_items(shapes, "shapes")
    assert [i["file_name"] for i in items] == ["a.png", "b.png", "c.png", "d.png"]
    a = de.get_item(shapes, "shapes", "a.png", "v1")
    assert (a["width"], a["height"], a["label_status"]) == (W, H, "labelled")
    first = a["annotations"][0]
    assert first["class_name"] == "circle" and first["score"] is None
    assert first["xyxy"] == pytest.approx([8.0, 6.0, 24.0, 18.0])
    assert first["xyxy_norm"] == pytest.approx([0.125, 0.125, 0.375, 0.375])
    assert [i["file_name"] for i in de.list_items(shapes, "shapes", class_name="circle")] == [
        "a.png",
        "d.png",
    ]
    assert len(de.list_items(shapes, "shapes", offset=1, limit=2)) == 2
    assert de.list_items(shapes, "shapes", status="unlabelled") == []
    with pytest.raises(InvalidArgumentError, match="no class 'dog'"):
        de.list_items(shapes, "shapes", class_name="dog")
    with pytest.raises(InvalidArgumentError, match="label status"):
        de.list_items(shapes, "shapes", status="done")
    with pytest.raises(NotFoundError, match="no image 'zz.png'"):
        de.get_item(shapes, "shapes", "zz.png")
    with pytest.raises(NotFoundError):
        de.list_items(shapes, "nope")
    assert [c["annotations"] for c in de.list_classes(shapes, "shapes")] == [2, 1, 1]


# ---- box operations ----------------------------------------------------------------------


def test_add_box_goes_to_the_draft_and_v1_stays(shapes: Workspace) -> None:
    before = _v1(shapes)
    item = de.add_box(shapes, "shapes", "c.png", "square", [10, 10, 30, 20])
    assert item["label_status"] == "labelled"
    assert item["annotations"][0]["xyxy"] == pytest.approx([10, 10, 30, 20])
    assert item["annotations"][0]["class_name"] == "square"
    assert _v1(shapes) == before
    assert de.get_item(shapes, "shapes", "c.png", "v1")["annotations"] == []
    assert de.get_item(shapes, "shapes", "c.png", "draft")["annotations"][0]["class_id"] == 1
    assert _draft_hash(shapes) != before[0]
    assert [h["op"] for h in de.history(shapes, "shapes")] == ["add_box"]
    with shapes.session() as s:
        assert s.scalar(select(Dataset.updated_at)) is not None


def test_box_within_one_pixel_is_clipped(shapes: Workspace) -> None:
    item = de.add_box(shapes, "shapes", "c.png", "circle", [-0.5, 0, W + 1, H])
    assert item["annotations"][0]["xyxy"] == pytest.approx([0, 0, W, H])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"xyxy_pixels": [0, 0, W + 2, 10]}, InvalidArgumentError, "outside the 64x48 image"),
        ({"xyxy_pixels": [10, 10, 10, 20]}, InvalidArgumentError, "zero or negative"),
        ({"xyxy_pixels": [0, 0, 5]}, InvalidArgumentError, "4 numbers"),
        ({"class_name": "dog"}, InvalidArgumentError, "classes: circle, square, triangle"),
        ({"file_name": "zz.png"}, NotFoundError, "no image 'zz.png'"),
    ],
)
def test_add_box_refuses_bad_input_and_leaves_nothing(
    shapes: Workspace, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {
        "file_name": "c.png",
        "class_name": "circle",
        "xyxy_pixels": [1, 1, 9, 9],
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        de.add_box(shapes, "shapes", **args)
    assert _count(shapes, AnnotationEdit) == 0
    with shapes.session() as s:
        assert s.scalar(select(DatasetVersion).where(DatasetVersion.number == 0)) is None


def test_update_move_delete_set_class(shapes: Workspace) -> None:
    item = de.update_box(shapes, "shapes", "a.png", 1, [40, 10, 60, 40])
    assert item["annotations"][1]["xyxy"] == pytest.approx([40, 10, 60, 40])
    item = de.move_box(shapes, "shapes", "a.png", 1, 100, -3)  # clamped at the right edge
    assert item["annotations"][1]["xyxy"] == pytest.approx([44, 7, 64, 37])
    item = de.move_box(shapes, "shapes", "a.png", 0, -100, -100)
    assert item["annotations"][0]["xyxy"] == pytest.approx([0, 0, 16, 12])
    item = de.set_annotation_class(shapes, "shapes", "a.png", 0, "triangle")
    assert item["annotations"][0]["class_name"] == "triangle"
    item = de.delete_annotation(shapes, "shapes", "b.png", 0)
    assert item["annotations"] == [] and item["label_status"] == "labelled"
    assert len(de.history(shapes, "shapes")) == 5
    with pytest.raises(InvalidArgumentError, match="index 2 is out of range"):
        de.delete_annotation(shapes, "shapes", "a.png", 2)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        de.update_box(shapes, "shapes", "b.png", 0, [1, 1, 5, 5])
    with pytest.raises(InvalidArgumentError, match="no class"):
        de.set_annotation_class(shapes, "shapes", "a.png", 0, "dog")
    assert len(de.history(shapes, "shapes")) == 5


def test_polygon_box_is_its_bounds_and_follows_moves(shapes: Workspace) -> None:
    item = de.add_polygon(shapes, "shapes", "c.png", "circle", [(10, 10), (30, 12), (20, 30)])
    ann = item["annotations"][0]
    assert ann["xyxy"] == pytest.approx([10, 10, 30, 30])
    assert ann["polygons"][0] == pytest.approx([10, 10, 30, 12, 20, 30])
    moved = de.move_box(shapes, "shapes", "c.png", 0, 5, 2)["annotations"][0]
    assert moved["polygons"][0] == pytest.approx([15, 12, 35, 14, 25, 32])
    with pytest.raises(InvalidArgumentError, match="3 points"):
        de.add_polygon(shapes, "shapes", "c.png", "circle", [(1, 1), (5, 5)])


def test_set_label_status(shapes: Workspace) -> None:
    items = de.set_label_status(shapes, "shapes", ["a.png", "b.png"], "needs_review")
    assert {i["label_status"] for i in items} == {"needs_review"}
    assert [i["file_name"] for i in de.list_items(shapes, "shapes", status="needs_review")] == [
        "a.png",
        "b.png",
    ]
    with pytest.raises(NotFoundError):
        de.set_label_status(shapes, "shapes", ["c.png", "zz.png"], "unlabelled")
    assert de.get_item(shapes, "shapes", "c.png")["label_status"] == "labelled"
    with pytest.raises(InvalidArgumentError, match="label status"):
        de.set_label_status(shapes, "shapes", ["c.png"], "finished")


# ---- undo / redo -------------------------------------------------------------------------


def _random_op(ws: Workspace, rng: random.Random) -> None:
    fn = rng.choice(["a.png", "b.png", "c.png", "d.png"])
    n = len(de.get_item(ws, "shapes", fn)["annotations"])
    op = rng.choice(["add", "move", "resize", "delete", "class", "status", "classes"])
    if op == "add" or n == 0:
        x0, y0 = rng.uniform(0, 30), rng.uniform(0, 20)
        de.add_box(ws, "shapes", fn, rng.choice(CLASSES), [x0, y0, x0 + 20, y0 + 20])
    elif op == "move":
        de.move_box(ws, "shapes", fn, rng.randrange(n), rng.uniform(-9, 9), rng.uniform(-9, 9))
    elif op == "resize":
        de.update_box(ws, "shapes", fn, rng.randrange(n), [1, 2, rng.uniform(10, 60), 40])
    elif op == "delete":
        de.delete_annotation(ws, "shapes", fn, rng.randrange(n))
    elif op == "class":
        names = [c["name"] for c in de.list_classes(ws, "shapes")]
        de.set_annotation_class(ws, "shapes", fn, rng.randrange(n), rng.choice(names))
    elif op == "status":
        de.set_label_status(ws, "shapes", [fn], rng.choice(["needs_review", "unlabelled"]))
    else:
        de.add_class(ws, "shapes", f"extra{rng.randrange(10**6)}")


def test_undo_and_redo_are_exact(shapes: Workspace) -> None:
    v1_hash, v1_items = _v1(shapes)
    rng = random.Random(3)
    ops = 25
    for _ in range(ops):
        _random_op(shapes, rng)
    de.merge_classes(shapes, "shapes", ["circle"], "square")
    de.delete_class(shapes, "shapes", "triangle")
    after = _draft_hash(shapes)
    after_items = de.list_items(shapes, "shapes")
    entries = len(de.history(shapes, "shapes", limit=100))
    assert 20 <= entries <= ops + 2  # edits that change nothing are not journaled
    for _ in range(entries):
        de.undo(shapes, "shapes")
    assert _draft_hash(shapes) == v1_hash
    assert de.list_items(shapes, "shapes") == de.list_items(shapes, "shapes", "v1")
    assert [c["name"] for c in de.list_classes(shapes, "shapes")] == CLASSES
    with pytest.raises(NotFoundError, match="nothing to undo"):
        de.undo(shapes, "shapes")
    for _ in range(entries):
        de.redo(shapes, "shapes")
    assert _draft_hash(shapes) == after
    assert de.list_items(shapes, "shapes") == after_items
    with pytest.raises(NotFoundError, match="nothing to redo"):
        de.redo(shapes, "shapes")
    assert _v1(shapes) == (v1_hash, v1_items)


def test_an_edit_that_changes_nothing_is_not_journaled(shapes: Workspace) -> None:
    de.set_label_status(shapes, "shapes", ["a.png"], "labelled")
    de.set_annotation_class(shapes, "shapes", "a.png", 0, "circle")
    assert de.history(shapes, "shapes") == []
    assert _draft_hash(shapes) == _v1(shapes)[0]


def test_a_new_edit_clears_the_redo_stack(shapes: Workspace) -> None:
    de.add_box(shapes, "shapes", "c.png", "circle", [1, 1, 9, 9])
    de.add_box(shapes, "shapes", "c.png", "square", [1, 1, 9, 9])
    undone = de.undo(shapes, "shapes")
    assert undone["op"] == "add_box" and undone["undone"]
    assert [h["undone"] for h in de.history(shapes, "shapes")] == [True, False]
    de.delete_annotation(shapes, "shapes", "a.png", 0)
    assert [h["op"] for h in de.history(shapes, "shapes")] == ["delete_annotation", "add_box"]
    with pytest.raises(NotFoundError, match="nothing to redo"):
        de.redo(shapes, "shapes")


# ---- classes -----------------------------------------------------------------------------


def _classes_of(ws: Workspace, fn: str) -> list[str]:
    return [a["class_name"] for a in de.get_item(ws, "shapes", fn)["annotations"]]


def test_add_and_rename_class(shapes: Workspace) -> None:
    out = de.add_class(shapes, "shapes", "star")
    assert [c["name"] for c in out] == [*CLASSES, "star"]
    with pytest.raises(AlreadyExistsError):
        de.add_class(shapes, "shapes", "star")
    with pytest.raises(InvalidArgumentError, match="empty"):
        de.add_class(shapes, "shapes", "  ")
    de.rename_class(shapes, "shapes", "circle", "disc")
    assert _classes_of(shapes, "a.png") == ["disc", "square"]
    with pytest.raises(AlreadyExistsError, match="merge"):
        de.rename_class(shapes, "shapes", "disc", "square")
    with pytest.raises(InvalidArgumentError, match="no class 'circle'"):
        de.rename_class(shapes, "shapes", "circle", "ring")
    assert datasets.list_datasets(shapes)[0]["classes"] == ["disc", "square", "triangle", "star"]
    assert datasets.get_version(shapes, "shapes", "v1").class_names == tuple(CLASSES)


def test_merge_classes_remaps_every_annotation(shapes: Workspace) -> None:
    de.add_class(shapes, "shapes", "star")
    de.add_box(shapes, "shapes", "c.png", "star", [1, 1, 9, 9])
    out = de.merge_classes(shapes, "shapes", ["circle", "square"], "triangle")
    assert [(c["name"], c["annotations"]) for c in out] == [("triangle", 4), ("star", 1)]
    assert _classes_of(shapes, "a.png") == ["triangle", "triangle"]
    assert _classes_of(shapes, "c.png") == ["star"]
    assert de.get_item(shapes, "shapes", "c.png")["annotations"][0]["class_id"] == 1
    with pytest.raises(InvalidArgumentError, match="nothing to merge"):
        de.merge_classes(shapes, "shapes", ["triangle"], "triangle")
    de.undo(shapes, "shapes")
    assert _classes_of(shapes, "a.png") == ["circle", "square"]
    assert de.get_item(shapes, "shapes", "c.png")["annotations"][0]["class_id"] == 3


def test_delete_class_with_and_without_remap(shapes: Workspace) -> None:
    out = de.delete_class(shapes, "shapes", "square", remap_to="circle")
    assert [(c["name"], c["annotations"]) for c in out] == [("circle", 3), ("triangle", 1)]
    assert _classes_of(shapes, "b.png") == ["triangle"]
    out = de.delete_class(shapes, "shapes", "triangle")
    assert [c["name"] for c in out] == ["circle"]
    b = de.get_item(shapes, "shapes", "b.png")
    assert b["annotations"] == [] and b["label_status"] == "labelled"
    with pytest.raises(InvalidArgumentError, match="itself"):
        de.delete_class(shapes, "shapes", "circle", remap_to="circle")
    with pytest.raises(InvalidArgumentError, match="no class"):
        de.delete_class(shapes, "shapes", "square")


# ---- classification datasets -------------------------------------------------------------


def test_classify_dataset_refuses_boxes(shapes: Workspace) -> None:
    with shapes.session() as s:
        s.scalar(select(Dataset)).task = "classify"  # type: ignore[union-attr]
    with pytest.raises(InvalidArgumentError, match="classification dataset"):
        de.add_box(shapes, "shapes", "c.png", "circle", [1, 1, 9, 9])
    with pytest.raises(InvalidArgumentError, match="classification dataset"):
        de.move_box(shapes, "shapes", "a.png", 0, 1, 1)
    item = de.set_image_class(shapes, "shapes", "c.png", "square")
    assert item["annotations"][0]["xyxy_norm"] == [0.0, 0.0, 1.0, 1.0]
    assert item["annotations"][0]["class_name"] == "square"
    with shapes.session() as s:
        s.scalar(select(Dataset)).task = "detect"  # type: ignore[union-attr]
    with pytest.raises(InvalidArgumentError, match="not classification"):
        de.set_image_class(shapes, "shapes", "c.png", "square")


# ---- added images ------------------------------------------------------------------------


def test_add_images_unlabelled_then_label_and_undo(shapes: Workspace, tmp_path: Path) -> None:
    new = tmp_path / "new"
    _image(new / "x.png", 10)
    _image(new / "sub" / "y.jpg", 11, 32, 32)
    (new / "notes.txt").write_text("not an image")
    before_hash = _v1(shapes)[0]
    out = de.add_images(shapes, "shapes", new, split="val")
    assert out["added"] == 2 and out["files"] == ["sub/y.jpg", "x.png"]
    assert out["duplicates"] == [] and out["splits"]["val"] == 2
    y = de.get_item(shapes, "shapes", "sub/y.jpg")
    assert (y["width"], y["height"], y["label_status"], y["split"]) == (32, 32, "unlabelled", "val")
    assert shapes.blobs.exists(y["sha256"])
    unlabelled = de.list_items(shapes, "shapes", status="unlabelled")
    assert [i["file_name"] for i in unlabelled] == ["sub/y.jpg", "x.png"]
    assert de.add_box(shapes, "shapes", "x.png", "circle", [1, 1, 9, 9])["label_status"] == (
        "labelled"
    )
    de.undo(shapes, "shapes")
    de.undo(shapes, "shapes")
    assert len(de.list_items(shapes, "shapes")) == 4
    assert _draft_hash(shapes) == before_hash
    de.redo(shapes, "shapes")
    assert de.get_item(shapes, "shapes", "x.png")["label_status"] == "unlabelled"
    with pytest.raises(AlreadyExistsError, match="'x.png'"):
        de.add_images(shapes, "shapes", [new / "x.png"])


def test_add_images_reports_duplicate_content(shapes: Workspace, tmp_path: Path) -> None:
    copy = tmp_path / "copy.png"
    copy.write_bytes((tmp_path / "src" / "images" / "a.png").read_bytes())
    out = de.add_images(shapes, "shapes", [copy])
    assert out["duplicates"] == [{"file_name": "copy.png", "same_as": "a.png"}]
    assert sum(out["splits"].values()) == 1


def test_add_images_with_a_corrupt_image_adds_nothing(shapes: Workspace, tmp_path: Path) -> None:
    new = tmp_path / "new"
    _image(new / "ok.png", 20)
    good = _image(tmp_path / "other" / "fresh.png", 21)
    (new / "bad.png").write_bytes(good.read_bytes()[:-40])
    blobs_before = _count(shapes, Blob)
    files_before = sorted(p for p in shapes.blobs_dir.rglob("*") if p.is_file())
    with pytest.raises(DatasetFormatError, match="bad.png"):
        de.add_images(shapes, "shapes", new)
    assert _count(shapes, Blob) == blobs_before
    assert sorted(p for p in shapes.blobs_dir.rglob("*") if p.is_file()) == files_before
    assert _count(shapes, AnnotationEdit) == 0
    assert len(de.list_items(shapes, "shapes")) == 4
    with pytest.raises(InvalidArgumentError, match="no images found"):
        de.add_images(shapes, "shapes", tmp_path / "src" / "labels")
    with pytest.raises(NotFoundError):
        de.add_images(shapes, "shapes", tmp_path / "missing")


# ---- CLI ---------------------------------------------------------------------------------


def _cli(ws: Workspace, capfd: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc = main(["dataset", *argv, "--workspace", str(ws.root), "--json"])
    out, err = capfd.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_cli_editing(shapes: Workspace, capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    item = _cli(shapes, capfd, "label", "shapes", "c.png", "--add", "square", "1", "2", "11", "12")
    assert item["annotations"][0]["xyxy"] == pytest.approx([1, 2, 11, 12])
    item = _cli(shapes, capfd, "label", "shapes", "c.png", "--move", "0", "2", "0")
    assert item["annotations"][0]["xyxy"] == pytest.approx([3, 2, 13, 12])
    item = _cli(shapes, capfd, "label", "shapes", "c.png", "--resize", "0", "0", "0", "5", "5")
    item = _cli(shapes, capfd, "label", "shapes", "c.png", "--set-class", "0", "circle")
    assert item["annotations"][0]["class_name"] == "circle"
    item = _cli(shapes, capfd, "label", "shapes", "c.png", "--status", "needs_review")
    assert item["label_status"] == "needs_review"
    item = _cli(shapes, capfd, "label", "shapes", "c.png", "--delete", "0")
    assert item["annotations"] == []
    assert len(_cli(shapes, capfd, "history", "shapes")) == 6
    assert _cli(shapes, capfd, "undo", "shapes")["op"] == "delete_annotation"
    assert _cli(shapes, capfd, "redo", "shapes")["op"] == "delete_annotation"
    items = _cli(shapes, capfd, "items", "shapes@v1", "--class", "circle")
    assert [i["file_name"] for i in items] == ["a.png", "d.png"]
    assert [
        i["file_name"] for i in _cli(shapes, capfd, "items", "shapes", "--status", "needs_review")
    ] == ["c.png"]
    classes = _cli(shapes, capfd, "classes", "shapes", "add", "star")
    assert classes[-1]["name"] == "star"
    _cli(shapes, capfd, "classes", "shapes", "rename", "star", "sun")
    _cli(shapes, capfd, "classes", "shapes", "merge", "sun", "triangle", "--into", "circle")
    classes = _cli(shapes, capfd, "classes", "shapes", "delete", "square", "--remap-to", "circle")
    assert [(c["name"], c["annotations"]) for c in classes] == [("circle", 4)]
    assert [c["name"] for c in _cli(shapes, capfd, "classes", "shapes")] == ["circle"]
    _image(tmp_path / "more" / "n.png", 30)
    out = _cli(shapes, capfd, "add-images", "shapes", str(tmp_path / "more"), "--split", "train")
    assert out["files"] == ["n.png"]
    rc = main(
        ["dataset", "label", "shapes", "zz.png", "--delete", "0", "--workspace", str(shapes.root)]
    )
    assert rc == 1 and "no image 'zz.png'" in capfd.readouterr().err
    rc = main(["dataset", "classes", "shapes", "merge", "circle", "--workspace", str(shapes.root)])
    assert rc == 1 and "--into" in capfd.readouterr().err
