from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from desktop_app.core import dataset_import, datasets
from desktop_app.core.dataset_split import dominant_class, dominant_classes
from desktop_app.core.errors import (
    AlreadyExistsError,
    DatasetFormatError,
    DestinationNotEmptyError,
    InvalidArgumentError,
    NotFoundError,
)
from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion
from desktop_app.core.workspace import Workspace


def _splits(ws: Workspace, name: str) -> dict[str, str]:
    version = datasets.get_version(ws, name)
    with ws.session() as s:
        rows = s.execute(
            select(DatasetItem.file_name, DatasetItem.split).where(
                DatasetItem.version_id == version.id
            )
        )
        return {file_name: split for file_name, split in rows}


def _assert_workspace_empty(ws: Workspace) -> None:
    with ws.session() as s:
        for model in (Dataset, DatasetVersion, DatasetItem, Blob):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model.__name__
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


def test_import_sample(ws: Workspace, sample: Path) -> None:
    summary = datasets.import_yolo(ws, sample, "shapes", val_fraction=0.25, seed=7)
    assert summary["dataset"] == "shapes" and summary["version"] == "v1"
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert summary["images"] == 40 and summary["split_method"] == "auto"
    assert summary["splits"] == {"train": 30, "val": 10, "test": 0}
    labels = [
        line for p in (sample / "labels").glob("*.txt") for line in p.read_text().splitlines()
    ]
    assert summary["annotations"] == len(labels)
    version = datasets.get_version(ws, "shapes", "v1")
    assert version.number == 1 and version.content_hash == summary["content_hash"]
    assert version.splits == summary["splits"] and version.split_seed == 7
    assert datasets.get_version(ws, "shapes", 1) == version == datasets.get_version(ws, "shapes")
    assert ws.check().ok


def test_split_is_deterministic_for_the_seed(ws: Workspace, sample: Path) -> None:
    a = datasets.import_yolo(ws, sample, "a", seed=1)
    b = datasets.import_yolo(ws, sample, "b", seed=1)
    c = datasets.import_yolo(ws, sample, "c", seed=2)
    assert _splits(ws, "a") == _splits(ws, "b") != _splits(ws, "c")
    assert a["content_hash"] == b["content_hash"] != c["content_hash"]
    assert a["splits"]["val"] == round(40 * 0.2)
    with ws.session() as s:  # the three datasets share the same 40 blobs
        assert s.scalar(select(func.count()).select_from(Blob)) == 40


def test_split_is_stratified_by_dominant_class(ws: Workspace, sample: Path) -> None:
    datasets.import_yolo(ws, sample, "shapes", val_fraction=0.5)
    version = datasets.get_version(ws, "shapes")
    with ws.session() as s:
        items = s.execute(
            select(DatasetItem.split, DatasetItem.boxes).where(DatasetItem.version_id == version.id)
        ).all()
    val_classes = {dominant_class(boxes) for split, boxes in items if split == "val"}
    assert len(val_classes) == 3


def test_source_split_layout_is_kept(ws: Workspace, sample: Path, tmp_path: Path) -> None:
    src = tmp_path / "split"
    for split, stems in (("train", range(0, 30)), ("valid", range(30, 40))):
        (src / "images" / split).mkdir(parents=True)
        (src / "labels" / split).mkdir(parents=True)
        for i in stems:
            shutil.copy(sample / "images" / f"sample_{i:04d}.jpg", src / "images" / split)
            shutil.copy(sample / "labels" / f"sample_{i:04d}.txt", src / "labels" / split)
    (src / "data.yaml").write_text(
        yaml.safe_dump({"names": ["circle", "square", "triangle"], "nc": 3})
    )
    (src / "labels" / "train" / "sample_0000.txt").write_text("")  # a background image
    summary = datasets.import_yolo(ws, src, "split")
    assert summary["split_method"] == "source"
    assert summary["splits"] == {"train": 30, "val": 10, "test": 0}
    assert _splits(ws, "split")["sample_0035.jpg"] == "val"
    assert datasets.dataset_summary(ws, "split")["background_images"] == 1


def test_images_without_labels_are_background(ws: Workspace, sample: Path) -> None:
    (sample / "labels" / "sample_0001.txt").unlink()
    (sample / "data.yaml").unlink()
    summary = datasets.import_yolo(ws, sample, "shapes")  # names from classes.txt
    assert summary["images"] == 40
    assert datasets.dataset_summary(ws, "shapes")["background_images"] == 1


