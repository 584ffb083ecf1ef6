"""The fast paths of a dataset import: vectorised COCO box checks, run-batched image
inspection, one-read blob staging, shared copies of duplicate images, Core inserts.

Each fast path must give exactly what the per-object path gives (same records, same
problems in the same order) and keep the guarantees: nothing left behind on a failure.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from desktop_app.core import blobs as blobs_mod
from desktop_app.core import dataset_import, dataset_records
from desktop_app.core.blobs import BlobStore
from desktop_app.core.dataset_records import (
    Annotation,
    Problems,
    SourceImage,
    inspect_images,
)
from desktop_app.core.datasets import import_dataset
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats import coco
from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion
from desktop_app.core.workspace import Workspace
from runtimes.fileio import sha256_bytes

W, H = 64, 48


def _png(path: Path, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def _temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*")) if root.exists() else []


# ---- COCO: vectorised plain boxes ------------------------------------------------------------

PLAIN: list[dict[str, Any]] = [
    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.5, 2.25, 10.1, 7.3]},
    {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 64, 48], "iscrowd": 1},
    {"id": 3, "image_id": 2, "category_id": 3, "bbox": [-0.6, -0.9, 5, 5], "area": 25},
    {"id": 4, "image_id": 2, "category_id": 7, "bbox": [60.3, 44.1, 4.6, 4.8]},  # clipped
    {"id": 5, "image_id": 2, "category_id": 3, "bbox": [3, 4, 5, 6], "segmentation": []},
    {"id": 6, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "keypoints": None},
    {"id": 7, "image_id": 1, "category_id": 7, "bbox": [1e-9, 0.1, 1e-3, 47.8], "iscrowd": 0},
    {"id": 8, "image_id": 2, "category_id": 3, "bbox": [5, 5, 5, 5], "num_keypoints": 0},
]
# each is either invalid or not a plain box: the full check handles it
OTHER: list[Any] = [
    {"id": 20, "image_id": 1, "category_id": 3, "bbox": [float("nan"), 1, 2, 2]},
    {"id": 21, "image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 2]},
    {"id": 22, "image_id": 1, "category_id": 3, "bbox": [60, 1, 10, 2]},
    {"id": 23, "image_id": 1, "category_id": 3, "bbox": [True, 1, 2, 2]},
    {"id": 24, "image_id": 1, "category_id": 3, "bbox": ["1", 1, 2, 2]},
    {"id": 25, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]},
    {"id": 26, "image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2]},
    {"id": 27, "image_id": 1.0, "category_id": 3, "bbox": [1, 1, 2, 2]},
    {"id": 28, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "segmentation": {}},
    {"id": 29, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "attributes": {}},
    {"id": 30, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2]},
    {"id": 31, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, float("inf")]},
    {"id": 32, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "keypoints": 0},
    [1, 1, 2, 2],
]
IMAGES = {1: ("a.png", W, H, Path("a.png")), 2: ("b.png", W, H, Path("b.png"))}
CLASS_OF = {3: 0, 7: 1}


def _full_check(ann: dict[str, Any]) -> Annotation:
    reader = coco._Reader(CLASS_OF, None, Problems())
    _, a = reader._annotation_of(ann, "at", "where", IMAGES)
    return a


def test_plain_boxes_equal_the_full_check_bit_for_bit() -> None:
    fast = coco._plain_boxes(PLAIN, IMAGES, CLASS_OF)
    assert sorted(fast) == list(range(len(PLAIN)))
    for i, ann in enumerate(PLAIN):
        iid, a = fast[i]
        assert iid == ann["image_id"]
        assert a == _full_check(ann)  # exact float equality, crowd flag included
        assert a.to_json() == _full_check(ann).to_json()


# boxes with outlines: checked in vectorised passes too, the same values as the full check
OUTLINED: list[dict[str, Any]] = [
    {
        "id": 40,
        "image_id": 1,
        "category_id": 3,
        "bbox": [1, 2, 30, 20],
        "segmentation": [[1, 2, 31, 2, 31, 22, 1, 22]],
    },
    {
        "id": 41,
        "image_id": 2,
        "category_id": 7,
        "bbox": [0.5, 0.25, 10.1, 7.3],
        "iscrowd": 1,
        "segmentation": [[0.5, 0.25, 10.6, 0.25, 5.55, 7.55], [1, 1, 2, 1, 2, 2, 1.5, 2.5]],
    },
    {
        "id": 42,
        "image_id": 1,
        "category_id": 3,
        "bbox": [60, 40, 4, 8],
        "area": 32,
        "segmentation": [[60, 40, 64.9, 40, 64.9, 48.8, -0.9, -0.5]],
        "keypoints": [],
    },
    {
        "id": 43,
        "image_id": 2,
        "category_id": 7,
        "bbox": [3, 4, 5, 6],
        "segmentation": [[3, 4, 8, 4, 8, 10, 3.000000001, 10.1234567891234]],
    },
]


def _on_box(id_: int, segmentation: Any, **extra: Any) -> dict[str, Any]:
    """An annotation of box [1, 1, 5, 5] on image 1 with this segmentation."""
    return {
        "id": id_,
        "image_id": 1,
        "category_id": 3,
        "bbox": [1, 1, 5, 5],
        "segmentation": segmentation,
        **extra,
    }


# outlines the full check refuses or handles itself: left to it
BAD_OUTLINES: list[dict[str, Any]] = [
    _on_box(50, [[1, 1, 6, 1, 6]]),  # odd
    _on_box(51, [[1, 1, 6, 1]]),  # too short
    _on_box(52, [[1, 1, 70, 1, 6, 6]]),  # outside
    _on_box(53, [[1, 1, float("nan"), 1, 6, 6]]),
    _on_box(54, [[1, 1, True, 1, 6, 6]]),
    _on_box(55, [[1, 1, 6, 1, 6, 6], "x"]),
    _on_box(56, {"counts": [10, 5], "size": [48, 64]}),  # a mask
    _on_box(57, [[1, 1, 6, 1, 6, 6]], keypoints=[1, 1, 2]),
]


def test_outlined_boxes_equal_the_full_check_bit_for_bit() -> None:
    mixed = [*OUTLINED, *BAD_OUTLINES, *PLAIN]
    fast = coco._plain_boxes(mixed, IMAGES, CLASS_OF)
    first_plain = len(OUTLINED) + len(BAD_OUTLINES)
    assert sorted(fast) == [*range(len(OUTLINED)), *range(first_plain, len(mixed))]
    for i, ann in enumerate(OUTLINED):
        iid, a = fast[i]
        assert iid == ann["image_id"] and a.polygons
        assert a == _full_check(ann)
        assert a.to_json() == _full_check(ann).to_json()
    every = coco._all_plain([*OUTLINED, *PLAIN], IMAGES, CLASS_OF)  # the column path
    assert every is not None
    for (iid, a), ann in zip(every, [*OUTLINED, *PLAIN], strict=True):
        assert iid == ann["image_id"] and a == _full_check(ann)
        assert a.to_json() == _full_check(ann).to_json()
    for bad in BAD_OUTLINES:  # one outline the full check must see: no column path
        assert coco._all_plain([*OUTLINED, bad, *PLAIN], IMAGES, CLASS_OF) is None


def test_all_plain_columns_equal_the_full_check_in_order() -> None:
    every = coco._all_plain(PLAIN, IMAGES, CLASS_OF)
    assert every is not None and len(every) == len(PLAIN)
    for (iid, a), ann in zip(every, PLAIN, strict=True):
        assert iid == ann["image_id"]
        assert a == _full_check(ann)
        assert a.to_json() == _full_check(ann).to_json()
    assert coco._all_plain([], IMAGES, CLASS_OF) == []


@pytest.mark.parametrize("other", range(len(OTHER)))
def test_one_annotation_not_plain_leaves_the_columns_to_the_other_paths(other: int) -> None:
    mixed = [*PLAIN[:3], OTHER[other], *PLAIN[3:]]
    assert coco._all_plain(mixed, IMAGES, CLASS_OF) is None
    huge = {"id": 33, "image_id": 1, "category_id": 3, "bbox": [10**400, 1, 2, 2]}
    assert coco._all_plain([*PLAIN, huge], IMAGES, CLASS_OF) is None


def test_a_number_too_large_for_a_float_leaves_all_to_the_full_check() -> None:
    huge = {"id": 33, "image_id": 1, "category_id": 3, "bbox": [10**400, 1, 2, 2]}
    assert coco._plain_boxes([*PLAIN, huge], IMAGES, CLASS_OF) == {}


def test_everything_else_is_left_to_the_full_check() -> None:
    assert coco._plain_boxes(OTHER, IMAGES, CLASS_OF) == {}
    mixed = [*OTHER, *PLAIN]
    fast = coco._plain_boxes(mixed, IMAGES, CLASS_OF)
    assert sorted(fast) == list(range(len(OTHER), len(mixed)))


def _images_one_by_one(
    root: Path, f: Any, raw: list[Any]
) -> dict[int, tuple[str, int, int, Path]] | DatasetFormatError:
    """The per-image path of :meth:`coco._Reader.read_file`: its entries, or its first error."""
    reader = coco._Reader(CLASS_OF, None, Problems(False))
    images: dict[int, tuple[str, int, int, Path]] = {}
    for i, img in enumerate(raw):
        try:
            iid, entry = reader._image(root, f, img, f"images[{i}]", images)
        except DatasetFormatError as exc:
            return exc
        images[iid] = entry
    return images


def test_all_images_at_once_equal_image_by_image(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for name in ("a.png", "b c.png", "é.png", "dup.png"):
        _png(root / "images" / name, 0)
    _png(root / "beside.png", 1)  # in the dataset folder itself, a later candidate
    (root / "annotations").mkdir()
    (root / "images" / "dup.png").with_name("folder.png").mkdir()  # a folder, not an image
    f = coco._File(root / "annotations" / "instances.json", None, None)
    good = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H},
        {"id": 7, "file_name": "b c.png", "width": 3, "height": 5, "extra": [1]},
        {"id": 3, "file_name": "é.png", "width": W, "height": H},
        {"id": 4, "file_name": "beside.png", "width": W, "height": H},
        {"id": 5, "file_name": "missing.png", "width": W, "height": H},
        {"id": 6, "file_name": "folder.png", "width": W, "height": H},
    ]
    fast = coco._all_images(root, f, good, {})
    assert fast is not None and list(fast) == [1, 7, 3, 4, 5, 6]
    assert fast == _images_one_by_one(root, f, good)
    assert fast[4][3] == root / "beside.png" and fast[1][3] == root / "images" / "a.png"
    others: list[dict[str, Any]] = [  # each needs the per-image path (a fix, or a problem)
        {"id": 1, "file_name": "sub/a.png", "width": W, "height": H},
        {"id": 1, "file_name": "..\\a.png", "width": W, "height": H},
        {"id": 1, "file_name": "C:a.png", "width": W, "height": H},
        {"id": 1, "file_name": " a.png", "width": W, "height": H},
        {"id": 1, "file_name": "..", "width": W, "height": H},
        {"id": 1, "file_name": "", "width": W, "height": H},
        {"id": 1.0, "file_name": "a.png", "width": W, "height": H},
        {"id": True, "file_name": "a.png", "width": W, "height": H},
        {"id": 1, "file_name": "a.png", "width": 64.0, "height": H},
        {"id": 1, "file_name": "a.png", "width": 0, "height": H},
        {"id": 1, "file_name": "a.png", "width": W, "height": -1},
        {"id": 1, "file_name": "a.png", "width": W},
        {"id": 1, "file_name": 5, "width": W, "height": H},
        {"id": 7, "file_name": "a.png", "width": W, "height": H},  # the id of good[1] again
    ]
    for other in others:
        mixed = [*good[1:3], other]
        assert coco._all_images(root, f, mixed, {}) is None, other
    assert coco._all_images(root, f, [*good[1:], "not an object"], {}) is None
    assert coco._all_images(root, f, [], {}) is None  # nothing to check at once


def test_sources_checked_at_once_only_when_each_would_pass(tmp_path: Path) -> None:
    root = (tmp_path / "ds").resolve()
    outside = tmp_path / "elsewhere"
    for i in range(3):
        _png(root / "images" / f"{i}.png", i)
    _png(outside / "x.png", 9)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    sources = [SourceImage(f"{i}.png", root / "images" / f"{i}.png", None, ()) for i in range(3)]
    opened = {os.fspath(s.path) for s in sources}

    def ok(srcs: list[SourceImage], seen: set[str] = opened) -> bool:
        parents: dict[str, str] = {}
        at_once = dataset_records._all_sources_ok(root, srcs, seen, parents)
        one_by_one = []
        for src in srcs:  # the per-image check, as inspect_images makes it
            try:
                dataset_records._check_source(root, src, {}, {}, seen)
                one_by_one.append(src.file_name)
            except DatasetFormatError:
                one_by_one.append("")
        if at_once:  # at once only when each passes (and no name repeats)
            assert all(one_by_one) and len(set(one_by_one)) == len(srcs)
        return at_once

    assert ok(sources)
    escaped = SourceImage("x.png", root / "linked" / "x.png", None, ())
    assert not ok([*sources, escaped], {*opened, os.fspath(escaped.path)})  # folder outside
    assert ok(sources, set())  # not opened by the helper: lstat shows no link
    link = SourceImage("l.png", root / "images" / "l.png", None, ())
    link.path.symlink_to(root / "images" / "0.png")
    assert not ok([*sources, link])  # a link, even to a file inside
    twice = SourceImage("0.png", root / "images" / "1.png", None, ())
    assert not ok([*sources, twice])  # a name twice
    bad = SourceImage("\udcff.png", root / "images" / "\udcff.png", None, ())
    assert not ok([*sources, bad], {*opened, os.fspath(bad.path)})  # not UTF-8
    assert not ok([])


def _coco_source(root: Path, anns: list[Any]) -> Path:
    for i, name in enumerate(("a.png", "b.png")):
        _png(root / "images" / name, i)
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": anns,
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}],
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(doc))  # NaN and Infinity are written as JSON allows them
    return path


def test_lenient_read_lists_every_problem_in_file_order(tmp_path: Path) -> None:
    anns = [x for pair in zip(PLAIN, OTHER, strict=False) for x in pair] + OTHER[len(PLAIN) :]
    _coco_source(tmp_path, anns)
    scanned = coco.read(tmp_path, problems=Problems(lenient=True))
    valid_other = 2  # image_id 1.0 and an empty attributes object are fine
    assert sum(len(img.boxes) for img in scanned.images) == len(PLAIN) + valid_other
    assert len(scanned.problems) == len(OTHER) - valid_other
    ids = [int(m.group(1)) for p in scanned.problems if (m := re.search(r"annotation (\d+)", p))]
    assert len(ids) == len(OTHER) - valid_other - 1  # the list one has no id
    assert ids == sorted(ids)  # in the order of the file
    by_image = {img.file_name: img.boxes for img in scanned.images}
    assert by_image["a.png"][0] == _full_check(PLAIN[0])  # the file's order, per image
    assert by_image["b.png"][0] == _full_check(PLAIN[2])


def test_strict_read_raises_the_first_problem_even_after_plain_boxes(tmp_path: Path) -> None:
    anns = [*PLAIN, OTHER[2], *PLAIN[:2], OTHER[0]]
    anns = [dict(a, id=i + 1) for i, a in enumerate(anns)]
    _coco_source(tmp_path, anns)
    with pytest.raises(DatasetFormatError, match=r"annotation 9 .*lies outside the 64x48 image"):
        coco.read(tmp_path)


# ---- inspect_images in runs -----------------------------------------------------------------


def test_inspect_in_runs_keeps_order_progress_and_problem_order(tmp_path: Path) -> None:
    sources = []
    broken = {7, 70, 130}
    for i in range(150):
        p = tmp_path / f"img{i:03d}.png"
        if i in broken:
            p.write_bytes(b"not an image")
        else:
            _png(p, i)
        sources.append(SourceImage(p.name, p, None, (), (W, H)))
    seen: list[tuple[str, int, int]] = []
    report = Problems(lenient=True)
    scanned = inspect_images(
        tmp_path.resolve(),
        "test",
        ["x"],
        sources,
        False,
        lambda stage, done, total: seen.append((stage, done, total)),
        workers=3,
        problems=report,
    )
    assert [img.file_name for img in scanned.images] == [
        s.file_name for i, s in enumerate(sources) if i not in broken
    ]
    assert seen == [("validate", i, 150) for i in range(1, 151)]
    assert [m.split("/")[-1].split()[0] for m in scanned.problems] == [
        f"img{i:03d}.png" for i in sorted(broken)
    ]
    assert scanned.images[0].sha256 == sha256_bytes(sources[0].path.read_bytes())
    with pytest.raises(DatasetFormatError, match="img007.png"):
        inspect_images(tmp_path.resolve(), "test", ["x"], sources, False, workers=3)


# ---- blobs: one read per file, runs of files, failures ---------------------------------------


def test_duplicate_known_shas_are_copied_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = _png(src / "one.png", 1)
    sha = sha256_bytes(data)
    other = _png(src / "two.png", 2)
    store = BlobStore(tmp_path / "blobs")
    gone = src / "never-read.png"  # shares the sha256 of one.png: not opened
    results = store.ingest_files(
        [src / "one.png", gone, src / "two.png", gone], expected=[sha, sha, None, sha]
    )
    assert [r.created for r in results] == [True, False, True, False]
    assert [r.sha256 for r in results] == [sha, sha, sha256_bytes(other), sha]
    assert {r.size for r in results[::3]} == {len(data)}
    assert sorted(store.iter_shas()) == sorted({sha, sha256_bytes(other)})
    assert _temp_files(store.root) == []


def test_large_file_is_copied_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs_mod, "_ONE_READ", 10)
    monkeypatch.setattr(blobs_mod, "CHUNK", 7)
    src = tmp_path / "big.bin"
    data = bytes(range(256)) * 3
    src.write_bytes(data)
    store = BlobStore(tmp_path / "blobs")
    (stored,) = store.ingest_files([src], expected=[sha256_bytes(data)])
    assert stored.created and stored.size == len(data)
    assert store.path(stored.sha256).read_bytes() == data


def test_failure_while_renaming_leaves_only_reported_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = [f"blob {i}".encode() for i in range(30)]
    paths = []
    for i, c in enumerate(contents):
        p = tmp_path / "src" / f"{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(c)
        paths.append(p)
    store = BlobStore(tmp_path / "blobs")
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(a: Any, b: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 12:
            raise OSError(28, "No space left on device")
        real_replace(a, b)

    monkeypatch.setattr(blobs_mod.os, "replace", flaky_replace)
    created: list[str] = []
    with pytest.raises(OSError, match="No space"):
        store.ingest_files(paths, expected=[sha256_bytes(c) for c in contents], created=created)
    monkeypatch.setattr(blobs_mod.os, "replace", real_replace)
    assert sorted(created) == sorted(store.iter_shas())  # every blob in place is reported
    assert 0 < len(created) < 30
    assert _temp_files(store.root) == []
    for sha in created:
        store.delete(sha)
    assert [p for p in store.root.rglob("*")] == []  # no temp file, no empty shard folder


def test_failure_while_copying_leaves_nothing(tmp_path: Path) -> None:
    paths = []
    for i in range(40):
        p = tmp_path / "src" / f"{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(f"content {i}".encode())
        paths.append(p)
    paths[25].unlink()
    store = BlobStore(tmp_path / "blobs")
    created: list[str] = []
    expected = [sha256_bytes(f"content {i}".encode()) for i in range(40)]
    with pytest.raises(FileNotFoundError):
        store.ingest_files(paths, expected=expected, workers=3, created=created)
    assert created == []
    assert [p for p in store.root.rglob("*")] == []


# ---- the whole import --------------------------------------------------------------------------


def _coco_with_duplicates(root: Path) -> Path:
    data = _png(root / "images" / "a.png", 1)
    (root / "images" / "copy-of-a.png").write_bytes(data)
    _png(root / "images" / "b.png", 2)
    doc = {
        "images": [
            {"id": i, "file_name": n, "width": W, "height": H}
            for i, n in enumerate(("a.png", "copy-of-a.png", "b.png"), start=1)
        ],
        "annotations": [
            {"id": i, "image_id": 1 + i % 3, "category_id": 5, "bbox": [i, 2, 10, 10]}
            for i in range(1, 10)
        ],
        "categories": [{"id": 5, "name": "thing"}],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_duplicate_images_are_stored_once(ws: Workspace, tmp_path: Path) -> None:
    src = _coco_with_duplicates(tmp_path / "src")
    summary = import_dataset(ws, src, "dups", "coco")
    assert summary["images"] == 3 and summary["annotations"] == 9
    files = [p for p in ws.blobs_dir.rglob("*") if p.is_file()]
    assert len(files) == 2
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Blob)) == 2
        items = s.scalars(select(DatasetItem).order_by(DatasetItem.file_name)).all()
        assert [i.file_name for i in items] == ["a.png", "b.png", "copy-of-a.png"]
        assert items[0].image_sha256 == items[2].image_sha256
        assert all(len(i.boxes) == 3 and len(i.boxes[0]) == 5 for i in items)
        assert (items[0].width, items[0].height) == (W, H)


def test_database_failure_after_the_blobs_leaves_nothing(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _coco_with_duplicates(tmp_path / "src")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "disk I/O error")

    monkeypatch.setattr(dataset_import, "_create_rows", fail)
    with pytest.raises(OSError, match="disk I/O"):
        import_dataset(ws, src, "dups", "coco")
    with ws.session() as s:
        for model in (Dataset, DatasetVersion, DatasetItem, Blob):
            assert s.scalar(select(func.count()).select_from(model)) == 0
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


def _coco_many(root: Path, n: int, declared: dict[int, tuple[int, int]] | None = None) -> Path:
    declared = declared or {}
    images = []
    for i in range(n):
        _png(root / "images" / f"i{i:03d}.png", 100 + i)
        w, h = declared.get(i, (W, H))
        images.append({"id": i + 1, "file_name": f"i{i:03d}.png", "width": w, "height": h})
    doc = {
        "images": images,
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 5, "bbox": [1, 2, 10, 10]}
            for i in range(n)
        ],
        "categories": [{"id": 5, "name": "thing"}],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


@pytest.mark.parametrize("slow", [False, True])
def test_import_is_the_same_read_in_this_thread_or_by_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    """Files going slowly fan the reads (and the blobs they stage) out to threads: the same
    stored dataset, every blob whole, no temp file left."""
    import threading

    from desktop_app.core import blobs, pacing

    monkeypatch.setattr(pacing, "PACE_WINDOW", 4)
    monkeypatch.setattr(pacing, "SLOW_FILE_S", 0.0 if slow else 3600.0)
    threads: set[str] = set()
    add = blobs.BlobBatch.add

    def recording(self: blobs.BlobBatch, sha: str, data: bytes) -> None:
        threads.add(threading.current_thread().name)
        add(self, sha, data)

    monkeypatch.setattr(blobs.BlobBatch, "add", recording)
    src = _coco_many(tmp_path / "src", 120)
    ws = Workspace.open(tmp_path / "ws", create=True)
    summary = import_dataset(ws, src, "many", "coco")
    assert summary["images"] == 120 and summary["annotations"] == 120
    assert (len(threads) > 1) == slow  # threads only once the files went slowly
    with ws.session() as s:
        shas = set(s.scalars(select(Blob.sha256)))
    assert len(shas) == 120 and all(ws.blobs.verify(sha) for sha in shas)
    assert _temp_files(ws.blobs_dir) == []
    other = Workspace.open(tmp_path / "ws2", create=True)
    monkeypatch.setattr(pacing, "SLOW_FILE_S", 3600.0)
    again = import_dataset(other, src, "many", "coco")
    assert again["content_hash"] == summary["content_hash"]


def test_lenient_import_drops_what_it_staged_for_a_skipped_image(
    ws: Workspace, tmp_path: Path
) -> None:
    """An image read and staged, then skipped for a size its annotation file misstates,
    leaves no blob and no temp file."""
    src = _coco_many(tmp_path / "src", 6, declared={2: (W + 1, H)})
    summary = import_dataset(ws, src, "some", "coco", lenient=True)
    assert summary["images"] == 5 and summary["problem_count"] == 1
    assert "declares i002.png as 65x48 but the image is 64x48" in summary["problems"][0]
    skipped = sha256_bytes((src / "images" / "i002.png").read_bytes())
    assert not ws.blobs.exists(skipped)
    assert _temp_files(ws.blobs_dir) == []
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Blob)) == 5


# ---- YOLO: label lines checked at once --------------------------------------------------------

YOLO_GOOD = [
    "0 0.5 0.5 0.25 0.125",
    "2 1 1 1 1",
    "1.0 0.0 -0.0 1e-5 0.3333333333333333",
    "0 .5 .5 .2 .2",
    "2 1E-3 0.999999 0.000001 1_0e-1",
]
YOLO_BAD = [
    "2.5 0.5 0.5 0.1 0.1",  # class not whole
    "3 0.5 0.5 0.1 0.1",  # class out of range
    "-1 0.5 0.5 0.1 0.1",
    "inf 0.5 0.5 0.1 0.1",
    "0 nan 0.5 0.1 0.1",
    "0 0.5 1.01 0.1 0.1",
    "0 0.5 0.5 0 0.1",  # no width
    "0 0.5 0.5 0.1",
    "0 0.5 0.5 0.1 0.1 0.2 0.3",
    "0 a 0.5 0.1 0.1",
]


def test_yolo_lines_at_once_equal_the_line_parser() -> None:
    from desktop_app.core import dataset_yolo

    parser = dataset_yolo._LineParser("detect", 3, None)
    files = [[(n, line.split()) for n, line in enumerate(YOLO_GOOD[:3], 1)], None, []]
    files.append([(1, YOLO_GOOD[3].split()), (2, YOLO_GOOD[4].split())])
    fast = dataset_yolo._plain_lines(files, 3)
    assert fast is not None and len(fast) == len(files)
    for got, numbered in zip(fast, files, strict=True):
        want = tuple(parser.parse("x", parts) for _, parts in numbered or ())
        assert got == want
        assert [a.to_json() for a in got] == [a.to_json() for a in want]
        assert all(type(a.cls) is int for a in got)
    assert dataset_yolo._plain_lines([None, []], 3) == [(), ()]
    for bad in YOLO_BAD:
        with_bad = [*files, [(1, YOLO_GOOD[0].split()), (2, bad.split())]]
        assert dataset_yolo._plain_lines(with_bad, 3) is None, bad
        with pytest.raises(DatasetFormatError):
            parser.parse("x", bad.split())


# ---- VOC: every box checked at once ------------------------------------------------------


def test_voc_boxes_checked_at_once_equal_object_by_object() -> None:
    from desktop_app.core.formats import voc

    rng = np.random.default_rng(11)
    class_of = {"cat": 0, "dog": 1, "bird": 2}
    parsed = []
    for k in range(300):
        w, h = int(rng.integers(1, 2000)), int(rng.integers(1, 2000))
        objects = []
        for _ in range(int(rng.integers(0, 6))):
            x0, y0 = rng.uniform(-1.0, w - 0.5), rng.uniform(-1.0, h - 0.5)
            x1 = min(x0 + rng.uniform(0.01, w), w + 1.0)  # may stick out by up to a pixel
            y1 = min(y0 + rng.uniform(0.01, h), h + 1.0)
            corners = (float(x0), float(y0), float(x1), float(y1))
            if k % 7 == 0:  # whole pixels, as most tools write them
                corners = tuple(float(round(v)) for v in corners)  # type: ignore[assignment]
                if corners[2] <= corners[0] or corners[3] <= corners[1]:
                    continue
            flags = (bool(rng.integers(0, 2)), bool(rng.integers(0, 4) == 0))
            objects.append((str(rng.choice(list(class_of))), corners, *flags))
        parsed.append((Path(f"{k}.xml"), f"{k}.jpg", Path(f"{k}.jpg"), (w, h), objects))
    fast = voc._all_valid(parsed, class_of)
    assert fast is not None
    report = Problems()
    for (xml_path, _, _, size, objects), anns in zip(parsed, fast, strict=True):
        slow = voc._annotations(xml_path, size, objects, class_of, Path("."), report)
        assert anns == slow
        assert [a.to_json() for a in anns] == [a.to_json() for a in slow]
    assert report.messages == []
    # one object the per-object path must name: no fast result at all
    bad_boxes = [(5.0, 5.0, 5.0, 9.0), (-3.0, 0.0, 4.0, 4.0), (0.0, 0.0, float("nan"), 4.0)]
    for bad in (
        *(("cat", box, False, False) for box in bad_boxes),
        ("horse", (1.0, 1.0, 4.0, 4.0), False, False),
        ("cat", DatasetFormatError("x.xml: object 1 xmin is not a number"), False, False),
    ):
        mixed = [*parsed[:3], (Path("x.xml"), "x.jpg", Path("x.jpg"), (64, 48), [bad])]
        assert voc._all_valid(mixed, class_of) is None
    assert voc._all_valid([], class_of) == []
