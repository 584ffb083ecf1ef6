"""Lenient imports, the decompression-bomb check, analyze's full problem list, and the store."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from desktop_app import cli
from desktop_app.core import dataset_records, datasets
from desktop_app.core.dataset_import import store_scanned
from desktop_app.core.dataset_records import (
    Annotation,
    Problems,
    ScannedDataset,
    ScannedImage,
    SourceImage,
    inspect_images,
)
from desktop_app.core.dataset_split import content_hash
from desktop_app.core.errors import DatasetFormatError, InvalidArgumentError
from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion
from desktop_app.core.workspace import Workspace
from runtimes.fileio import sha256_bytes
from runtimes.image_header import image_header_size

W, H = 64, 48
NAMES = ["cat", "dog"]


def _image(path: Path, seed: int, ext: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path


def _bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A real 1x1 PNG whose header claims ``width`` x ``height`` (CRC recomputed)."""
    ok, buf = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def _truncated_jpeg(path: Path, seed: int) -> Path:
    _image(path, seed, ".jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _assert_workspace_empty(ws: Workspace) -> None:
    with ws.session() as s:
        for model in (Dataset, DatasetVersion, DatasetItem, Blob):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model.__name__
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


# ---- inspect_images ----------------------------------------------------------------------


def _sources(root: Path) -> tuple[list[SourceImage], dict[str, str]]:
    """Four good images and one of every image-level problem; returns (sources, case→match)."""
    good = [
        SourceImage(f"good{i}.png", _image(root / f"good{i}.png", i), None, ()) for i in range(4)
    ]
    outside = root.parent / "outside.png"
    _image(outside, 9)
    (root / "link.png").symlink_to(outside)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image at all IEND")
    bad = {
        "missing": SourceImage("missing.png", root / "missing.png", None, ()),
        "corrupt": SourceImage("corrupt.png", root / "corrupt.png", None, ()),
        "truncated": SourceImage("cut.jpg", _truncated_jpeg(root / "cut.jpg", 5), None, ()),
        "declared size": SourceImage(
            "sized.png", _image(root / "sized.png", 6), None, (), declared_size=(W + 1, H)
        ),
        "duplicate name": SourceImage("good0.png", _image(root / "other.png", 7), None, ()),
        "outside": SourceImage("link.png", root / "link.png", None, ()),
        "not utf-8": SourceImage(
            os.fsdecode(b"caf\xe9.png"), _image(root / "latin.png", 8), None, ()
        ),
        "bomb": SourceImage("bomb.png", _bomb_png(root / "bomb.png"), None, ()),
    }
    patterns = {
        "missing": "is missing",
        "corrupt": "not a readable image",
        "truncated": "truncated JPEG",
        "declared size": "declares sized.png as 65x48",
        "duplicate name": "are both named 'good0.png'",
        "outside": "outside the dataset folder",
        "not utf-8": "not valid UTF-8",
        "bomb": "30000×30000 pixels, over the 100-megapixel limit",
    }
    return [*good, *bad.values()], patterns


def test_lenient_inspect_skips_each_bad_image_with_one_message(tmp_path: Path) -> None:
    root = (tmp_path / "ds").resolve()
    sources, patterns = _sources(root)
    problems = Problems(lenient=True)
    problems.add("labels/x.txt: line 1: a reader's earlier message")
    scanned = inspect_images(
        root,
        "yolo",
        NAMES,
        sources,
        False,
        problems=problems,
        task="pose",
        keypoint_shape=(3, 3),
    )
    assert [img.file_name for img in scanned.images] == [f"good{i}.png" for i in range(4)]
    assert scanned.task == "pose" and scanned.keypoint_shape == (3, 3)
    assert len(scanned.problems) == 1 + len(patterns)
    assert scanned.problems[0].startswith("labels/x.txt")
    for case, pattern in patterns.items():
        hits = [m for m in scanned.problems if pattern in m]
        assert len(hits) == 1, (case, scanned.problems)
    assert all("\n" not in m for m in scanned.problems)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "corrupt",
        "truncated",
        "declared size",
        "duplicate name",
        "outside",
        "not utf-8",
        "bomb",
    ],
)
def test_strict_inspect_raises_on_each_bad_image(tmp_path: Path, case: str) -> None:
    root = (tmp_path / "ds").resolve()
    sources, patterns = _sources(root)
    keep = {f"good{i}.png" for i in range(4)}
    chosen = [s for s in sources if s.file_name in keep and s.path.name != "other.png"]
    bad = sources[4 + list(patterns).index(case)]
    with pytest.raises(DatasetFormatError, match=patterns[case]) as info:
        inspect_images(root, "yolo", NAMES, [*chosen, bad], False)
    assert "\n" not in str(info.value)