def test_names_as_dict_bom_labels_and_data_yaml_path(ws: Workspace, sample: Path) -> None:
    (sample / "data.yaml").write_text("names:\n  1: square\n  0: circle\n  2: triangle\n")
    label = sample / "labels" / "sample_0002.txt"
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes())
    summary = datasets.import_yolo(ws, sample / "data.yaml", "shapes")
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert summary["source"] == str(sample)


# ---- bad inputs leave nothing behind ---------------------------------------------------


def _not_yolo(root: Path) -> None:
    shutil.rmtree(root / "images")


def _class_out_of_range(root: Path) -> None:
    (root / "labels" / "sample_0003.txt").write_text("7 0.5 0.5 0.2 0.2\n")


def _four_numbers(root: Path) -> None:
    (root / "labels" / "sample_0004.txt").write_text("0 0.5 0.5 0.2\n")


def _coordinate_above_one(root: Path) -> None:
    (root / "labels" / "sample_0005.txt").write_text("1 0.5 1.2 0.2 0.2\n")


def _garbage_image(root: Path) -> None:
    (root / "images" / "sample_0006.jpg").write_bytes(b"this is not a jpeg at all")


def _truncated_image(root: Path) -> None:
    p = root / "images" / "sample_0007.jpg"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _no_names(root: Path) -> None:
    (root / "data.yaml").unlink()
    (root / "classes.txt").unlink()


def _orphan_label(root: Path) -> None:
    (root / "labels" / "lost.txt").write_text("0 0.5 0.5 0.1 0.1\n")


def _no_images(root: Path) -> None:
    for p in (root / "images").iterdir():
        p.unlink()
    for p in (root / "labels").iterdir():
        p.unlink()


def _stray_folder(root: Path) -> None:
    (root / "images" / "train").mkdir()
    for p in sorted((root / "images").glob("*.jpg"))[:5]:
        p.rename(root / "images" / "train" / p.name)
    (root / "images" / "extra").mkdir()


def _polygon_label(root: Path) -> None:
    (root / "labels" / "sample_0008.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")


