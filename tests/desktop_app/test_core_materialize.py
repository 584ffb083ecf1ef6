"""The training copy of a version holds only labelled images."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from desktop_app.core import datasets
from desktop_app.core.dataset_edit import set_label_status
from desktop_app.core.errors import InvalidArgumentError
from desktop_app.core.workspace import Workspace


def _images(root: Path) -> set[str]:
    return {p.name for p in (root / "images").rglob("*") if p.is_file()}


def test_training_copy_leaves_out_unlabelled_and_review_images(
    ws: Workspace, sample: Path, tmp_path: Path
) -> None:
    datasets.import_dataset(ws, sample, "shapes")
    items = datasets.list_items(ws, "shapes")
    held_out = [items[0]["file_name"], items[1]["file_name"]]
    set_label_status(ws, "shapes", [held_out[0]], "unlabelled")
    set_label_status(ws, "shapes", [held_out[1]], "needs_review")
    version = datasets.snapshot(ws, "shapes")["version"]

    data_yaml = datasets.materialize_yolo(ws, "shapes", version, tmp_path / "copy")

    written = _images(data_yaml.parent)
    assert len(written) == len(items) - 2
    assert not {Path(f).name for f in held_out} & written
    assert yaml.safe_load(data_yaml.read_text())["nc"] == 3


def test_training_copy_refuses_a_version_without_labelled_train_images(
    ws: Workspace, sample: Path, tmp_path: Path
) -> None:
    datasets.import_dataset(ws, sample, "shapes")
    names = [i["file_name"] for i in datasets.list_items(ws, "shapes")]
    set_label_status(ws, "shapes", names, "unlabelled")
    version = datasets.snapshot(ws, "shapes")["version"]

    with pytest.raises(InvalidArgumentError, match="no labelled image"):
        datasets.materialize_yolo(ws, "shapes", version, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
