"""Dataset formats: analyze, import and export YOLO, COCO and VOC; round trips; bad input."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from desktop_app import cli
from desktop_app.core import datasets
from desktop_app.core.dataset_records import Annotation, ExportDataset
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.errors import (
    DatasetFormatError,
    DestinationNotEmptyError,
    InvalidArgumentError,
    NotFoundError,
)
from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion
from desktop_app.core.workspace import Workspace

FORMATS = ("yolo", "coco", "voc")
NORM_TOL = 1e-6  # normalised units, for formats that store floats (YOLO 6 decimals, COCO)
VOC_PX_TOL = 0.5 + 1e-6  # VOC stores whole pixels: each edge moves by at most half a pixel
SMALL = 12  # images in the round-trip sample (keeps the many imports fast)


@pytest.fixture(scope="module")
def small_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small") / "shapes"
    write_sample_dataset(out, seed=3, count=SMALL, size=80)
    return out


@pytest.fixture
def small(small_master: Path, tmp_path: Path) -> Path:
    """A private copy of a 12-image sample dataset."""
    dest = tmp_path / "shapes"
    shutil.copytree(small_master, dest)
    return dest


def _assert_workspace_empty(ws: Workspace) -> None:
    with ws.session() as s:
        for model in (Dataset, DatasetVersion, DatasetItem, Blob):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model.__name__
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


def _items(ws: Workspace, name: str) -> dict[str, tuple[str, str, int, int, list[Annotation]]]:
    data = datasets.load_version(ws, name)
    return {
        i.file_name: (i.sha256, i.split, i.width, i.height, list(i.annotations)) for i in data.items
    }


def _assert_same(ws: Workspace, a: str, b: str, voc: bool) -> None:
    """Same images (sha256), splits, class names, and boxes within the format's tolerance."""
    va, vb = datasets.get_version(ws, a), datasets.get_version(ws, b)
    assert va.class_names == vb.class_names
    ia, ib = _items(ws, a), _items(ws, b)
    assert sorted(ia) == sorted(ib)
    for fn, (sha, split, w, h, anns) in ia.items():
        sha_b, split_b, w_b, h_b, anns_b = ib[fn]
        assert (sha, split, w, h) == (sha_b, split_b, w_b, h_b), fn
        assert len(anns) == len(anns_b), fn
        for x, y in zip(anns, anns_b, strict=True):
            assert x.cls == y.cls, fn
            for u, v, size in zip(x.xyxy, y.xyxy, (w, h, w, h), strict=True):
                if voc:
                    assert abs(u - v) * size <= VOC_PX_TOL, fn
                else:
                    assert abs(u - v) <= NORM_TOL, fn
            assert (x.iscrowd, x.difficult, x.truncated) == (y.iscrowd, y.difficult, y.truncated)


# ---- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("first", FORMATS)
@pytest.mark.parametrize("second", FORMATS)
def test_round_trip_is_lossless(
    ws: Workspace, small: Path, tmp_path: Path, first: str, second: str
) -> None:
    datasets.import_yolo(ws, small, "base", val_fraction=0.25)
    datasets.export_dataset(ws, "base", first, tmp_path / "one")
    one = datasets.import_dataset(ws, tmp_path / "one", "one")  # auto-detected
    assert one["format"] == first and one["split_method"] == "source"
    _assert_same(ws, "base", "one", voc=first == "voc")
    datasets.export_dataset(ws, "one@v1", second, tmp_path / "two")
    two = datasets.import_dataset(ws, tmp_path / "two", "two", second)
    _assert_same(ws, "one", "two", voc=second == "voc")
    _assert_same(ws, "base", "two", voc="voc" in (first, second))
    assert two["splits"] == datasets.get_version(ws, "base").splits
    with ws.session() as s:  # every import shares the same stored images
        assert s.scalar(select(func.count()).select_from(Blob)) == SMALL


