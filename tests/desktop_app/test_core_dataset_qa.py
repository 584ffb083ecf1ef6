"""The QA report: each check on crafted records, a stored version and its draft, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import select

from desktop_app import cli
from desktop_app.core import datasets
from desktop_app.core.dataset_draft import ensure_draft
from desktop_app.core.dataset_qa import CHECKS, QARecord, check_records
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import Dataset, DatasetItem
from desktop_app.core.workspace import Workspace

NAMES = ["cat", "dog", "owl"]


def _counts(found: dict[str, Any]) -> dict[str, int]:
    return {key: f.count for key, f in found.items() if f.count}


def test_clean_records_find_nothing() -> None:
    records = [
        QARecord("a.png", 100, 100, [[0, 0.5, 0.5, 0.2, 0.2]], sha256="a"),
        QARecord(
            "b.png", 100, 100, [[1, 0.3, 0.3, 0.2, 0.2], [2, 0.7, 0.7, 0.1, 0.1]], "labelled", "b"
        ),
    ]
    found = check_records(records, NAMES)
    assert list(found) == list(CHECKS) and _counts(found) == {}


def test_each_box_check_fires() -> None:
    boxes = [
        [0, 0.5, 0.5, 0.2, 0.2],  # 0 fine
        [0, 0.5, 0.5, 0.2, 0.2],  # 1 duplicate of 0
        [0, 0.501, 0.5, 0.2, 0.2],  # 2 duplicate of 0 (IoU 0.99)
        [1, 0.5, 0.5, 0.2, 0.2],  # 3 same place, other class: not a duplicate
        [1, 0.95, 0.5, 0.2, 0.2],  # 4 outside (x1 = 1.05)
        [1, 0.2, 0.2, 0.0, 0.1],  # 5 zero area
        [2, 0.2, 0.8, 0.01, 0.2],  # 6 tiny: 1 pixel wide
        [5, 0.3, 0.3, 0.1, 0.1],  # 7 unknown class
        [2, 0.1, 0.1, 0.2 + 5e-7, 0.2],  # 8 inside within 1e-6
    ]
    found = check_records([QARecord("a.png", 100, 100, boxes, sha256="a")], NAMES)
    assert _counts(found) == {
        "duplicate_boxes": 2,
        "outside_image": 1,
        "zero_area": 1,
        "tiny_boxes": 1,
        "unknown_class": 1,
    }
    assert [e["annotation"] for e in found["duplicate_boxes"].examples] == [1, 2]
    assert "overlaps annotation 0" in found["duplicate_boxes"].examples[0]["detail"]
    assert found["outside_image"].examples[0]["annotation"] == 4
    assert found["zero_area"].examples[0]["annotation"] == 5
    assert found["tiny_boxes"].examples[0] == {
        "file_name": "a.png",
        "annotation": 6,
        "detail": "1.0×20.0 pixels, under 4",
    }
    assert found["unknown_class"].severity == "error"
    assert (
        check_records([QARecord("a.png", 100, 100, boxes)], NAMES, tiny_px=0.5)["tiny_boxes"].count
        == 0
    )
    loose = check_records([QARecord("a.png", 100, 100, boxes)], NAMES, duplicate_iou=1.0)
    assert loose["duplicate_boxes"].count == 1


def test_image_and_class_checks_fire() -> None:
    box = [0, 0.5, 0.5, 0.2, 0.2]
    records = [
        *(QARecord(f"c{i}.png", 64, 48, [box], sha256=f"c{i}") for i in range(11)),
        QARecord("d.png", 64, 48, [[1, 0.5, 0.5, 0.2, 0.2]], sha256="d"),
        QARecord("copy.png", 64, 48, [box], sha256="c3"),
        QARecord("u.png", 64, 48, [], "unlabelled", "u"),
        QARecord("r.png", 64, 48, [box + [{"score": 0.4}]], "needs_review", "r"),
        QARecord("bg.png", 64, 48, [], "labelled", "bg"),
    ]
    found = check_records(records, NAMES, problems=["x.jpg is corrupt; skipped"])
    assert _counts(found) == {
        "unlabelled": 1,
        "needs_review": 1,
        "duplicate_images": 1,
        "empty_classes": 1,
        "class_imbalance": 1,
        "import_problems": 1,
        "background": 1,
    }
    assert found["duplicate_images"].examples[0]["detail"] == "same content as c3.png"
    assert "'owl'" in found["empty_classes"].examples[0]["detail"]
    assert "'cat' has 13 annotations, 'dog' 1" in found["class_imbalance"].examples[0]["detail"]
    assert found["background"].severity == "info"
    assert check_records(records, NAMES, imbalance_ratio=20)["class_imbalance"].count == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"tiny_px": -1}, {"duplicate_iou": 0}, {"duplicate_iou": 1.5}, {"imbalance_ratio": 0.5}],
)
def test_bad_thresholds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgumentError):
        check_records([], NAMES, **kwargs)


def test_examples_are_capped_but_counted() -> None:
    records = [QARecord(f"u{i}.png", 64, 48, [], "unlabelled") for i in range(30)]
    found = check_records(records, NAMES, max_examples=5)
    assert found["unlabelled"].count == 30 and len(found["unlabelled"].examples) == 5


# ---- a stored version ---------------------------------------------------------------------


def _yolo(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"img{i}.png"), img)
        (root / "labels" / f"img{i}.txt").write_text(f"{i % 3} 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": NAMES, "nc": 3}))
    return root


@pytest.fixture
def imported(ws: Workspace, tmp_path: Path) -> Workspace:
    datasets.import_dataset(ws, _yolo(tmp_path / "src"), "pets")
    return ws


def _edit_draft(ws: Workspace, changes: dict[str, dict[str, Any]]) -> None:
    with ws.session() as s:
        dataset = s.scalar(select(Dataset).where(Dataset.name == "pets"))
        assert dataset is not None
        draft = ensure_draft(s, dataset)
        for item in s.scalars(select(DatasetItem).where(DatasetItem.version_id == draft.id)):
            for key, value in changes.get(item.file_name, {}).items():
                setattr(item, key, value)


def test_clean_version_is_ok(imported: Workspace) -> None:
    report = datasets.qa_report(imported, "pets", deep=True)
    assert report["ok"] and report["version"] == "v1" and report["images"] == 6
    assert report["findings"] == [] and report["errors"] == report["warnings"] == 0
    assert "image_size" in report["checked"] and report["deep"]
    assert "image_size" not in datasets.qa_report(imported, "pets")["checked"]


def test_draft_findings_are_grouped_errors_first(imported: Workspace) -> None:
    _edit_draft(
        imported,
        {
            "img0.png": {"boxes": [[0, 0.5, 0.5, 0.25, 0.25], [0, 0.5, 0.5, 0.25, 0.25]]},
            "img1.png": {"boxes": [[1, 0.9, 0.5, 0.4, 0.25]]},
            "img2.png": {"boxes": [], "label_status": "unlabelled"},
            "img3.png": {"width": 99},
        },
    )
    with pytest.raises(NotFoundError, match="no dataset named 'other'"):
        datasets.qa_report(imported, "other", "draft")
    report = datasets.qa_report(imported, "pets", "draft", deep=True)
    assert report["version"] == "draft" and not report["ok"]
    checks = [(f["check"], f["severity"], f["count"]) for f in report["findings"]]
    assert checks == [
        ("outside_image", "error", 1),
        ("image_size", "error", 1),
        ("duplicate_boxes", "warning", 1),
        ("unlabelled", "warning", 1),
    ]
    assert report["errors"] == 2 and report["warnings"] == 2
    [size] = [f for f in report["findings"] if f["check"] == "image_size"]
    assert size["examples"] == [
        {
            "file_name": "img3.png",
            "annotation": None,
            "detail": "stored as 99x48, the image is 64x48",
        }
    ]
    assert datasets.qa_report(imported, "pets", "v1")["ok"]  # the version itself is unchanged


def test_missing_blob_is_an_error_when_deep(imported: Workspace) -> None:
    with imported.session() as s:
        sha = s.scalars(select(DatasetItem.image_sha256).order_by(DatasetItem.file_name)).first()
    assert sha is not None
    imported.blobs.path(sha).unlink()
    assert datasets.qa_report(imported, "pets")["ok"]
    report = datasets.qa_report(imported, "pets", deep=True)
    [f] = report["findings"]
    assert f["check"] == "image_size" and "missing" in f["examples"][0]["detail"]


def test_unknown_names_are_refused(imported: Workspace) -> None:
    with pytest.raises(NotFoundError, match="no dataset named 'nope'"):
        datasets.qa_report(imported, "nope")
    with pytest.raises(NotFoundError, match="has no draft"):
        datasets.qa_report(imported, "pets", "draft")
    with pytest.raises(NotFoundError, match="no version v7"):
        datasets.qa_report(imported, "pets", "v7")
    with pytest.raises(InvalidArgumentError):
        datasets.qa_report(imported, "pets", duplicate_iou=2.0)


def test_cli_qa(imported: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    ws = ["--workspace", str(imported.root)]
    assert cli.main(["dataset", "qa", "pets", *ws, "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["ok"] is True
    assert cli.main(["dataset", "qa", "pets@v1", *ws]) == 0
    assert "pets@v1: 6 images, 6 annotations; 0 errors" in capfd.readouterr().out
    _edit_draft(imported, {"img1.png": {"boxes": [[1, 0.5, 0.5, 0.0, 0.25]]}})
    assert cli.main(["dataset", "qa", "pets@draft", *ws, "--json"]) == 1
    report = json.loads(capfd.readouterr().out)
    assert [f["check"] for f in report["findings"]] == ["zero_area"]
    assert cli.main(["dataset", "qa", "pets@draft", *ws]) == 1
    out = capfd.readouterr().out
    assert "error: 1 boxes with zero or negative width or height" in out
    assert "img1.png #0: width 0, height 0.25" in out
    assert cli.main(["dataset", "qa", "nope", *ws]) == 1
    assert capfd.readouterr().err.startswith("error: no dataset named 'nope'")
