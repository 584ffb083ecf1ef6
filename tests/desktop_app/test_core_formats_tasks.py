"""Dataset formats for every task: YOLO segment/pose/classify, ImageFolder, COCO keypoints and
RLE, unlabelled images, lenient reads, and task-aware export."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from desktop_app.core import datasets
from desktop_app.core.dataset_export import dropped_by
from desktop_app.core.dataset_records import (
    Annotation,
    ExportDataset,
    ExportItem,
    ScannedDataset,
)
from desktop_app.core.errors import DatasetFormatError, InvalidArgumentError
from desktop_app.core.formats import FORMATS, detect_format, read_dataset
from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion
from desktop_app.core.workspace import Workspace

W, H = 64, 48
MASK = "j7:V100000000000000000VY2"  # COCO compressed RLE: a 10x10 square at (5, 10), 64x48
TOL = 1e-6
NAMES = ["cat", "dog", "fox"]


def _png(path: Path, seed: int) -> Path:
    """A small distinct image (its own noise, so every file has its own sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def _yaml(root: Path, **doc: Any) -> None:
    (root / "data.yaml").write_text(yaml.safe_dump({"names": NAMES, **doc}))


def _yolo(root: Path, labels: dict[str, str | None], **doc: Any) -> Path:
    """A YOLO folder: ``labels`` maps "split/name.png" to the label text (None: no file)."""
    for i, (name, text) in enumerate(sorted(labels.items())):
        split, stem = name.split("/")
        _png(root / "images" / split / stem, i)
        label = (root / "labels" / split / stem).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            label.write_text(text)
    _yaml(root, **doc)
    return root


def _class_folders(root: Path, layout: dict[str, list[str]]) -> Path:
    """``layout`` maps "split/class" (or "class") to image names."""
    seed = 100
    for folder, names in layout.items():
        for n in names:
            seed += 1
            _png(root / folder / n, seed)
    return root


def _to_export(scanned: ScannedDataset) -> tuple[ExportDataset, dict[str, Path]]:
    """The records a writer gets, as a workspace would hand them over, and where each image is."""
    items = tuple(
        ExportItem(
            img.file_name,
            img.sha256,
            img.width,
            img.height,
            img.source_split or "train",
            img.boxes,
            "labelled" if img.labelled else "unlabelled",
        )
        for img in scanned.images
    )
    data = ExportDataset(
        "t",
        "v1",
        "0" * 64,
        scanned.class_names,
        items,
        task=scanned.task,
        keypoint_shape=(scanned.keypoint_shape[0], 3) if scanned.keypoint_shape else None,
    )
    return data, {img.sha256: img.path for img in scanned.images}


def _write(scanned: ScannedDataset, fmt: str, out: Path) -> Path:
    data, paths = _to_export(scanned)

    out.mkdir(parents=True)
    FORMATS[fmt].write(data, out, lambda sha, dest: _copy(paths[sha], dest))
    return out


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _by_name(scanned: ScannedDataset) -> dict[str, Any]:
    return {img.file_name: img for img in scanned.images}


def _assert_same(a: ScannedDataset, b: ScannedDataset, *, order: bool = True) -> None:
    """Same images, splits, tasks, label status; classes by name; geometry within TOL."""
    assert a.task == b.task
    if order:
        assert a.class_names == b.class_names
    else:
        assert sorted(a.class_names) == sorted(b.class_names)
    ia, ib = _by_name(a), _by_name(b)
    assert sorted(ia) == sorted(ib)
    for name, x in ia.items():
        y = ib[name]
        # a source without splits is written as train (see _to_export)
        assert (x.sha256, x.source_split or "train", x.labelled) == (
            y.sha256,
            y.source_split or "train",
            y.labelled,
        )
        assert len(x.boxes) == len(y.boxes), name
        for p, q in zip(x.boxes, y.boxes, strict=True):
            assert a.class_names[p.cls] == b.class_names[q.cls], name
            assert (p.cx, p.cy, p.w, p.h) == pytest.approx((q.cx, q.cy, q.w, q.h), abs=TOL)
            assert len(p.polygons) == len(q.polygons), name
            for u, v in zip(p.polygons, q.polygons, strict=True):
                assert u == pytest.approx(v, abs=TOL), name
            assert p.keypoints == pytest.approx(q.keypoints, abs=TOL), name
            assert (p.rle, p.iscrowd) == (q.rle, q.iscrowd), name


def _round_trip(src: ScannedDataset, fmt: str, out: Path, **read: Any) -> ScannedDataset:
    back = read_dataset(_write(src, fmt, out), fmt, **read)
    return back


# ---- YOLO segment ----------------------------------------------------------------------

SEG = {
    "train/a.png": "0 0.1 0.1 0.5 0.1 0.3 0.6\n1 0.6 0.5 0.9 0.5 0.9 0.9 0.6 0.9\n",
    "train/b.png": "2 0.2 0.2 0.8 0.3 0.5 0.7\n",
    "val/c.png": "",  # background
    "val/d.png": None,  # unlabelled
}


def test_yolo_segment_round_trip(tmp_path: Path) -> None:
    src = read_dataset(_yolo(tmp_path / "seg", SEG), "auto")
    assert (src.format, src.task) == ("yolo", "segment")
    a = _by_name(src)["a.png"].boxes[0]
    assert a.polygons == ((0.1, 0.1, 0.5, 0.1, 0.3, 0.6),)
    assert a.xyxy == pytest.approx((0.1, 0.1, 0.5, 0.6))
    back = _round_trip(src, "yolo", tmp_path / "out")
    _assert_same(src, back)
    assert (tmp_path / "out" / "labels" / "val" / "c.txt").read_text() == ""
    assert not (tmp_path / "out" / "labels" / "val" / "d.txt").exists()


def test_yolo_segment_and_coco_polygons_are_lossless(tmp_path: Path) -> None:
    src = read_dataset(_yolo(tmp_path / "seg", SEG), "yolo")
    coco = _round_trip(src, "coco", tmp_path / "coco")
    assert coco.task == "segment"
    # COCO cannot say "unlabelled": that image comes back as a labelled background image
    d = _by_name(coco)["d.png"]
    assert d.labelled and d.boxes == ()
    again = _round_trip(coco, "yolo", tmp_path / "yolo")
    _assert_same(coco, again)
    for name, img in _by_name(src).items():
        for p, q in zip(img.boxes, _by_name(again)[name].boxes, strict=True):
            assert p.polygons[0] == pytest.approx(q.polygons[0], abs=TOL)


def test_yolo_mixed_boxes_and_polygons(tmp_path: Path) -> None:
    root = _yolo(
        tmp_path / "mixed",
        {
            "train/a.png": "0 0.1 0.1 0.5 0.1 0.3 0.6\n",
            "train/b.png": "1 0.1 0.1 0.5 0.1 0.3 0.6\n0 0.5 0.5 0.2 0.2\n",
        },
    )
    with pytest.raises(DatasetFormatError, match=r"b.txt:2: .*a box line in a dataset") as info:
        read_dataset(root, "yolo")
    assert "\n" not in str(info.value)
    lenient = read_dataset(root, "yolo", lenient=True)
    assert lenient.task == "segment" and len(lenient.problems) == 1
    assert [len(i.boxes) for i in lenient.images] == [1, 1]


# ---- YOLO pose ---------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_yolo_pose_round_trip(tmp_path: Path, ndim: int) -> None:
    kp3 = "0.40 0.40 2 0.50 0.45 1 0 0 0"
    kp2 = "0.40 0.40 0.50 0.45 0 0"
    kps = kp3 if ndim == 3 else kp2
    root = _yolo(
        tmp_path / "pose",
        {"train/a.png": f"0 0.5 0.5 0.4 0.4 {kps}\n", "val/b.png": f"2 0.3 0.3 0.2 0.2 {kps}\n"},
        kpt_shape=[3, ndim],
        flip_idx=[0, 2, 1],
    )
    src = read_dataset(root, "auto")
    assert (src.task, src.keypoint_shape) == ("pose", (3, ndim))
    kp = _by_name(src)["a.png"].boxes[0].keypoints
    visible = 1.0 if ndim == 3 else 2.0  # two numbers: any point but 0 0 is visible
    assert kp == pytest.approx((0.4, 0.4, 2, 0.5, 0.45, visible, 0, 0, 0))
    out = tmp_path / "out"
    back = _round_trip(src, "yolo", out)
    assert back.keypoint_shape == (3, 3)
    assert yaml.safe_load((out / "data.yaml").read_text())["kpt_shape"] == [3, 3]
    assert back.task == "pose" and back.class_names == src.class_names
    for name, img in _by_name(src).items():
        for p, q in zip(img.boxes, _by_name(back)[name].boxes, strict=True):
            assert p.keypoints == pytest.approx(q.keypoints, abs=TOL)


def test_yolo_pose_and_coco_keypoints_are_lossless(tmp_path: Path) -> None:
    root = _yolo(
        tmp_path / "pose",
        {
            "train/a.png": "0 0.5 0.5 0.4 0.4 0.401 0.402 2 0.5 0.45 1\n",
            "train/b.png": "1 0.3 0.3 0.2 0.2 0.3 0.3 2 0 0 0\n",
            "val/c.png": "",
        },
        kpt_shape=[2, 3],
    )
    src = read_dataset(root, "yolo")
    coco = _round_trip(src, "coco", tmp_path / "coco")
    assert (coco.task, coco.keypoint_shape) == ("pose", (2, 3))
    _assert_same(src, coco)
    doc = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())
    ann = doc["annotations"][0]
    assert ann["keypoints"] == pytest.approx([0.401 * W, 0.402 * H, 2, 0.5 * W, 0.45 * H, 1])
    assert ann["num_keypoints"] == 2 and len(doc["categories"][0]["keypoints"]) == 2
    _assert_same(coco, _round_trip(coco, "yolo", tmp_path / "yolo"))