def test_zip_export_is_read_back(ws: Workspace, small: Path, tmp_path: Path) -> None:
    datasets.import_yolo(ws, small, "base")
    for fmt in FORMATS:
        result = datasets.export_dataset(ws, "base", fmt, tmp_path / f"out-{fmt}", as_zip=True)
        zipped = tmp_path / f"out-{fmt}.zip"
        assert result["out"] == str(zipped) and zipfile.is_zipfile(zipped)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        report = datasets.analyze_dataset(zipped)
        assert report["ok"] and report["format"] == fmt and report["images"] == SMALL
        summary = datasets.import_dataset(ws, zipped, f"from-{fmt}")
        assert summary["source"] == str(zipped)
        _assert_same(ws, "base", f"from-{fmt}", voc=fmt == "voc")


def test_yolo_round_trip_keeps_the_content_hash(ws: Workspace, small: Path, tmp_path: Path) -> None:
    base = datasets.import_yolo(ws, small, "base")
    datasets.export_dataset(ws, "base", "yolo", tmp_path / "y")
    again = datasets.import_dataset(ws, tmp_path / "y", "again")
    assert again["content_hash"] == base["content_hash"]


# ---- COCO specifics --------------------------------------------------------------------


def _coco_from_sample(sample: Path, root: Path, **changes: Any) -> Path:
    """A COCO dataset of the sample's first 6 images: category ids 3, 7, 11 (gaps)."""
    (root / "images").mkdir(parents=True)
    ids = [3, 7, 11]
    doc: dict[str, Any] = {
        "categories": [
            {"id": cid, "name": n}
            for cid, n in zip(ids, ("circle", "square", "triangle"), strict=True)
        ],
        "images": [],
        "annotations": [],
    }
    for i in range(6):
        name = f"sample_{i:04d}.jpg"
        shutil.copy(sample / "images" / name, root / "images" / name)
        doc["images"].append({"id": 100 + i, "file_name": name, "width": 96, "height": 96})
        for line in (sample / "labels" / f"sample_{i:04d}.txt").read_text().splitlines():
            c, cx, cy, w, h = (float(v) for v in line.split())
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": 100 + i,
                    "category_id": ids[int(c)],
                    "bbox": [(cx - w / 2) * 96, (cy - h / 2) * 96, w * 96, h * 96],
                    "iscrowd": 0,
                    "area": w * h * 96 * 96,
                }
            )
    doc["annotations"][0]["segmentation"] = [[10, 10, 40, 10, 40, 30, 10, 30]]
    doc["annotations"][1]["iscrowd"] = 1
    doc["annotations"][1]["segmentation"] = {"counts": [9000, 216], "size": [96, 96]}
    for key, value in changes.items():
        value(doc) if callable(value) else doc.__setitem__(key, value)
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_coco_ids_polygons_and_crowd(ws: Workspace, sample: Path, tmp_path: Path) -> None:
    src = _coco_from_sample(sample, tmp_path / "coco")
    report = datasets.analyze_dataset(src)
    assert report["ok"] and report["format"] == "coco" and report["images"] == 6
    assert report["flags"]["polygons"] == 1 and report["flags"]["iscrowd"] == 1
    assert any("crowd" in w for w in report["warnings"])
    summary = datasets.import_dataset(ws, src / "annotations.json", "coco")
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert summary["split_method"] == "auto"  # one file without a split in its name
    anns = [a for _, _, _, _, a in _items(ws, "coco").values()]
    flat = [a for group in anns for a in group]
    assert {a.cls for a in flat} <= {0, 1, 2}
    poly = next(a for a in flat if a.polygons)
    assert poly.polygons[0][:4] == pytest.approx((10 / 96, 10 / 96, 40 / 96, 10 / 96))
    assert sum(a.iscrowd for a in flat) == 1
    crowd = next(a for a in flat if a.iscrowd)
    assert crowd.rle == "Xi8h6"  # the uncompressed counts [9000, 216], compressed
    # COCO keeps polygons and crowd flags; VOC and YOLO drop them and say so
    datasets.export_dataset(ws, "coco", "coco", tmp_path / "again")
    datasets.import_dataset(ws, tmp_path / "again", "again")
    _assert_same(ws, "coco", "again", voc=False)
    again = [a for _, _, _, _, g in _items(ws, "again").values() for a in g]
    assert sorted(a.polygons for a in again) == sorted(a.polygons for a in flat)
    assert [a.rle for a in again if a.iscrowd] == ["Xi8h6"]
    dropped = datasets.export_dataset(ws, "coco", "voc", tmp_path / "voc")["dropped"]
    assert dropped == {"polygons": 1, "iscrowd": 1, "rle": 1}