def test_labelled_flag_passes_through(tmp_path: Path) -> None:
    root = (tmp_path / "ds").resolve()
    a = SourceImage("a.png", _image(root / "a.png", 1), "train", (), labelled=False)
    b = SourceImage("b.png", _image(root / "b.png", 2), "val", (Annotation(0, 0.5, 0.5, 0.2, 0.2),))
    scanned = inspect_images(root, "yolo", NAMES, [a, b], True)
    assert [img.labelled for img in scanned.images] == [False, True]
    assert scanned.problems == () and scanned.task == "detect"


# ---- decompression bombs ------------------------------------------------------------------


def test_bomb_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = (tmp_path / "ds").resolve()
    bomb = _bomb_png(root / "bomb.png")
    assert image_header_size(bomb.read_bytes()) == (30000, 30000)
    decoded: list[int] = []
    checked: list[int] = []
    real_decode, real_check = dataset_records.decode_image, dataset_records.check_structure

    def spy_decode(data: bytes) -> Any:
        decoded.append(len(data))
        return real_decode(data)

    def spy_check(data: bytes) -> Any:
        checked.append(len(data))
        return real_check(data)

    monkeypatch.setattr(dataset_records, "decode_image", spy_decode)
    monkeypatch.setattr(dataset_records, "check_structure", spy_check)
    good = SourceImage("good.png", _image(root / "good.png", 1), None, ())
    src = SourceImage("bomb.png", bomb, None, ())
    with pytest.raises(DatasetFormatError, match=r"decompression bomb\?"):
        inspect_images(root, "yolo", NAMES, [src], False)
    problems = Problems(lenient=True)
    scanned = inspect_images(root, "yolo", NAMES, [good, src], False, problems=problems)
    assert [img.file_name for img in scanned.images] == ["good.png"]
    assert len(scanned.problems) == 1 and "bomb.png is 30000×30000" in scanned.problems[0]
    # both PNGs had their structure checked, which decodes nothing; neither was decoded
    assert decoded == []
    assert sorted(set(checked)) == sorted({bomb.stat().st_size, good.path.stat().st_size})


def test_pixel_limit_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = (tmp_path / "ds").resolve()
    src = SourceImage("a.png", _image(root / "a.png", 1), None, ())
    monkeypatch.setenv("OUTPOST_MAX_IMAGE_PIXELS", str(W * H - 1))
    with pytest.raises(DatasetFormatError, match=r"64×48 pixels, over the 0.003071-megapixel"):
        inspect_images(root, "yolo", NAMES, [src], False)
    monkeypatch.setenv("OUTPOST_MAX_IMAGE_PIXELS", str(W * H))
    assert len(inspect_images(root, "yolo", NAMES, [src], False).images) == 1
    monkeypatch.setenv("OUTPOST_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InvalidArgumentError, match="OUTPOST_MAX_IMAGE_PIXELS='lots'"):
        inspect_images(root, "yolo", NAMES, [src], False)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tif"])
def test_header_sizes(tmp_path: Path, ext: str) -> None:
    data = _image(tmp_path / f"a{ext}", 3, ext).read_bytes()
    assert image_header_size(data) == (W, H)
    assert image_header_size(data[:10]) is None
    assert image_header_size(b"plain text") is None


# ---- import --------------------------------------------------------------------------------


def _yolo(root: Path, count: int = 6) -> Path:
    for i in range(count):
        _image(root / "images" / f"img{i}.png", i)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"img{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": NAMES, "nc": 2}))
    return root


