"""``outpost dataset validate | duplicates | versions | stats`` and their core functions."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from desktop_app import cli
from desktop_app.core import datasets
from desktop_app.core.dataset_sample import CLASS_NAMES, write_sample_dataset
from desktop_app.core.models import DatasetItem, TrainingRun
from desktop_app.core.workspace import Workspace

COUNT, SIZE = 12, 160


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small") / "shapes"
    write_sample_dataset(out, seed=3, count=COUNT, size=SIZE)
    return out


def _cli(ws: Workspace, capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = cli.main(["dataset", *argv, "--workspace", str(ws.root), "--json"])
    return code, json.loads(capfd.readouterr().out)


def _items(ws: Workspace, name: str) -> list[tuple[str, str]]:
    version = datasets.get_version(ws, name)
    with ws.session() as s:
        rows = s.execute(
            select(DatasetItem.file_name, DatasetItem.image_sha256)
            .where(DatasetItem.version_id == version.id)
            .order_by(DatasetItem.file_name)
        )
        return [(f, sha) for f, sha in rows]


def test_versions(ws: Workspace, small_sample: Path, capfd: pytest.CaptureFixture[str]) -> None:
    summary = datasets.import_yolo(ws, small_sample, "shapes", val_fraction=0.25)
    code, rows = _cli(ws, capfd, "versions", "shapes")
    assert code == 0 and len(rows) == 1
    row = rows[0]
    assert row["version"] == "v1" and row["images"] == COUNT
    assert row["annotations"] == summary["annotations"]
    assert row["content_hash"] == summary["content_hash"]
    assert row["splits"] == summary["splits"] and row["created_at"]
    assert cli.main(["dataset", "versions", "nope", "--workspace", str(ws.root)]) == 1


def test_validate_detects_tampered_and_missing_blobs(
    ws: Workspace, small_sample: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    datasets.import_yolo(ws, small_sample, "shapes")
    code, report = _cli(ws, capfd, "validate", "shapes")
    assert code == 0 and report["ok"] and report["problems"] == []
    assert report["images"] == COUNT == report["blobs"] and report["versions"] == ["shapes@v1"]

    (tampered, sha_t), (missing, sha_m) = _items(ws, "shapes")[:2]
    path = ws.blobs.path(sha_t)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    ws.blobs.path(sha_m).unlink()

    code, report = _cli(ws, capfd, "validate", "shapes@v1")
    assert code == 1 and not report["ok"]
    assert report["missing"] == 1 and report["corrupt"] == 1
    found = {(p["file_name"], p["kind"]) for p in report["problems"]}
    assert found == {(tampered, "corrupt"), (missing, "missing")}
    assert all(p["version"] == "shapes@v1" for p in report["problems"])

    assert cli.main(["dataset", "validate", "shapes", "--workspace", str(ws.root)]) == 1
    text = capfd.readouterr().out
    assert tampered in text and missing in text and "1 missing, 1 corrupt" in text


def test_duplicates_finds_a_dataset_imported_twice(
    ws: Workspace, small_sample: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    datasets.import_yolo(ws, small_sample, "first")
    code, report = _cli(ws, capfd, "duplicates")
    assert code == 0 and report == {"identical_datasets": [], "duplicate_images": []}

    datasets.import_yolo(ws, small_sample, "second")
    code, report = _cli(ws, capfd, "duplicates")
    assert code == 0
    [same] = report["identical_datasets"]
    assert same["versions"] == ["first@v1", "second@v1"]
    assert same["content_hash"] == datasets.get_version(ws, "first").content_hash
    images = report["duplicate_images"]
    assert len(images) == COUNT
    for d in images:
        assert d["datasets"] == ["first", "second"] and not d["within_version"]
        assert [loc["version"] for loc in d["locations"]] == ["first@v1", "second@v1"]
        assert d["locations"][0]["file_name"] == d["locations"][1]["file_name"]


def test_stats_match_the_sample_labels(
    ws: Workspace, small_sample: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    datasets.import_yolo(ws, small_sample, "shapes")
    per_class = dict.fromkeys(CLASS_NAMES, 0)
    sizes = {"small": 0, "medium": 0, "large": 0}
    labelled = 0
    for p in sorted((small_sample / "labels").glob("*.txt")):
        lines = p.read_text().split("\n")
        lines = [line for line in lines if line.strip()]
        labelled += bool(lines)
        for line in lines:
            cls, _, _, w, h = line.split()
            per_class[CLASS_NAMES[int(cls)]] += 1
            area = float(w) * SIZE * float(h) * SIZE
            sizes["small" if area < 32**2 else "medium" if area < 96**2 else "large"] += 1
    disk = sum(p.stat().st_size for p in (small_sample / "images").glob("*.jpg"))

    version = datasets.get_version(ws, "shapes")
    project_id = ws.default_project_id()
    with ws.session() as s:
        s.add(
            TrainingRun(
                id="run1",
                project_id=project_id,
                dataset_version_id=version.id,
                framework="ultralytics",
                task="detect",
                model="yolo11n.yaml",
                status="completed",
                run_dir="runs/run1",
            )
        )

    code, st = _cli(ws, capfd, "stats", "shapes@v1")
    assert code == 0
    assert st["dataset"] == "shapes" and st["version"] == "v1"
    assert st["images"] == COUNT == st["unique_images"]
    assert st["annotations_per_class"] == per_class
    assert st["annotations"] == sum(per_class.values())
    assert st["labelled_images"] == labelled and st["labelled_ratio"] == labelled / COUNT
    assert st["box_sizes"] == sizes and sum(sizes.values()) == st["annotations"]
    assert st["size_bytes"] == disk
    assert [r["id"] for r in st["training_runs"]] == ["run1"]

    assert cli.main(["dataset", "stats", "shapes", "--workspace", str(ws.root)]) == 0
    text = capfd.readouterr().out
    assert "training runs: run1" in text and f"{st['annotations']} annotations" in text


def test_duplicates_within_one_version(ws: Workspace, small_sample: Path, tmp_path: Path) -> None:
    src = tmp_path / "shapes"
    shutil.copytree(small_sample, src)
    shutil.copy(src / "images" / "sample_0001.jpg", src / "images" / "copy.jpg")
    shutil.copy(src / "labels" / "sample_0001.txt", src / "labels" / "copy.txt")
    datasets.import_yolo(ws, src, "shapes")
    [dup] = datasets.find_duplicates(ws)["duplicate_images"]
    assert dup["within_version"] and dup["datasets"] == ["shapes"]
    assert [loc["file_name"] for loc in dup["locations"]] == ["copy.jpg", "sample_0001.jpg"]
    report = datasets.validate_dataset(ws, "shapes")
    assert report["ok"] and report["images"] == COUNT + 1 and report["blobs"] == COUNT
