from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import yaml

from desktop_app.core.dataset_sample import CLASS_NAMES, write_sample_dataset
from desktop_app.core.errors import DestinationNotEmptyError


def _files(root: Path, skip: tuple[str, ...] = ("data.yaml",)) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = write_sample_dataset(tmp_path / "a", seed=3, count=12, size=96)
    write_sample_dataset(tmp_path / "b", seed=4, count=12, size=96)
    write_sample_dataset(tmp_path / "c", seed=3, count=12, size=96)
    assert a.images == 12
    files_a, files_c = _files(tmp_path / "a"), _files(tmp_path / "c")
    assert len(files_a) == 12 * 2 + 2  # images, labels, classes.txt, marker
    assert files_a == files_c
    assert files_a != _files(tmp_path / "b")
    # data.yaml differs only by its absolute path
    ya = yaml.safe_load((tmp_path / "a" / "data.yaml").read_text())
    yc = yaml.safe_load((tmp_path / "c" / "data.yaml").read_text())
    assert ya.pop("path") == str(tmp_path / "a") and yc.pop("path") == str(tmp_path / "c")
    assert ya == yc


def test_rewriting_a_sample_in_place_is_identical(tmp_path: Path) -> None:
    write_sample_dataset(tmp_path / "s", seed=5, count=10, size=64)
    before = _files(tmp_path / "s", skip=())
    write_sample_dataset(tmp_path / "s", seed=5, count=6, size=64)
    write_sample_dataset(tmp_path / "s", seed=5, count=10, size=64)
    assert _files(tmp_path / "s", skip=()) == before


def test_layout_labels_and_classes(tmp_path: Path) -> None:
    summary = write_sample_dataset(tmp_path / "s", seed=0, count=24, size=128)
    root = tmp_path / "s"
    data = yaml.safe_load(summary.data_yaml.read_text())
    assert data["names"] == {0: "circle", 1: "square", 2: "triangle"}
    assert data["nc"] == 3 and data["train"] == "images" and data["val"] == "images"
    assert (root / "classes.txt").read_text().split() == list(CLASS_NAMES)
    images = sorted((root / "images").glob("*.jpg"))
    assert len(images) == 24
    seen: set[int] = set()
    boxes = 0
    for img_path in images:
        img = cv2.imread(str(img_path))
        assert img is not None and img.shape == (128, 128, 3)
        assert img.std() > 5  # not a blank image
        lines = (root / "labels" / f"{img_path.stem}.txt").read_text().splitlines()
        assert 1 <= len(lines) <= 4
        for line in lines:
            parts = line.split()
            assert len(parts) == 5
            cls, coords = int(parts[0]), [float(v) for v in parts[1:]]
            assert 0 <= cls < 3
            assert all(0.0 <= v <= 1.0 for v in coords) and coords[2] > 0 and coords[3] > 0
            seen.add(cls)
            boxes += 1
    assert len(seen) >= 2
    assert boxes == summary.boxes == sum(summary.boxes_per_class.values())
    assert json.loads(json.dumps(summary.to_dict()))["data_yaml"] == str(root / "data.yaml")


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    with pytest.raises(DestinationNotEmptyError, match="not an Outpost sample"):
        write_sample_dataset(target, count=2)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