def _break_yolo_images(root: Path) -> None:
    (root / "images" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage IEND")
    (root / "images" / "img2.png").unlink()
    _truncated_jpeg(root / "images" / "img2.jpg", 2)
    (root / "labels" / "img2.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    _bomb_png(root / "images" / "img3.png")


def test_lenient_yolo_import_keeps_the_good_images(ws: Workspace, tmp_path: Path) -> None:
    src = _yolo(tmp_path / "yolo")
    _break_yolo_images(src)
    before = set(ws.blobs_dir.rglob("*"))
    with pytest.raises(DatasetFormatError):
        datasets.import_dataset(ws, src, "strict")
    _assert_workspace_empty(ws)
    assert set(ws.blobs_dir.rglob("*")) == before
    summary = datasets.import_dataset(ws, src, "lenient", lenient=True)
    assert summary["images"] == 3 and summary["problem_count"] == 3
    assert len(summary["problems"]) == 3
    text = "\n".join(summary["problems"])
    assert "img1.png" in text and "truncated JPEG" in text and "decompression bomb" in text
    with ws.session() as s:
        version = s.scalar(select(DatasetVersion))
        assert version is not None
        assert version.problems == summary["problems"] and version.origin == "import"
        assert s.scalar(select(func.count()).select_from(Blob)) == 3
    qa = datasets.qa_report(ws, "lenient")
    [skipped] = [f for f in qa["findings"] if f["check"] == "import_problems"]
    assert skipped["count"] == 3 and skipped["severity"] == "warning"


def _coco(root: Path, count: int = 6) -> Path:
    doc: dict[str, Any] = {
        "categories": [{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}],
        "images": [],
        "annotations": [],
    }
    for i in range(count):
        _image(root / "images" / f"img{i}.png", i)
        doc["images"].append({"id": i + 1, "file_name": f"img{i}.png", "width": W, "height": H})
        doc["annotations"].append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 4 if i % 2 else 9,
                "bbox": [8, 8, 16, 12],
                "iscrowd": 0,
                "area": 192,
            }
        )
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def _break_coco(root: Path) -> None:
    doc = json.loads((root / "annotations.json").read_text())
    doc["annotations"][0]["bbox"] = [50, 40, 60, 30]  # far outside the 64x48 image
    doc["annotations"][1]["category_id"] = 77  # unknown category
    (root / "annotations.json").write_text(json.dumps(doc))
    (root / "images" / "img2.png").write_bytes(b"not a png")


def test_lenient_coco_import_skips_bad_annotations_and_images(
    ws: Workspace, tmp_path: Path
) -> None:
    src = _coco(tmp_path / "coco")
    _break_coco(src)
    with pytest.raises(DatasetFormatError):
        datasets.import_dataset(ws, src, "strict")
    _assert_workspace_empty(ws)
    report = datasets.analyze_dataset(src)
    assert not report["ok"] and len(report["problems"]) == 3
    summary = datasets.import_dataset(ws, src, "coco", lenient=True)
    assert summary["images"] == 5 and summary["annotations"] == 3
    assert summary["problems"] == report["problems"]
    qa = datasets.qa_report(ws, "coco")
    [skipped] = [f for f in qa["findings"] if f["check"] == "import_problems"]
    assert [e["detail"] for e in skipped["examples"]] == report["problems"]


def test_lenient_import_with_nothing_left_is_refused(ws: Workspace, tmp_path: Path) -> None:
    root = (tmp_path / "ds").resolve()
    src = SourceImage("a.png", _bomb_png(root / "a.png"), None, ())
    scanned = inspect_images(root, "yolo", NAMES, [src], False, problems=Problems(lenient=True))
    assert scanned.images == () and len(scanned.problems) == 1
    with pytest.raises(DatasetFormatError, match=r"no valid image is left after skipping 1"):
        store_scanned(ws, scanned, "empty", 0.2, 42)
    _assert_workspace_empty(ws)