def test_bad_pose_lines(tmp_path: Path) -> None:
    root = _yolo(
        tmp_path / "pose",
        {
            "train/a.png": "0 0.5 0.5 0.4 0.4 0.4 0.4 2\n0 0.5 0.5 0.4 0.4 0.4 0.4 5 0.1 0.1 2\n",
            "train/b.png": "0 0.5 0.5 0.4 0.4 0.4 0.4 2 0.1 0.1 2\n",
        },
        kpt_shape=[2, 3],
    )
    with pytest.raises(DatasetFormatError, match=r"a.txt:1: expected 11 numbers"):
        read_dataset(root, "yolo")
    lenient = read_dataset(root, "yolo", lenient=True)
    assert len(lenient.problems) == 2 and "visibility must be 0, 1 or 2" in lenient.problems[1]
    assert sorted(len(i.boxes) for i in lenient.images) == [0, 1]


def test_malformed_kpt_shape_is_refused(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "pose", {"train/a.png": ""}, kpt_shape=[17, 4])
    with pytest.raises(DatasetFormatError, match=r"kpt_shape must be \[keypoints, 2 or 3\]"):
        read_dataset(root, "yolo", lenient=True)  # a layout problem: refused even lenient


# ---- classification: YOLO classify and ImageFolder --------------------------------------

