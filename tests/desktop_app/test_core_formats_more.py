"""Create ML JSON, CVAT for images 1.1 XML and Label Studio JSON: reading, writing, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from desktop_app.core import datasets
from desktop_app.core.dataset_records import Annotation, ExportDataset, ExportItem, ScannedDataset
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats import FORMATS, detect_format, read_dataset
from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion
from desktop_app.core.workspace import Workspace
from runtimes.fileio import sha256_file

W, H = 64, 48


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    return path


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*"))


def _fails(path: Path, fmt: str, names: Path, *words: str) -> str:
    """Reading fails with one line naming ``names`` (and ``words``), and changes nothing."""
    root = path if path.is_dir() else path.parent
    before = _tree(root)
    with pytest.raises(DatasetFormatError) as info:
        read_dataset(path, fmt)
    message = str(info.value)
    assert "\n" not in message
    assert str(names) in message, message
    for word in words:
        assert word in message, message
    assert _tree(root) == before
    return message


def _boxes(scan: ScannedDataset) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    return {
        img.file_name: sorted(
            (scan.class_names[a.cls], tuple(round(v, 9) for v in a.xyxy)) for a in img.boxes
        )
        for img in scan.images
    }


def _r(*values: float) -> tuple[float, ...]:
    return tuple(round(v, 9) for v in values)


def _assert_workspace_empty(ws: Workspace) -> None:
    with ws.session() as s:
        for model in (Dataset, DatasetVersion, DatasetItem, Blob):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model.__name__
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


# ---- Create ML -------------------------------------------------------------------------


def _createml(root: Path, doc: Any, name: str = "annotations.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / name
    p.write_text(json.dumps(doc), encoding="utf-8")
    return p


def _cml_item(image: str, *boxes: tuple[str, float, float, float, float]) -> dict[str, Any]:
    return {
        "image": image,
        "annotations": [
            {"label": n, "coordinates": {"x": x, "y": y, "width": w, "height": h}}
            for n, x, y, w, h in boxes
        ],
    }


def test_createml_reads_centre_boxes_in_pixels(tmp_path: Path) -> None:
    root = tmp_path / "cml"
    _png(root / "a.png", 1)
    _png(root / "images" / "b.png", 2)
    doc = [
        _cml_item("a.png", ("dog", 32, 24, 16, 8), ("cat", 8, 8, 16, 16)),
        _cml_item("b.png"),
    ]
    path = _createml(root, doc)
    assert detect_format(root).key == "createml"
    assert detect_format(path).key == "createml"
    scan = read_dataset(root)
    assert scan.format == "createml" and scan.task == "detect"
    assert scan.class_names == ("cat", "dog")  # sorted: Create ML keeps no class list
    assert not scan.has_source_split
    assert _boxes(scan) == {
        "a.png": [("cat", _r(0, 0, 0.25, 1 / 3)), ("dog", _r(0.375, 5 / 12, 0.625, 7 / 12))],
        "b.png": [],
    }
    assert all(img.labelled for img in scan.images)


def test_createml_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "cml"
    for i, split in enumerate(("train", "valid", "test")):
        _png(root / split / f"{split}.png", i)
        _createml(root / split, [_cml_item(f"{split}.png", ("dog", 32, 24, 10, 10))])
    assert detect_format(root).key == "createml"
    scan = read_dataset(root)
    assert scan.has_source_split
    assert {img.file_name: img.source_split for img in scan.images} == {
        "train.png": "train",
        "valid.png": "val",
        "test.png": "test",
    }


def test_createml_same_name_in_two_splits(tmp_path: Path) -> None:
    root = tmp_path / "cml"
    _png(root / "train" / "a.png", 1)
    _png(root / "valid" / "a.png", 2)
    _createml(root / "train", [_cml_item("a.png", ("dog", 32, 24, 16, 8))])
    p = _createml(root / "valid", [_cml_item("a.png", ("cat", 8, 8, 16, 16))])
    _fails(root, "createml", root / "valid" / "a.png", "rename one")
    assert p.is_file()
    scan = read_dataset(root, "createml", lenient=True)
    assert [(i.source_split, i.path.parent.name) for i in scan.images] == [("train", "train")]
    assert _boxes(scan) == {"a.png": [("dog", _r(0.375, 5 / 12, 0.625, 7 / 12))]}
    assert len(scan.problems) == 1


def test_createml_bad_json_names_file_line_and_column(tmp_path: Path) -> None:
    root = tmp_path / "cml"
    _png(root / "a.png")
    p = root / "annotations.json"
    p.write_text('[{"image": "a.png", "annotations": [}]\n', encoding="utf-8")
    _fails(p, "createml", p, "line 1 column")


def test_createml_not_utf8(tmp_path: Path) -> None:
    root = tmp_path / "cml"
    p = root / "annotations.json"
    root.mkdir()
    p.write_bytes(b'[{"image": "\xff.png", "annotations": []}]')
    _fails(p, "createml", p, "UTF-8")


def test_createml_missing_image(tmp_path: Path) -> None:
    root = tmp_path / "cml"
    p = _createml(root, [_cml_item("gone.png", ("dog", 10, 10, 4, 4))])
    _fails(root, "createml", p, "gone.png", "missing")


def test_createml_box_outside_image(tmp_path: Path) -> None:
    root = tmp_path / "cml"
    _png(root / "a.png")
    p = _createml(root, [_cml_item("a.png", ("dog", 60, 24, 20, 10))])
    _fails(root, "createml", p, "outside the 64x48 image")


def test_createml_path_escaping_root(tmp_path: Path) -> None:
    _png(tmp_path / "outside.png")
    root = tmp_path / "cml"
    p = _createml(root, [_cml_item("../outside.png")])
    _fails(root, "createml", p, "escapes the dataset folder")


def test_createml_bad_coordinates_and_lenient(tmp_path: Path) -> None:
    root = tmp_path / "cml"
    _png(root / "a.png", 1)
    _png(root / "b.png", 2)
    doc = [
        _cml_item("a.png", ("dog", 32, 24, 16, 8), ("cat", 60, 24, 20, 10)),
        {"image": "b.png", "annotations": [{"label": "dog", "coordinates": {"x": "1"}}]},
    ]
    p = _createml(root, doc)
    _fails(root, "createml", p, "b.png", "coordinates")
    scan = read_dataset(root, "createml", lenient=True)
    assert _boxes(scan)["a.png"] == [("dog", _r(0.375, 5 / 12, 0.625, 7 / 12))]
    assert len(scan.problems) == 2
    assert any("outside the 64x48 image" in m for m in scan.problems)


# ---- CVAT ------------------------------------------------------------------------------


def _cvat(root: Path, images: str, labels: str = "dog cat", meta: str = "task") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    label_xml = "".join(f"<label><name>{n}</name><attributes/></label>" for n in labels.split())
    p = root / "annotations.xml"
    p.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n<version>1.1</version>\n'
        f"<meta><{meta}><name>t</name><labels>{label_xml}</labels></{meta}></meta>\n"
        f"{images}\n</annotations>\n",
        encoding="utf-8",
    )
    return p


def test_cvat_reads_boxes_polygons_subsets_and_meta_order(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    _png(root / "images" / "a.png", 1)
    _png(root / "images" / "Validation" / "b.png", 2)
    p = _cvat(
        root,
        '<image id="0" name="a.png" width="64" height="48" subset="Train">'
        '<box label="dog" xtl="16" ytl="12" xbr="48" ybr="36" occluded="1" z_order="0"/>'
        '<polygon label="cat" points="0,0;32,0;32,24" occluded="0"/></image>'
        '<image id="1" name="b.png" width="64" height="48" subset="Validation"/>',
        meta="project",
    )
    assert detect_format(root).key == "cvat"
    assert detect_format(p).key == "cvat"
    scan = read_dataset(root)
    assert scan.task == "segment"
    assert scan.class_names == ("dog", "cat")
    assert {i.file_name: i.source_split for i in scan.images} == {"a.png": "train", "b.png": "val"}
    assert _boxes(scan) == {
        "a.png": [("cat", (0.0, 0.0, 0.5, 0.5)), ("dog", (0.25, 0.25, 0.75, 0.75))],
        "b.png": [],
    }
    (cat,) = [a for a in scan.images[0].boxes if a.cls == 1]
    assert cat.polygons == ((0.0, 0.0, 0.5, 0.0, 0.5, 0.5),)


def test_cvat_group_keeps_box_and_polygons_of_one_object(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    _png(root / "a.png")
    _cvat(
        root,
        '<image id="0" name="a.png" width="64" height="48">'
        '<polygon label="dog" points="8,8;16,8;16,16" group_id="3"/>'
        '<polygon label="dog" points="24,8;32,8;32,16" group_id="3"/>'
        '<box label="dog" xtl="0" ytl="0" xbr="40" ybr="24" group_id="3"/></image>',
    )
    scan = read_dataset(root, "cvat")
    (obj,) = scan.images[0].boxes
    assert obj.xyxy == pytest.approx((0.0, 0.0, 40 / 64, 0.5))
    assert len(obj.polygons) == 2


def test_cvat_tags_are_classification(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    _png(root / "a.png", 1)
    _png(root / "b.png", 2)
    _cvat(
        root,
        '<image id="0" name="a.png" width="64" height="48"><tag label="cat"/></image>'
        '<image id="1" name="b.png" width="64" height="48"/>',
    )
    scan = read_dataset(root, "cvat")
    assert scan.task == "classify"
    a, b = scan.images
    assert (a.labelled, [(x.cls, x.xyxy) for x in a.boxes]) == (True, [(1, (0, 0, 1, 1))])
    assert (b.labelled, b.boxes) == (False, ())


def test_cvat_malformed_xml_names_line_and_column(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    p = _cvat(root, '<image id="0" name="a.png" width="64" height="48"><box label="dog"</image>')
    _fails(root, "cvat", p, "not valid XML", "line 5 column")


def test_cvat_entity_bomb_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    root.mkdir()
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    p = root / "annotations.xml"
    p.write_text(
        f'<?xml version="1.0"?><!DOCTYPE annotations [<!ENTITY l0 "lol">{lol}]>'
        "<annotations><version>1.1</version><meta>&l9;</meta></annotations>",
        encoding="utf-8",
    )
    _fails(p, "cvat", p, "entities")


def test_cvat_external_entity_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret", encoding="utf-8")
    root = tmp_path / "cvat"
    root.mkdir()
    p = root / "annotations.xml"
    p.write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<annotations><version>1.1</version><meta>&x;</meta></annotations>",
        encoding="utf-8",
    )
    message = _fails(p, "cvat", p, "refused")
    assert "top secret" not in message


def test_cvat_unknown_label(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    _png(root / "a.png")
    p = _cvat(
        root,
        '<image id="0" name="a.png" width="64" height="48">'
        '<box label="horse" xtl="1" ytl="1" xbr="9" ybr="9"/></image>',
    )
    _fails(root, "cvat", p, "'horse'", "<meta> labels")


def test_cvat_box_outside_image(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    _png(root / "a.png")
    p = _cvat(
        root,
        '<image id="0" name="a.png" width="64" height="48">'
        '<box label="dog" xtl="1" ytl="1" xbr="90" ybr="9"/></image>',
    )
    _fails(root, "cvat", p, "outside the 64x48 image")


def test_cvat_declared_size_differs(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    _png(root / "a.png")
    p = _cvat(root, '<image id="0" name="a.png" width="640" height="480"/>')
    _fails(root, "cvat", p, "640x480", "64x48")


def test_cvat_missing_image_and_escaping_name(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    p = _cvat(root, '<image id="0" name="gone.png" width="64" height="48"/>')
    _fails(root, "cvat", p, "gone.png", "missing")
    _png(tmp_path / "outside.png")
    p = _cvat(root, '<image id="0" name="../outside.png" width="64" height="48"/>')
    _fails(root, "cvat", p, "escapes the dataset folder")


def test_cvat_not_utf8(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    root.mkdir()
    p = root / "annotations.xml"
    p.write_bytes(
        b'<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version>'
        b'<image id="0" name="\xff.png" width="64" height="48"/></annotations>'
    )
    _fails(p, "cvat", p, "not valid XML")


def test_cvat_unsupported_shape_strict_and_lenient(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    _png(root / "a.png")
    p = _cvat(
        root,
        '<image id="0" name="a.png" width="64" height="48">'
        '<points label="dog" points="3,4;5,6"/>'
        '<box label="dog" xtl="16" ytl="12" xbr="48" ybr="36"/></image>',
    )
    _fails(root, "cvat", p, "<points>", "not supported")
    scan = read_dataset(root, "cvat", lenient=True)
    assert _boxes(scan) == {"a.png": [("dog", (0.25, 0.25, 0.75, 0.75))]}
    assert len(scan.problems) == 1 and "<points>" in scan.problems[0]


# ---- Label Studio ----------------------------------------------------------------------


def _rect(label: str, x: float, y: float, w: float, h: float, rot: float = 0) -> dict[str, Any]:
    return {
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": rot,
            "rectanglelabels": [label],
        },
    }


def _task(image: str, *results: dict[str, Any], cancelled: bool = False) -> dict[str, Any]:
    return {
        "id": 1,
        "data": {"image": image},
        "annotations": [{"id": 1, "result": list(results), "was_cancelled": cancelled}],
    }


def _ls(root: Path, tasks: list[dict[str, Any]], name: str = "export.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / name
    p.write_text(json.dumps(tasks), encoding="utf-8")
    return p


def test_labelstudio_reads_upload_local_and_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "ls"
    _png(root / "images" / "cat.png", 1)
    _png(root / "media" / "dog.png", 2)
    _png(root / "x" / "bird.png", 3)
    _png(root / "images" / "sky.png", 4)
    _png(root / "images" / "todo.png", 5)
    polygon = {
        "type": "polygonlabels",
        "value": {"points": [[0, 0], [50, 0], [50, 50]], "polygonlabels": ["cat"]},
    }
    tasks = [
        _task("/data/upload/3/1a2b3c4d-cat.png", _rect("cat", 25, 25, 50, 50)),
        _task("/data/local-files/?d=media%2Fdog.png", polygon),
        _task("x/bird.png", _rect("bird", 0, 0, 100, 100)),
        _task("images/sky.png"),  # submitted without regions: background
        {"id": 5, "data": {"image": "images/todo.png"}, "annotations": []},  # unlabelled
    ]
    p = _ls(root, tasks)
    assert detect_format(root).key == "labelstudio"
    assert detect_format(p).key == "labelstudio"
    scan = read_dataset(root)
    assert scan.task == "segment" and scan.class_names == ("bird", "cat")
    assert _boxes(scan) == {
        "cat.png": [("cat", (0.25, 0.25, 0.75, 0.75))],
        "media/dog.png": [("cat", (0.0, 0.0, 0.5, 0.5))],
        "x/bird.png": [("bird", (0.0, 0.0, 1.0, 1.0))],
        "sky.png": [],
        "todo.png": [],
    }
    assert {i.file_name for i in scan.images if not i.labelled} == {"todo.png"}


def test_labelstudio_choices_and_cancelled_annotations(tmp_path: Path) -> None:
    root = tmp_path / "ls"
    _png(root / "images" / "a.png", 1)
    _png(root / "images" / "b.png", 2)
    choice = {"type": "choices", "value": {"choices": ["cat"]}}
    tasks = [_task("images/a.png", choice), _task("images/b.png", choice, cancelled=True)]
    _ls(root, tasks)
    scan = read_dataset(root, "labelstudio")
    assert scan.task == "classify"
    a, b = scan.images
    assert (a.labelled, [x.xyxy for x in a.boxes]) == (True, [(0, 0, 1, 1)])
    assert (b.labelled, b.boxes) == (False, ())


def test_labelstudio_rotated_box_is_a_problem(tmp_path: Path) -> None:
    root = tmp_path / "ls"
    _png(root / "images" / "a.png")
    p = _ls(
        root,
        [_task("images/a.png", _rect("cat", 10, 10, 20, 20, rot=30), _rect("dog", 0, 0, 50, 50))],
    )
    _fails(root, "labelstudio", p, "rotated boxes are not supported")
    scan = read_dataset(root, "labelstudio", lenient=True)
    assert _boxes(scan) == {"a.png": [("dog", (0.0, 0.0, 0.5, 0.5))]}
    assert len(scan.problems) == 1


def test_labelstudio_box_outside_image(tmp_path: Path) -> None:
    root = tmp_path / "ls"
    _png(root / "images" / "a.png")
    p = _ls(root, [_task("images/a.png", _rect("cat", 60, 10, 60, 20))])
    _fails(root, "labelstudio", p, "outside the 64x48 image")


def test_labelstudio_bad_json_and_json_min(tmp_path: Path) -> None:
    root = tmp_path / "ls"
    root.mkdir()
    p = root / "export.json"
    p.write_text(
        '[{"data": {"image": "a.png"}, "annotations": [\n  {"result": ]}]', encoding="utf-8"
    )
    _fails(p, "labelstudio", p, "line 2 column")
    p.write_text(json.dumps([{"image": "/data/upload/1/a.png", "id": 1, "label": []}]))
    _fails(p, "labelstudio", p, "JSON-MIN")
    p.write_bytes(b'[{"data": {"image": "\xff.png"}}]')
    _fails(p, "labelstudio", p, "UTF-8")


def test_labelstudio_missing_url_ambiguous_and_escaping(tmp_path: Path) -> None:
    root = tmp_path / "ls"
    p = _ls(root, [_task("images/gone.png")])
    _fails(root, "labelstudio", p, "gone.png", "missing")
    p = _ls(root, [_task("https://example.com/a.png")])
    _fails(root, "labelstudio", p, "is a URL")
    _png(root / "one" / "a.png", 1)
    _png(root / "two" / "a.png", 2)
    p = _ls(root, [_task("/data/upload/1/0000aaaa-a.png")])
    _fails(root, "labelstudio", p, "matches 2 files")
    _png(tmp_path / "outside.png")
    p = _ls(root, [_task("/data/local-files/?d=..%2Foutside.png")])
    _fails(root, "labelstudio", p, "escapes the dataset folder")


@pytest.mark.skipif(os.name == "nt", reason="file names are Unicode on Windows")
def test_labelstudio_non_utf8_file_name(tmp_path: Path) -> None:
    root = tmp_path / "ls"
    _png(root / "images" / "a.png")
    os.rename(root / "images" / "a.png", os.fsencode(root / "images") + b"/\xff-a.png")
    p = _ls(root, [_task("/data/upload/1/1a2b3c4d-\udcff-a.png")])
    with pytest.raises(DatasetFormatError) as info:
        read_dataset(p, "labelstudio")
    assert "not valid UTF-8" in str(info.value) and "\n" not in str(info.value)


# ---- writers ----------------------------------------------------------------------------


def _write(fmt: str, tmp_path: Path, task: str, *items: tuple[str, Any, str]) -> ScannedDataset:
    """Write items (file name, annotations, label status) with ``fmt`` and read them back."""
    files: dict[str, Path] = {}
    rows = []
    for i, (name, anns, status) in enumerate(items):
        p = _png(tmp_path / "src" / name, i)
        sha = sha256_file(p)
        files[sha] = p
        rows.append(ExportItem(name, sha, W, H, "train", tuple(anns), status))
    data = ExportDataset("d", "v1", "0" * 64, ("dog", "cat"), tuple(rows), task)

    def copy_image(sha: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[sha], dest)

    out = tmp_path / "out"
    out.mkdir()
    FORMATS[fmt].write(data, out, copy_image)
    return read_dataset(out, fmt)


def test_labelstudio_keeps_unlabelled_apart_from_background(tmp_path: Path) -> None:
    box = Annotation.from_xyxy(1, 0.25, 0.25, 0.5, 0.75)
    scan = _write(
        "labelstudio",
        tmp_path,
        "detect",
        ("boxed.png", [box], "labelled"),
        ("empty.png", [], "labelled"),
        ("todo.png", [], "unlabelled"),
    )
    got = {i.file_name: (i.labelled, len(i.boxes)) for i in scan.images}
    assert got == {"boxed.png": (True, 1), "empty.png": (True, 0), "todo.png": (False, 0)}


def test_cvat_keeps_an_object_with_several_outlines_and_its_own_box(tmp_path: Path) -> None:
    outlines = ((0.1, 0.1, 0.2, 0.1, 0.2, 0.2), (0.3, 0.3, 0.4, 0.3, 0.4, 0.4))
    wide = Annotation.from_xyxy(0, 0.05, 0.05, 0.5, 0.5, polygons=outlines)
    tight = Annotation.from_xyxy(1, 0.1, 0.1, 0.2, 0.2, polygons=(outlines[0],))
    scan = _write("cvat", tmp_path, "segment", ("a.png", [wide, tight], "labelled"))
    assert scan.task == "segment"
    got = sorted(scan.images[0].boxes, key=lambda a: a.cls)
    for want, have in zip((wide, tight), got, strict=True):
        assert have.cls == want.cls
        assert have.xyxy == pytest.approx(want.xyxy, abs=1e-6)
        assert len(have.polygons) == len(want.polygons)
        for p, q in zip(want.polygons, have.polygons, strict=True):
            assert q == pytest.approx(p, abs=1e-6)
    xml = (tmp_path / "out" / "annotations.xml").read_text(encoding="utf-8")
    assert xml.count("<box ") == 1 and xml.count('group_id="1"') == 3


def test_cvat_classify_writes_tags_and_leaves_unlabelled_untagged(tmp_path: Path) -> None:
    scan = _write(
        "cvat",
        tmp_path,
        "classify",
        ("a.png", [Annotation.whole_image(1)], "labelled"),
        ("b.png", [], "unlabelled"),
    )
    assert scan.task == "classify"
    got = {i.file_name: (i.labelled, [a.cls for a in i.boxes]) for i in scan.images}
    assert got == {"a.png": (True, [1]), "b.png": (False, [])}


# ---- through the workspace -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["createml", "cvat", "labelstudio"])
def test_export_then_import_through_the_workspace(
    ws: Workspace, sample: Path, fmt: str, tmp_path: Path
) -> None:
    datasets.import_dataset(ws, sample, "shapes")
    out = tmp_path / "out"
    result = datasets.export_dataset(ws, "shapes", fmt, out)
    assert result["format"] == fmt and result["images"] == 40
    assert detect_format(out).key == fmt
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    datasets.import_dataset(ws, out, "again")
    a, b = datasets.load_version(ws, "shapes"), datasets.load_version(ws, "again")
    assert set(a.class_names) == set(b.class_names)
    want = {
        i.sha256: (i.split, sorted((a.class_names[x.cls], x.xyxy) for x in i.annotations))
        for i in a.items
    }
    got = {
        i.sha256: (i.split, sorted((b.class_names[x.cls], x.xyxy) for x in i.annotations))
        for i in b.items
    }
    assert want.keys() == got.keys()
    for sha, (split, anns) in want.items():
        assert got[sha][0] == split
        assert len(got[sha][1]) == len(anns)
        for (n, box), (m, box_b) in zip(anns, got[sha][1], strict=True):
            assert n == m and box == pytest.approx(box_b, abs=1e-6)


@pytest.mark.parametrize("fmt", ["createml", "cvat", "labelstudio"])
def test_bad_import_leaves_the_workspace_empty(ws: Workspace, tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "bad"
    _png(root / "images" / "a.png")
    _png(root / "images" / "b.png", 1)
    if fmt == "createml":
        _createml(root / "images", [_cml_item("a.png"), _cml_item("b.png", ("dog", 99, 9, 4, 4))])
    elif fmt == "cvat":
        _cvat(
            root,
            '<image id="0" name="a.png" width="64" height="48"/>'
            '<image id="1" name="b.png" width="64" height="48">'
            '<box label="horse" xtl="1" ytl="1" xbr="9" ybr="9"/></image>',
        )
    else:
        _ls(root, [_task("images/a.png"), _task("images/b.png", _rect("cat", 0, 0, 10, 10, rot=5))])
    with pytest.raises(DatasetFormatError):
        datasets.import_dataset(ws, root / "images" if fmt == "createml" else root, "bad", fmt)
    _assert_workspace_empty(ws)
    assert FORMATS[fmt].key == fmt


def _odd_coco(root: Path, polygons: bool) -> Path:
    """A COCO folder of 97x61 images whose boxes (and outlines) lie at fractional pixels."""
    rng = np.random.default_rng(11)
    doc: dict[str, Any] = {
        "categories": [{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}],
        "images": [],
        "annotations": [],
    }
    for i in range(6):
        name = f"img{i}.png"
        ok, buf = cv2.imencode(".png", rng.integers(0, 255, (61, 97, 3), dtype=np.uint8))
        assert ok
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "images" / name).write_bytes(buf.tobytes())
        doc["images"].append({"id": i + 1, "file_name": name, "width": 97, "height": 61})
        for _ in range(3):
            xs = sorted(float(v) for v in np.round(rng.uniform(0, 97, 4), 2))
            ys = sorted(float(v) for v in np.round(rng.uniform(0, 61, 4), 2))
            ann: dict[str, Any] = {
                "id": len(doc["annotations"]) + 1,
                "image_id": i + 1,
                "category_id": int(rng.choice([4, 9])),
                "bbox": [xs[0], ys[0], xs[3] - xs[0], ys[3] - ys[0]],
                "iscrowd": 0,
            }
            if polygons:  # a quadrilateral touching the box on every side
                ann["segmentation"] = [[xs[0], ys[1], xs[2], ys[0], xs[3], ys[2], xs[1], ys[3]]]
            doc["annotations"].append(ann)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    (root / "annotations" / "instances_val.json").write_text(
        json.dumps(dict(doc, images=[], annotations=[]))
    )
    return root


@pytest.mark.parametrize(
    ("polygons", "fmts"),
    [
        (False, ["coco", "createml", "cvat", "labelstudio", "yolo"]),
        (True, ["coco", "cvat", "coco"]),
    ],
    ids=["boxes", "polygons"],
)
def test_export_and_import_keep_the_content_hash(
    ws: Workspace, tmp_path: Path, polygons: bool, fmts: list[str]
) -> None:
    """Fractional pixel boxes and outlines read back from every format that stores floats
    as the same numbers (normalised values are kept to 10 decimals), so a round trip, or a
    chain of them, keeps the content hash and `dataset duplicates` sees the same dataset."""
    src = _odd_coco(tmp_path / "src", polygons)
    base = datasets.import_dataset(ws, src, "base", "coco")
    assert base["annotations"] == 18
    previous = "base"
    for k, fmt in enumerate(fmts):
        out = tmp_path / f"out{k}-{fmt}"
        datasets.export_dataset(ws, previous, fmt, out)
        again = datasets.import_dataset(ws, out, f"again{k}", fmt)
        assert again["content_hash"] == base["content_hash"], (previous, fmt)
        previous = f"again{k}"