def test_store_keeps_task_label_status_and_problems(ws: Workspace, tmp_path: Path) -> None:
    root = (tmp_path / "ds").resolve()
    images = []
    for i in range(4):
        p = _image(root / f"i{i}.png", i)
        data = p.read_bytes()
        boxes = (Annotation.whole_image(i % 2),) if i < 3 else ()
        images.append(
            ScannedImage(
                f"i{i}.png", p, None, sha256_bytes(data), len(data), W, H, boxes, labelled=i < 3
            )
        )
    scanned = ScannedDataset(
        root,
        "imagefolder",
        tuple(NAMES),
        tuple(images),
        False,
        task="classify",
        problems=("x.png: skipped",),
    )
    summary = store_scanned(ws, scanned, "cls", 0.25, 1)
    assert summary["task"] == "classify" and summary["unlabelled"] == 1
    assert summary["problems"] == ["x.png: skipped"] and summary["problem_count"] == 1
    with ws.session() as s:
        dataset = s.scalar(select(Dataset))
        version = s.scalar(select(DatasetVersion))
        assert dataset is not None and version is not None
        assert dataset.task == "classify" and version.problems == ["x.png: skipped"]
        rows = s.execute(
            select(
                DatasetItem.file_name,
                DatasetItem.image_sha256,
                DatasetItem.boxes,
                DatasetItem.split,
                DatasetItem.label_status,
            ).where(DatasetItem.version_id == version.id)
        ).all()
    status = {r[0]: r[4] for r in rows}
    assert status == {
        "i0.png": "labelled",
        "i1.png": "labelled",
        "i2.png": "labelled",
        "i3.png": "unlabelled",
    }
    assert content_hash(NAMES, [tuple(r) for r in rows]) == summary["content_hash"]
    assert content_hash(NAMES, [tuple(r)[:4] for r in rows]) != summary["content_hash"]
    assert ws.check().ok


def test_analyze_reports_the_qa_findings_and_task(tmp_path: Path) -> None:
    src = _yolo(tmp_path / "yolo", 4)
    (src / "labels" / "img0.txt").write_text("0 0.5 0.5 0.25 0.25\n0 0.5 0.5 0.25 0.25\n")
    (src / "labels" / "img1.txt").write_text("1 0.5 0.5 0.01 0.25\n")
    report = datasets.analyze_dataset(src)
    assert report["ok"] and report["task"] == "detect" and report["images"] == 4
    checks = {f["check"]: f["count"] for f in report["qa"]}
    assert checks["duplicate_boxes"] == 1 and checks["tiny_boxes"] == 1
    assert any("duplicate boxes" in w for w in report["warnings"])
    assert any("tiny boxes" in w for w in report["warnings"])
    assert set(report["flags"]) >= {"keypoints", "rle", "polygons"}


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_import_lenient(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    src = _yolo(tmp_path / "yolo")
    _break_yolo_images(src)
    ws = ["--workspace", str(tmp_path / "ws"), "--json"]
    assert cli.main(["dataset", "analyze", str(src), "--json"]) == 1
    report = json.loads(capfd.readouterr().out)
    assert len(report["problems"]) == 3
    assert cli.main(["dataset", "import", str(src), "--name", "s", *ws]) == 1
    assert capfd.readouterr().err.splitlines()[-1].startswith("error: ")  # after OpenCV's own
    assert cli.main(["dataset", "import", str(src), "--name", "s", "--lenient", *ws]) == 0
    summary = json.loads(capfd.readouterr().out)
    assert summary["images"] == 3 and summary["problems"] == report["problems"]
    with pytest.raises(SystemExit) as info:  # choices come from the FORMATS table
        cli.main(["dataset", "import", str(src), "--format", "nope", "--name", "t"])
    assert info.value.code == 2
    assert "invalid choice: 'nope'" in capfd.readouterr().err