CLASSIFY = {
    "train/cat": ["1.png", "2.png"],
    "train/dog": ["3.png"],
    "val/dog": ["4.png", "sub/5.png"],
    "val/fox": ["6.png"],
}


def test_class_folders_detect_as_imagefolder_and_read_as_yolo(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "cls", CLASSIFY)
    assert detect_format(root).key == "imagefolder"
    auto = read_dataset(root, "auto")
    yolo = read_dataset(root, "yolo")
    assert (auto.format, yolo.format) == ("imagefolder", "yolo")
    for scanned in (auto, yolo):
        assert scanned.task == "classify" and scanned.class_names == tuple(NAMES)
        img = _by_name(scanned)["sub/5.png"]
        assert img.boxes == (Annotation.whole_image(1),) and img.source_split == "val"
        assert scanned.has_source_split


def test_yolo_classify_round_trip_keeps_names_order(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "cls", CLASSIFY)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": ["fox", "dog", "cat", "owl"]}))
    src = read_dataset(root, "yolo")
    assert src.class_names == ("fox", "dog", "cat", "owl")  # data.yaml's order and classes
    out = tmp_path / "out"
    back = _round_trip(src, "yolo", out)
    _assert_same(src, back)
    assert (out / "train" / "owl").is_dir() and (out / "val" / "dog" / "sub" / "5.png").is_file()
    assert yaml.safe_load((out / "data.yaml").read_text())["train"] == "train"