def test_coco_2017_layout_with_split_files(ws: Workspace, sample: Path, tmp_path: Path) -> None:
    src = _coco_from_sample(sample, tmp_path / "c")
    doc = json.loads((src / "annotations.json").read_text())
    (src / "annotations.json").unlink()
    (src / "annotations").mkdir()
    for split, keep in (("train2017", {100, 101, 102, 103}), ("val2017", {104, 105})):
        (src / split).mkdir()
        part = dict(doc)
        part["images"] = [i for i in doc["images"] if i["id"] in keep]
        part["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
        for img in part["images"]:
            shutil.move(src / "images" / img["file_name"], src / split / img["file_name"])
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(part))
    summary = datasets.import_dataset(ws, src, "c2017", "coco")
    assert summary["split_method"] == "source"
    assert summary["splits"] == {"train": 4, "val": 2, "test": 0}


# ---- VOC specifics ---------------------------------------------------------------------


def test_voc_flags_and_background(ws: Workspace, small: Path, tmp_path: Path) -> None:
    datasets.import_yolo(ws, small, "base")
    datasets.export_dataset(ws, "base", "voc", tmp_path / "v")
    xml = tmp_path / "v" / "Annotations" / "sample_0000.xml"
    text = xml.read_text()
    xml.write_text(text.replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    (tmp_path / "v" / "Annotations" / "sample_0001.xml").unlink()  # now a background image
    (tmp_path / "v" / "labels.txt").unlink()  # names from the objects, sorted
    summary = datasets.import_dataset(ws, tmp_path / "v", "voc")
    assert summary["format"] == "voc" and summary["images"] == SMALL
    assert summary["classes"] == ["circle", "square", "triangle"]
    items = _items(ws, "voc")
    assert items["sample_0001.jpg"][4] == []
    assert items["sample_0000.jpg"][4][0].difficult
    datasets.export_dataset(ws, "voc", "coco", tmp_path / "c")
    datasets.import_dataset(ws, tmp_path / "c", "coco")
    assert _items(ws, "coco")["sample_0000.jpg"][4][0].difficult


def test_images_the_source_split_leaves_out_are_drawn(
    ws: Workspace, small: Path, tmp_path: Path
) -> None:
    datasets.import_yolo(ws, small, "base", val_fraction=0.25)
    datasets.export_dataset(ws, "base", "voc", tmp_path / "v")
    train = tmp_path / "v" / "ImageSets" / "Main" / "train.txt"
    stems = train.read_text().split()
    train.write_text("".join(f"{s}\n" for s in stems[2:]))  # two images in no split
    summary = datasets.import_dataset(ws, tmp_path / "v", "voc")
    assert summary["split_method"] == "partial"
    assert sum(summary["splits"].values()) == SMALL and summary["splits"]["test"] == 0
    splits = {fn: v[1] for fn, v in _items(ws, "voc").items()}
    assert all(splits[f"{s}.jpg"] == "train" for s in stems[2:])


# ---- bad input -------------------------------------------------------------------------


def _coco_malformed(root: Path) -> Path:
    p = root / "annotations.json"
    p.write_text(p.read_text()[:-10])
    return root


def _coco_unknown_category(root: Path) -> Path:
    p = root / "annotations.json"
    doc = json.loads(p.read_text())
    doc["annotations"][2]["category_id"] = 99
    p.write_text(json.dumps(doc))
    return root


def _coco_missing_image(root: Path) -> Path:
    (root / "images" / "sample_0003.jpg").unlink()
    return root


def _coco_box_out_of_bounds(root: Path) -> Path:
    p = root / "annotations.json"
    doc = json.loads(p.read_text())
    doc["annotations"][3]["bbox"] = [80, 10, 40, 10]
    p.write_text(json.dumps(doc))
    return root


def _coco_escaping_path(root: Path) -> Path:
    p = root / "annotations.json"
    doc = json.loads(p.read_text())
    doc["images"][0]["file_name"] = "../../outside.jpg"
    p.write_text(json.dumps(doc))
    return root


def _coco_symlink_out(root: Path) -> Path:
    outside = root.parent / "outside.jpg"
    shutil.move(root / "images" / "sample_0002.jpg", outside)
    (root / "images" / "sample_0002.jpg").symlink_to(outside)
    return root


def _coco_size_mismatch(root: Path) -> Path:
    p = root / "annotations.json"
    doc = json.loads(p.read_text())
    doc["images"][2]["width"] = 640  # image 1 holds the crowd RLE mask
    p.write_text(json.dumps(doc))
    return root


def _voc(sample: Path, root: Path, ws: Workspace) -> Path:
    datasets.import_yolo(ws, sample, "tmp")
    datasets.export_dataset(ws, "tmp", "voc", root)
    return root


BadCase = tuple[str, Callable[[Path], Path], str]
BAD_COCO: dict[str, BadCase] = {
    "malformed json": ("coco", _coco_malformed, r"annotations.json is not valid JSON"),
    "unknown category": ("coco", _coco_unknown_category, r"unknown category id 99"),
    "missing image": ("coco", _coco_missing_image, r"image sample_0003.jpg is missing"),
    "box out of bounds": ("coco", _coco_box_out_of_bounds, r"lies outside the 96x96 image"),
    "path escapes root": ("coco", _coco_escaping_path, r"escapes the dataset folder"),
    "symlink escapes root": ("coco", _coco_symlink_out, r"is a link to .*outside the dataset"),
    "size mismatch": ("coco", _coco_size_mismatch, r"as 640x96 but the image is 96x96"),
}


@pytest.mark.parametrize("case", sorted(BAD_COCO))
def test_bad_coco_is_one_line_and_leaves_nothing(
    ws: Workspace, sample: Path, tmp_path: Path, case: str
) -> None:
    _, mutate, pattern = BAD_COCO[case]
    src = mutate(_coco_from_sample(sample, tmp_path / "coco"))
    with pytest.raises(DatasetFormatError, match=pattern) as info:
        datasets.import_dataset(ws, src, "bad")
    assert "\n" not in str(info.value) and "annotations.json" in str(info.value)
    _assert_workspace_empty(ws)
    report = datasets.analyze_dataset(src)
    assert not report["ok"] and report["problems"] == [str(info.value)]


def _voc_edit(root: Path, stem: str, old: str, new: str) -> None:
    p = root / "Annotations" / f"{stem}.xml"
    p.write_text(p.read_text().replace(old, new, 1))


BAD_VOC: dict[str, tuple[Callable[[Path], None], str]] = {
    "malformed xml": (
        lambda r: (r / "Annotations" / "sample_0001.xml").write_text("<annotation><size>"),
        r"sample_0001.xml is not valid XML",
    ),
    "unknown class": (
        lambda r: _voc_edit(r, "sample_0002", "<name>", "<name>dragon"),
        r"sample_0002.xml: object 1: class 'dragon.*' is not in",
    ),
    "box out of bounds": (
        lambda r: _voc_edit(r, "sample_0003", "<xmax>", "<xmax>9"),
        r"sample_0003.xml: object 1: box .* lies outside the 80x80 image",
    ),
    "missing image": (
        lambda r: (r / "JPEGImages" / "sample_0004.jpg").unlink(),
        r"sample_0004.xml: image sample_0004.jpg is missing",
    ),
    "path escapes root": (
        lambda r: _voc_edit(r, "sample_0005", "<filename>", "<filename>../../"),
        r"sample_0005.xml: file name .* escapes the dataset folder",
    ),
    "no size": (
        lambda r: _voc_edit(r, "sample_0006", "<width>80</width>", ""),
        r"sample_0006.xml: <size/width> is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VOC))
def test_bad_voc_is_one_line_and_leaves_nothing(
    ws: Workspace, small: Path, tmp_path: Path, case: str
) -> None:
    mutate, pattern = BAD_VOC[case]
    src = tmp_path / "voc"
    with Workspace.open(tmp_path / "other-ws") as other:
        _voc(small, src, other)
    mutate(src)
    with pytest.raises(DatasetFormatError, match=pattern) as info:
        datasets.import_dataset(ws, src, "bad", "voc")
    assert "\n" not in str(info.value)
    _assert_workspace_empty(ws)


def test_yolo_symlink_escaping_the_root_is_refused(
    ws: Workspace, sample: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.jpg"
    shutil.move(sample / "images" / "sample_0009.jpg", outside)
    (sample / "images" / "sample_0009.jpg").symlink_to(outside)
    with pytest.raises(DatasetFormatError, match=r"is a link to .*outside the dataset folder"):
        datasets.import_dataset(ws, sample, "bad")
    _assert_workspace_empty(ws)


def test_non_utf8_file_names_are_refused(ws: Workspace, small: Path) -> None:
    bad = small / "images" / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(small / "images" / "sample_0000.jpg", bad)
    with pytest.raises(DatasetFormatError, match="not valid UTF-8") as info:
        datasets.import_dataset(ws, small, "bad")
    str(info.value).encode("utf-8")  # the message itself can be printed
    _assert_workspace_empty(ws)


def test_zip_slip_and_undetectable_folders(ws: Workspace, tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.json", "{}")
    with pytest.raises(DatasetFormatError, match="escapes the dataset folder"):
        datasets.import_dataset(ws, evil, "bad")
    assert not (tmp_path.parent / "escape.json").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetFormatError, match="cannot tell the format"):
        datasets.import_dataset(ws, tmp_path / "junk", "bad")
    report = datasets.analyze_dataset(tmp_path / "junk")
    assert report["format"] is None and "cannot tell" in report["problems"][0]
    with pytest.raises(InvalidArgumentError, match="unknown dataset format"):
        datasets.import_dataset(ws, tmp_path / "junk", "bad", "pascal")
    _assert_workspace_empty(ws)


# ---- export destinations and CLI -------------------------------------------------------


def test_export_refuses_existing_destinations(ws: Workspace, small: Path, tmp_path: Path) -> None:
    datasets.import_yolo(ws, small, "base")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(DestinationNotEmptyError):
        datasets.export_dataset(ws, "base", "coco", taken)
    with pytest.raises(NotFoundError, match="no version v9"):
        datasets.export_dataset(ws, "base@v9", "coco", tmp_path / "x")
    with pytest.raises(InvalidArgumentError):
        datasets.export_dataset(ws, "base@", "coco", tmp_path / "x")
    (tmp_path / "empty").mkdir()
    datasets.export_dataset(ws, "base@v1", "coco", tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / "annotations" / "instances_train.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "shapes", "taken", "ws"]


def test_annotation_json_is_compatible() -> None:
    plain = Annotation(1, 0.5, 0.5, 0.2, 0.1)
    assert plain.to_json() == [1, 0.5, 0.5, 0.2, 0.1]
    rich = Annotation(0, 0.5, 0.5, 0.2, 0.2, polygons=((0.4, 0.4, 0.6, 0.4, 0.5, 0.6),))
    rich = Annotation(**{**rich.__dict__, "iscrowd": True})
    assert Annotation.from_json(rich.to_json()) == rich
    assert ExportDataset("n", "v1", "h", ("a",), ()).splits == ["train", "val"]


def test_cli_analyze_import_export(
    small: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ws = ["--workspace", str(tmp_path / "cli-ws"), "--json"]
    assert cli.main(["dataset", "analyze", str(small), "--json"]) == 0
    report = json.loads(capfd.readouterr().out)
    assert report["format"] == "yolo" and report["images"] == SMALL
    assert not (tmp_path / "cli-ws").exists()  # analyze writes nothing
    assert cli.main(["dataset", "import", str(small), "--name", "s", *ws]) == 0
    assert json.loads(capfd.readouterr().out)["format"] == "yolo"
    out = tmp_path / "exported"
    assert cli.main(["dataset", "export", "s@v1", "--format", "coco", "--out", str(out), *ws]) == 0
    assert json.loads(capfd.readouterr().out)["out"] == str(out)
    bad = ["dataset", "import", str(out), "--format", "voc", "--name", "t", *ws]
    assert cli.main(bad) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Annotations" in err[0]
    assert cli.main(["dataset", "analyze", str(tmp_path / "nowhere")]) == 1