def _named_pipe_image(root: Path) -> None:
    p = root / "images" / "sample_0009.jpg"
    p.unlink()
    os.mkfifo(p)  # opening it to read would wait for a writer that never comes


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "not a yolo dataset": (_not_yolo, "has no images/ folder"),
    "class id out of range": (
        _class_out_of_range,
        r"sample_0003.txt:1: class id 7 is out of range",
    ),
    "four numbers": (_four_numbers, r"sample_0004.txt:1: expected 5 numbers"),
    "coordinate above one": (
        _coordinate_above_one,
        r"sample_0005.txt:1: coordinates must be normalised",
    ),
    "garbage image": (_garbage_image, r"sample_0006.jpg is not a readable image"),
    "truncated image": (_truncated_image, r"sample_0007.jpg is a truncated JPEG"),
    "no names file": (_no_names, "no class names"),
    "label without image": (_orphan_label, r"lost.txt has no image"),
    "no images": (_no_images, "holds no images"),
    "stray folder beside splits": (_stray_folder, "sits beside images/train/"),
    "polygon label": (_polygon_label, "polygons"),
    "named pipe image": (_named_pipe_image, r"sample_0009.jpg is a named pipe, not an image"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_leaves_nothing(ws: Workspace, sample: Path, case: str) -> None:
    mutate, pattern = BAD[case]
    mutate(sample)
    with pytest.raises(DatasetFormatError, match=pattern) as info:
        datasets.import_yolo(ws, sample, "shapes")
    assert "\n" not in str(info.value)
    _assert_workspace_empty(ws)


def test_missing_folder(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="does not exist"):
        datasets.import_yolo(ws, tmp_path / "nowhere", "x")
    _assert_workspace_empty(ws)


def test_duplicate_name_is_refused(ws: Workspace, sample: Path) -> None:
    datasets.import_yolo(ws, sample, "shapes")
    with pytest.raises(AlreadyExistsError, match="already exists"):
        datasets.import_yolo(ws, sample, "shapes")
    assert len(datasets.list_datasets(ws)) == 1


@pytest.mark.parametrize("name", ["", "has space", "../up", "x" * 200])
def test_bad_names_and_fractions(ws: Workspace, sample: Path, name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        datasets.import_yolo(ws, sample, name)
    with pytest.raises(InvalidArgumentError):
        datasets.import_yolo(ws, sample, "ok", val_fraction=1.5)


def test_failed_transaction_removes_the_new_blobs(
    ws: Workspace, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(dataset_import, "_create_rows", explode)
    with pytest.raises(RuntimeError):
        datasets.import_yolo(ws, sample, "shapes")
    _assert_workspace_empty(ws)


def test_failed_import_keeps_blobs_of_other_datasets(
    ws: Workspace, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets.import_yolo(ws, sample, "first")
    monkeypatch.setattr(
        dataset_import, "_create_rows", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x"))
    )
    with pytest.raises(RuntimeError):
        datasets.import_yolo(ws, sample, "second")
    assert ws.check().ok


# ---- queries and materialize -----------------------------------------------------------


def test_queries(ws: Workspace, sample: Path) -> None:
    assert datasets.list_datasets(ws) == []
    datasets.import_yolo(ws, sample, "shapes")
    [row] = datasets.list_datasets(ws)
    assert row["name"] == "shapes" and row["latest"] == "v1" and row["images"] == 40
    summary = datasets.dataset_summary(ws, "shapes")
    assert [v["version"] for v in summary["versions"]] == ["v1"]
    assert sum(summary["boxes_per_class"].values()) == summary["latest"]["annotations"]
    with pytest.raises(NotFoundError, match="no dataset named"):
        datasets.get_version(ws, "nope")
    with pytest.raises(NotFoundError, match="no version v2"):
        datasets.get_version(ws, "shapes", "v2")
    with pytest.raises(InvalidArgumentError):
        datasets.get_version(ws, "shapes", "latest-ish")


def test_materialize_writes_a_training_tree(ws: Workspace, sample: Path, tmp_path: Path) -> None:
    datasets.import_yolo(ws, sample, "shapes")
    version = datasets.get_version(ws, "shapes")
    out = tmp_path / "train-data"
    data_yaml = datasets.materialize_yolo(ws, "shapes", out_dir=out)
    assert data_yaml == out / "data.yaml"
    data = yaml.safe_load(data_yaml.read_text())
    assert (
        data["path"] == str(out) and data["train"] == "images/train" and data["val"] == "images/val"
    )
    assert data["names"] == {0: "circle", 1: "square", 2: "triangle"} and data["nc"] == 3
    for split in ("train", "val"):
        images = sorted(p.name for p in (out / "images" / split).iterdir())
        labels = sorted(p.name for p in (out / "labels" / split).iterdir())
        assert len(images) == version.splits[split]
        assert [Path(n).stem for n in images] == [Path(n).stem for n in labels]
    # copies, not links; labels round-trip; the stored blob is untouched by edits
    some = sorted((out / "images" / "train").iterdir())[0]
    assert (
        not some.is_symlink() and some.read_bytes() == (sample / "images" / some.name).read_bytes()
    )
    label = (out / "labels" / "train" / f"{some.stem}.txt").read_text().split()
    original = (sample / "labels" / f"{some.stem}.txt").read_text().split()
    assert [float(v) for v in label] == [float(v) for v in original]  # the same numbers
    some.write_bytes(b"trainer scribbled here")
    assert ws.check().ok
    # writing again replaces the earlier copy; a foreign folder is refused
    assert datasets.materialize_yolo(ws, "shapes", 1, out) == data_yaml  # positional form
    assert some.read_bytes() == (sample / "images" / some.name).read_bytes()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    with pytest.raises(DestinationNotEmptyError):
        datasets.materialize_yolo(ws, "shapes", out_dir=foreign)


def test_dominant_class_is_the_most_frequent_lowest_on_ties() -> None:
    import random
    from collections import Counter

    rng = random.Random(3)
    assert dominant_class([]) == -1
    for _ in range(500):
        rows = [[rng.randrange(6), 0.5, 0.5, 0.1, 0.1] for _ in range(rng.randrange(1, 12))]
        counts = Counter(int(r[0]) for r in rows)
        expected = min(counts, key=lambda c: (-counts[c], c))
        assert dominant_class(rows) == expected
        assert type(dominant_class(rows)) is int


def test_dominant_classes_of_all_images_equal_one_by_one() -> None:
    import random

    rng = random.Random(5)
    for n_classes in (1, 3, 7):
        images = [
            [[rng.randrange(n_classes), 0.5, 0.5, 0.1, 0.1] for _ in range(rng.randrange(0, 9))]
            for _ in range(300)
        ]
        assert dominant_classes(images, n_classes) == [dominant_class(b) for b in images]
        assert all(type(c) is int for c in dominant_classes(images, n_classes))
    assert dominant_classes([], 3) == []
    assert dominant_classes([[], []], 3) == [-1, -1]
    # ids the table cannot hold, and a table too large: counted image by image
    odd = [[[5, 0.5, 0.5, 0.1, 0.1]], [[-2, 0.5, 0.5, 0.1, 0.1]]]
    assert dominant_classes(odd, 3) == [5, -2]
    wide = [[[c, 0.5, 0.5, 0.1, 0.1] for c in (9, 9, 2)]] * 5
    assert dominant_classes(wide, 10**7) == [9] * 5