def test_imagefolder_and_yolo_classify_are_lossless(tmp_path: Path) -> None:
    src = read_dataset(_class_folders(tmp_path / "cls", CLASSIFY), "imagefolder")
    as_yolo = _round_trip(src, "yolo", tmp_path / "yolo")
    assert as_yolo.format == "yolo"
    _assert_same(src, as_yolo)
    _assert_same(as_yolo, _round_trip(as_yolo, "imagefolder", tmp_path / "if"))


def test_flat_imagefolder_has_no_split(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "flat", {"cat": ["1.png"], "dog": ["2.png"]})
    scanned = read_dataset(root, "auto")
    assert scanned.format == "imagefolder" and not scanned.has_source_split
    assert [i.source_split for i in scanned.images] == [None, None]


def test_imagefolder_problems(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "cls", {"train/cat": ["1.png"], "val/dog": ["1.png"]})
    _png(root / "train" / "stray.png", 7)
    with pytest.raises(DatasetFormatError, match=r"stray.png is not inside a class folder"):
        read_dataset(root, "imagefolder")
    lenient = read_dataset(root, "imagefolder", lenient=True)
    assert len(lenient.images) == 1 and len(lenient.problems) == 2
    assert "same name inside their class folders" in lenient.problems[1]


def test_classify_writer_leaves_out_images_without_a_class(tmp_path: Path) -> None:
    src = read_dataset(_class_folders(tmp_path / "cls", CLASSIFY), "imagefolder")
    data, _ = _to_export(src)
    first, second, *rest = data.items
    items = (
        replace(first, annotations=(), label_status="unlabelled"),
        replace(second, annotations=()),  # labelled, but without a class
        *rest,
    )
    data = replace(data, items=items)
    assert dropped_by("imagefolder", data) == {"unlabelled": 1, "unclassified": 1}
    paths = {i.sha256: i.path for i in src.images}
    out = tmp_path / "out"
    FORMATS["imagefolder"].write(data, out, lambda sha, dest: _copy(paths[sha], dest))
    back = read_dataset(out, "imagefolder")
    assert sorted(_by_name(back)) == sorted(i.file_name for i in rest)


# ---- COCO keypoints and RLE --------------------------------------------------------------


def _coco(root: Path, annotations: list[dict[str, Any]], **cat: Any) -> Path:
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": W, "height": H} for i in range(3)]
    for i in range(3):
        _png(root / "images" / f"{i}.png", 50 + i)
    doc = {
        "images": images,
        "categories": [{"id": 1, "name": "person", **cat}, {"id": 2, "name": "crowd"}],
        "annotations": [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(annotations)],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_coco_keypoints_round_trip(tmp_path: Path) -> None:
    anns = [
        {
            "image_id": 1,
            "category_id": 1,
            "bbox": [10, 8, 20, 30],
            "keypoints": [12, 10, 2, 25.5, 30, 1, 0, 0, 0],
            "num_keypoints": 2,
        },
        {"image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4], "keypoints": [0] * 9},
    ]
    root = _coco(tmp_path / "c", anns, keypoints=["nose", "left", "right"], skeleton=[[1, 2]])
    src = read_dataset(root, "coco")
    assert (src.task, src.keypoint_shape) == ("pose", (3, 3))
    kp = _by_name(src)["0.png"].boxes[0].keypoints
    assert kp == pytest.approx((12 / W, 10 / H, 2, 25.5 / W, 30 / H, 1, 0, 0, 0))
    _assert_same(src, _round_trip(src, "coco", tmp_path / "out"))


def test_coco_rle_crowd_round_trip(tmp_path: Path) -> None:
    counts = [W * H - 100, 40, 60]  # uncompressed runs (0s, 1s, 0s), compressed on read
    anns = [
        {
            "image_id": 1,
            "category_id": 2,
            "iscrowd": 1,
            "bbox": [10, 8, 20, 30],
            "segmentation": {"size": [H, W], "counts": counts},
        },
        {
            "image_id": 2,
            "category_id": 2,
            "iscrowd": 1,  # no bbox: it comes from the mask
            "segmentation": {"size": [H, W], "counts": MASK},
        },
        {
            "image_id": 3,
            "category_id": 1,
            "bbox": [1, 2, 3, 4],
            "segmentation": [[1, 2, 4, 2, 4, 6]],
        },
    ]
    src = read_dataset(_coco(tmp_path / "c", anns), "coco")
    assert src.task == "segment"  # crowd masks aside, every annotation has a polygon
    crowd = _by_name(src)["0.png"].boxes[0]
    assert crowd.iscrowd and isinstance(crowd.rle, str) and crowd.rle
    square = _by_name(src)["1.png"].boxes[0]
    assert square.rle == MASK and square.xyxy == pytest.approx((5 / W, 10 / H, 15 / W, 20 / H))
    back = _round_trip(src, "coco", tmp_path / "out")
    _assert_same(src, back)
    doc = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    seg = doc["annotations"][0]["segmentation"]
    assert seg == {"size": [H, W], "counts": crowd.rle} and doc["annotations"][0]["area"] == 40


def _rle_ann(counts: Any, size: list[int] | None = None) -> list[dict[str, Any]]:
    seg = {"size": size or [H, W], "counts": counts}
    return [
        {"image_id": 1, "category_id": 2, "iscrowd": 1, "bbox": [0, 0, 4, 4], "segmentation": seg}
    ]


@pytest.mark.parametrize(
    ("counts", "size", "pattern"),
    [
        ("abc", None, "ends mid-number"),
        ("0~", None, "not a COCO RLE character"),
        ([5, 3], None, "covers 8 pixels"),
        ([W * H], [W, H], "is not the image's"),
        ([-1, W * H + 1], None, "whole numbers of at least 0"),
    ],
)
def test_bad_rle_is_refused_before_any_decoding(
    tmp_path: Path, counts: Any, size: list[int] | None, pattern: str
) -> None:
    root = _coco(tmp_path / "c", _rle_ann(counts, size))
    with pytest.raises(DatasetFormatError, match=pattern) as info:
        read_dataset(root, "coco")
    assert "\n" not in str(info.value) and "annotations.json: annotation 1" in str(info.value)
    assert read_dataset(root, "coco", lenient=True).problems == (str(info.value),)


def test_coco_segment_task_and_lenient_annotations(tmp_path: Path) -> None:
    anns = [
        {
            "image_id": 1,
            "category_id": 1,
            "bbox": [1, 2, 30, 4],
            "segmentation": [[1, 2, 31, 2, 31, 6]],
        },
        {"image_id": 1, "category_id": 9, "bbox": [1, 2, 3, 4]},  # unknown category
        {"image_id": 2, "category_id": 1, "bbox": [60, 2, 30, 4]},  # outside the image
        {"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]},  # unknown image
        {"image_id": 3, "category_id": 1, "segmentation": [[1, 2, 4, 2, 4, 6]]},
    ]
    root = _coco(tmp_path / "c", anns)
    with pytest.raises(DatasetFormatError, match="unknown category id 9"):
        read_dataset(root, "coco")
    scanned = read_dataset(root, "coco", lenient=True)
    assert len(scanned.problems) == 3 and len(scanned.images) == 3
    assert scanned.task == "segment"
    assert [len(i.boxes) for i in scanned.images] == [1, 0, 1]


def test_coco_categories_with_different_keypoints_are_refused(tmp_path: Path) -> None:
    root = _coco(tmp_path / "c", [], keypoints=["a", "b"])
    doc = json.loads((root / "annotations.json").read_text())
    doc["categories"][1]["keypoints"] = ["a"]
    (root / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetFormatError, match="name 1 and 2 keypoints"):
        read_dataset(root, "coco", lenient=True)


# ---- VOC -----------------------------------------------------------------------------------

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<annotation><filename>0.png</filename><size><width>64</width><height>48</height></size>
<object><name>&lol2;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>
</annotation>
"""


def _voc(root: Path) -> Path:
    for i in range(3):
        _png(root / "JPEGImages" / f"{i}.png", 70 + i)
        obj = "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        xml = f"<annotation><filename>{i}.png</filename><size><width>{W}</width><height>{H}</height></size>{obj}{obj.replace('9<', '99<', 1)}</annotation>"
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{i}.xml").write_text(xml)
    return root


def test_voc_refuses_entity_expansion(tmp_path: Path) -> None:
    root = _voc(tmp_path / "v")
    (root / "Annotations" / "0.xml").write_text(LAUGHS)
    with pytest.raises(DatasetFormatError, match=r"0.xml declares entities"):
        read_dataset(root, "voc")
    lenient = read_dataset(root, "voc", lenient=True)
    # the bad file's image is skipped (not taken for a background image); every other file
    # has one good box and one that sticks out of the image
    assert sorted(i.file_name for i in lenient.images) == ["1.png", "2.png"]
    assert len(lenient.problems) == 3 and [len(i.boxes) for i in lenient.images] == [1, 1]


# ---- export --------------------------------------------------------------------------------


def _export_dataset(task: str, *anns: Annotation, status: str = "labelled") -> ExportDataset:
    item = ExportItem("a.png", "0" * 64, W, H, "train", anns, status)
    return ExportDataset("t", "v1", "0" * 64, tuple(NAMES), (item,), task=task)


def test_dropped_counts_follow_the_task() -> None:
    two = Annotation(0, 0.5, 0.5, 0.5, 0.5, polygons=((0.3, 0.3, 0.6, 0.3, 0.6, 0.6),) * 2)
    assert dropped_by("yolo", _export_dataset("segment", two)) == {"polygons": 1}
    assert dropped_by("coco", _export_dataset("segment", two)) == {}
    assert dropped_by("yolo", _export_dataset("detect", two)) == {"polygons": 1}
    crowd = Annotation(1, 0.5, 0.5, 0.5, 0.5, rle=MASK, iscrowd=True)
    assert dropped_by("voc", _export_dataset("detect", crowd)) == {"rle": 1, "iscrowd": 1}
    assert dropped_by("coco", _export_dataset("detect", status="unlabelled")) == {"unlabelled": 1}
    assert dropped_by("yolo", _export_dataset("detect", status="unlabelled")) == {}
    with pytest.raises(
        InvalidArgumentError,
        match=r"'voc' cannot hold a classify dataset; export it as .*imagefolder.*yolo",
    ):
        dropped_by("voc", _export_dataset("classify", Annotation.whole_image(0)))


# ---- through the workspace ----------------------------------------------------------------


def _assert_workspace_empty(ws: Workspace) -> None:
    with ws.session() as s:
        for model in (Dataset, DatasetVersion, DatasetItem, Blob):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model.__name__
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


def test_pose_with_unlabelled_images_through_the_workspace(ws: Workspace, tmp_path: Path) -> None:
    labels = {
        "train/a.png": "0 0.5 0.5 0.4 0.4 0.4 0.4 2 0.5 0.45 1\n",
        "train/b.png": "",  # background
        "train/c.png": None,  # unlabelled
        "val/d.png": "1 0.3 0.3 0.2 0.2 0.3 0.3 2 0 0 0\n",
    }
    root = _yolo(tmp_path / "pose", labels, kpt_shape=[2, 3])
    summary = datasets.import_dataset(ws, root, "pose")
    assert summary["task"] == "pose" and summary["unlabelled"] == 1
    data = datasets.load_version(ws, "pose")
    assert (data.task, data.keypoint_shape) == ("pose", (2, 3))
    assert {i.file_name: i.label_status for i in data.items}["c.png"] == "unlabelled"
    out = tmp_path / "out"
    result = datasets.export_dataset(ws, "pose", "yolo", out)
    assert result["dropped"] == {}
    assert (out / "labels" / "train" / "b.txt").read_text() == ""
    assert not (out / "labels" / "train" / "c.txt").exists()
    again = read_dataset(out, "yolo")
    assert {i.file_name: i.labelled for i in again.images} == {
        "a.png": True,
        "b.png": True,
        "c.png": False,
        "d.png": True,
    }
    coco = datasets.export_dataset(ws, "pose", "coco", tmp_path / "coco")
    assert coco["dropped"] == {"unlabelled": 1}
    with pytest.raises(InvalidArgumentError, match="cannot hold a pose dataset"):
        datasets.export_dataset(ws, "pose", "voc", tmp_path / "voc")
    assert not (tmp_path / "voc").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_classify_export_to_voc_is_refused(ws: Workspace, tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "cls", CLASSIFY)
    summary = datasets.import_dataset(ws, root, "cls")
    assert summary["task"] == "classify" and summary["format"] == "imagefolder"
    with pytest.raises(InvalidArgumentError, match="'voc' cannot hold a classify dataset"):
        datasets.export_dataset(ws, "cls", "voc", tmp_path / "voc")
    assert not (tmp_path / "voc").exists()
    datasets.export_dataset(ws, "cls", "imagefolder", tmp_path / "if")
    _assert_same(read_dataset(root, "imagefolder"), read_dataset(tmp_path / "if", "auto"))


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "pose line too short": (
        lambda r: _yolo(r, {"train/a.png": "0 0.5 0.5 0.4 0.4 0.4\n"}, kpt_shape=[1, 3]),
        r"a.txt:1: expected 8 numbers",
    ),
    "polygon outside": (
        lambda r: _yolo(r, {"train/a.png": "0 0.1 0.1 1.5 0.1 0.3 0.6\n"}),
        r"a.txt:1: coordinates must be normalised",
    ),
    "flat polygon": (
        lambda r: _yolo(r, {"train/a.png": "0 0.1 0.1 0.2 0.1 0.3 0.1\n"}),
        r"a.txt:1: the polygon has no area",
    ),
    "rle wrong size": (
        lambda r: _coco(r, _rle_ann([W * H], [W, H])),
        r"annotation 1 \(0.png\): the RLE mask's size",
    ),
    "class folder not in data.yaml": (
        lambda r: _yaml(_class_folders(r, {"train/owl": ["1.png"]})) or r,
        r"class folder 'owl' is not among the class names",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_leaves_nothing(ws: Workspace, tmp_path: Path, case: str) -> None:
    build, pattern = BAD[case]
    src = build(tmp_path / "src")
    fmt = "yolo" if case.startswith("class folder") else "auto"
    with pytest.raises(DatasetFormatError, match=pattern) as info:
        datasets.import_dataset(ws, src, "bad", fmt)
    assert "\n" not in str(info.value)
    _assert_workspace_empty(ws)


def test_lenient_yolo_keeps_the_good_lines_and_lists_each_bad_one(tmp_path: Path) -> None:
    root = _yolo(
        tmp_path / "det",
        {
            "train/a.png": "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n1 0.5 1.5 0.2 0.2\n",
            "train/b.png": "2 0.5 0.5 0.2\n2 0.4 0.4 0.1 0.1\n",
            "train/c.png": "1 0.5 0.5 0.2 0.2\n",
        },
    )
    (root / "labels" / "train" / "lost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetFormatError, match=r"lost.txt has no image"):
        read_dataset(root, "yolo")
    scanned = read_dataset(root, "yolo", lenient=True)
    assert [len(i.boxes) for i in scanned.images] == [1, 1, 1]
    assert len(scanned.problems) == 4
    for where in ("lost.txt has no image", "a.txt:2:", "a.txt:3:", "b.txt:1:"):
        assert sum(where in m for m in scanned.problems) == 1, where
