"""The faster import paths give exactly what the plain ones give.

* the content hash from boxes encoded once (:func:`content_hash_encoded`) equals
  :func:`content_hash` of the decoded items, and the stored boxes read back as the records;
* :meth:`Annotation.plain` equals the dataclass constructor;
* ``load_json`` gives what ``json`` gives, with or without orjson, for every odd input;
* the import pauses the garbage collector and always restores it;
* a failure at any step after validation (the sync of the staged blobs, their renames, the
  rows) leaves no row, no blob under its final name and no temp file.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from desktop_app.core import blobs as blobs_mod
from desktop_app.core import dataset_import, formats
from desktop_app.core.dataset_records import Annotation
from desktop_app.core.dataset_split import (
    content_hash,
    content_hash_encoded,
    encode_boxes,
    encode_boxes_all,
)
from desktop_app.core.datasets import import_dataset
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats import coco, createml
from desktop_app.core.formats.createml import load_json
from desktop_app.core.models import Blob, Dataset, DatasetItem, DatasetVersion
from desktop_app.core.workspace import Workspace

W, H = 64, 48
NAMES = ["person", "car", "crème brûlée"]


# ---- the content hash of encoded boxes ---------------------------------------------------------

ROWS: list[tuple[str, str, list[list[Any]], str, str]] = [
    ("b/zeta.png", "b" * 64, [[0, 0.5, 0.5, 0.25, 0.125]], "train", "labelled"),
    ("a/été.jpg", "a" * 64, [], "val", "labelled"),  # background, non-ASCII name
    ("c.png", "c" * 64, [], "train", "unlabelled"),
    ("d.png", "d" * 64, [[1, 0.1, 0.2, 0.3, 0.4]], "test", "needs_review"),
    (
        "e.png",
        "e" * 64,
        [
            [2, 1 / 3, 2 / 3, 0.1, 1e-17, {"polygons": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]}],
            [0, 0.5, 0.5, 1.0, 1.0, {"score": 0.87, "iscrowd": True, "rle": "52203"}],
            [1, 0.5, 0.5, 0.2, 0.2, {"keypoints": [0.1, 0.2, 2.0, 0.0, 0.0, 0.0]}],
        ],
        "train",
        "labelled",
    ),
]


def _encoded(rows: list[tuple[str, str, list[list[Any]], str, str]]) -> list[Any]:
    return [(fn, sha, encode_boxes(boxes), split, st) for fn, sha, boxes, split, st in rows]


def test_encoded_hash_equals_the_plain_hash_in_any_order() -> None:
    expected = content_hash(NAMES, ROWS)
    assert content_hash_encoded(NAMES, _encoded(ROWS)) == expected
    assert content_hash_encoded(NAMES, _encoded(ROWS[::-1])) == expected
    # the hash still tells the contents apart: a status, a split, a class name
    changed = [(*ROWS[0][:4], "unlabelled"), *ROWS[1:]]
    assert content_hash_encoded(NAMES, _encoded(changed)) != expected
    moved = [(*ROWS[0][:3], "val", "labelled"), *ROWS[1:]]
    assert content_hash_encoded(NAMES, _encoded(moved)) == content_hash(NAMES, moved) != expected
    assert content_hash_encoded(NAMES[:2], _encoded(ROWS)) != expected


def test_encoded_hash_of_no_items_and_of_repeated_names() -> None:
    assert content_hash_encoded(NAMES, []) == content_hash(NAMES, [])
    twice = [ROWS[0], (ROWS[0][0], "f" * 64, [], "val", "labelled"), *ROWS[1:]]
    assert content_hash_encoded(NAMES, _encoded(twice)) == content_hash(NAMES, twice)
    assert content_hash_encoded(NAMES, _encoded(twice[::-1])) == content_hash(NAMES, twice)


def test_encoded_boxes_are_the_json_of_the_boxes() -> None:
    for _, _, boxes, _, _ in ROWS:
        text = encode_boxes(boxes)
        assert json.loads(text) == boxes
        assert text.isascii() and ", " not in text
    tuples = [(0, 0.5, 0.5, 0.25, 0.125)]  # tuples encode as lists
    assert encode_boxes(tuples) == encode_boxes([list(t) for t in tuples])


def test_encoded_boxes_are_byte_identical_to_the_canonical_encoder() -> None:
    from desktop_app.core.dataset_split import _CANONICAL

    rng = np.random.default_rng(3)
    odd = [
        [0, 1e-05, 0.1 + 0.2, 1.0, 5e-324],  # exponents, long reprs, subnormals
        [7, 1e16, 123456789.0, 0.5, 2.0**-30],
        [1, float("inf"), 0.5, 0.5, 0.5],  # not finite: json's spelling, not repr's
        [2, float("nan"), 0.5, 0.5, 0.5],
        [True, 0.5, 0.5, 0.5, 0.5],  # a bool is not an int here
        [3, 1, 0.5, 0.5, 0.5],  # an int coordinate
        [4, 0.5, 0.5, 0.5, 0.5, {"iscrowd": True, "polygons": [[0.1, 0.2]]}],
        [2**70, 0.25, 0.25, 0.5, 0.5],
    ]
    scales = np.exp(rng.uniform(-14, 14, (5000, 1)))  # 1e-6 .. 1e6: both spellings
    random_rows = [
        [int(c), *map(float, v)]
        for c, v in zip(rng.integers(0, 80, 5000), rng.random((5000, 4)) * scales, strict=True)
    ]
    for boxes in (odd, random_rows, [], *([row] for row in odd)):
        assert encode_boxes(boxes) == _CANONICAL.encode(boxes)
    outlined = [
        [*row, {"polygons": [list(map(float, rng.random(8) * scale)) for _ in range(k % 3 + 1)]}]
        for k, (row, scale) in enumerate(zip(random_rows[:300], scales[:300, 0], strict=True))
    ]
    odd_outlines = [
        [0, 0.5, 0.5, 0.5, 0.5, {"polygons": [[0.1, 0.2, 1e-05, 0.3, 0.4, 0.5]]}],
        [0, 0.5, 0.5, 0.5, 0.5, {"polygons": [[0.1, float("nan"), 0.2, 0.3, 0.4, 0.5]]}],
        [0, 0.5, 0.5, 0.5, 0.5, {"polygons": [["x", 0.2, 0.1, 0.3, 0.4, 0.5]]}],
        [0, 0.5, 0.5, 0.5, 0.5, {"polygons": [[True, 0.2, 0.1, 0.3, 0.4, 0.5]]}],
        [0, 0.5, 0.5, 0.5, 0.5, {"polygons": [[0.1, 0.2, 0.1, 0.3]], "iscrowd": True}],
        [0, 0.5, 0.5, 0.5, 0.5, {"keypoints": [0.1, 0.2, 2.0]}],
    ]
    for boxes in (outlined, odd_outlines, *([row] for row in odd_outlines)):
        assert encode_boxes(boxes) == _CANONICAL.encode(boxes)
    for k in range(0, 300, 7):
        rows = outlined[k : k + 7] + random_rows[k : k + 3]
        assert encode_boxes(rows) == _CANONICAL.encode(rows)
    for k in range(0, 5000, 10):  # item by item, as an import encodes them
        rows = random_rows[k : k + 10]
        assert encode_boxes(rows) == _CANONICAL.encode(rows)
        assert encode_boxes([tuple(r) for r in rows]) == _CANONICAL.encode(rows)
    # all items at once: the same texts, whether or not one item needs json's spelling
    plain = [[[int(c), 0.25, 0.5, 0.125, 0.0625]] * (int(c) % 4) for c in range(40)]
    for items in (
        plain,
        [*plain, [random_rows[0]]],
        [random_rows[k : k + 10] for k in range(0, 5000, 10)],
        [*plain, *([row] for row in odd)],
        [*plain, outlined[:3], odd_outlines],
        [],
        [[], []],
    ):
        assert encode_boxes_all(items) == [_CANONICAL.encode(boxes) for boxes in items]


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


def _coco(root: Path, n: int) -> Path:
    images, anns = [], []
    for i in range(n):
        _png(root / "images" / f"im{i}.png", i)
        images.append({"id": i + 1, "file_name": f"im{i}.png", "width": W, "height": H})
        for j in range(i % 3):  # 0, 1 or 2 boxes
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 5 if j else 2,
                    "bbox": [1.25 * j, 2.5, 10.1, 7.3 + i],
                    "iscrowd": int(i == 4),
                }
            )
    anns.append(  # one annotation with a polygon goes through the full check
        {
            "id": len(anns) + 1,
            "image_id": 1,
            "category_id": 2,
            "bbox": [0, 0, 10, 10],
            "segmentation": [[0, 0, 10, 0, 10, 10]],
        }
    )
    doc = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 2, "name": "car"}, {"id": 5, "name": "été"}],
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def test_import_stores_the_records_and_a_hash_of_what_is_stored(
    ws: Workspace, tmp_path: Path
) -> None:
    src = _coco(tmp_path / "src", 12)
    summary = import_dataset(ws, src, "fast", "coco", val_fraction=0.25, seed=3)
    with ws.session() as s:
        version = s.scalar(select(DatasetVersion))
        assert version is not None and version.content_hash == summary["content_hash"]
        rows = s.execute(
            select(
                DatasetItem.file_name,
                DatasetItem.image_sha256,
                DatasetItem.boxes,
                DatasetItem.split,
                DatasetItem.label_status,
            ).where(DatasetItem.version_id == version.id)
        ).all()
    assert len(rows) == 12 and summary["annotations"] == sum(len(r[2]) for r in rows) == 13
    assert content_hash(summary["classes"], [tuple(r) for r in rows]) == summary["content_hash"]
    by_name = {r[0]: r[2] for r in rows}
    first = [Annotation.from_json(b) for b in by_name["im0.png"]]
    assert len(first) == 1 and first[0].polygons  # the full check's extras are kept
    crowd = [Annotation.from_json(b) for b in by_name["im4.png"]]
    assert [a.iscrowd for a in crowd] == [True]
    plain = by_name["im2.png"][1]
    want = Annotation.from_xyxy(1, 1.25 / W, 2.5 / H, (1.25 + 10.1) / W, (2.5 + 9.3) / H)
    assert plain == pytest.approx(want.to_json(), abs=1e-12)
    assert ws.check().ok


# ---- Annotation.plain ------------------------------------------------------------------------


def test_from_json_of_a_plain_row_equals_the_constructor() -> None:
    for row in ([2, 0.5, 0.25, 0.125, 1 / 3], [1.0, 1, 0, 0.5, 0.5], (0, 0.1, 0.2, 0.3, 0.4)):
        fast = Annotation.from_json(row)
        slow = Annotation(int(row[0]), *(float(v) for v in row[1:5]))
        assert fast == slow and repr(fast) == repr(slow) and hash(fast) == hash(slow)
        assert type(fast.cls) is int and all(type(v) is float for v in row_values(fast))
    extra = Annotation.from_json([0, 0.5, 0.5, 0.2, 0.2, {"iscrowd": True}])
    assert extra.iscrowd and extra == Annotation(0, 0.5, 0.5, 0.2, 0.2, iscrowd=True)


def row_values(a: Annotation) -> tuple[float, ...]:
    return (a.cx, a.cy, a.w, a.h)


def test_plain_annotation_equals_the_constructor() -> None:
    fast = Annotation.plain(2, 0.5, 0.25, 0.125, 1 / 3)
    slow = Annotation(2, 0.5, 0.25, 0.125, 1 / 3)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert fast.to_json() == slow.to_json() == [2, 0.5, 0.25, 0.125, 1 / 3]
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    assert copy.deepcopy(fast) == slow and copy.copy(fast) == slow
    assert (fast.polygons, fast.rle, fast.iscrowd, fast.score) == ((), None, False, None)
    outlined = Annotation.plain(1, 0.5, 0.5, 0.2, 0.2, ((0.4, 0.4, 0.6, 0.4, 0.5, 0.6),), True)
    assert outlined == Annotation(
        1, 0.5, 0.5, 0.2, 0.2, polygons=((0.4, 0.4, 0.6, 0.4, 0.5, 0.6),), iscrowd=True
    )
    assert dataclasses.replace(fast, iscrowd=True) == Annotation(
        2, 0.5, 0.25, 0.125, 1 / 3, iscrowd=True
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.cx = 0.1  # type: ignore[misc]


# ---- load_json: orjson where it gives what json gives ------------------------------------------

ODD = [
    b'{"id": 18446744073709551616, "n": -9223372036854775809}',  # beyond 64 bits: exact ints
    b'{"a": 0.1234567890123456789012, "b": 12345678901234567890}',
    b"[NaN, Infinity, -Infinity, 1E400]",  # json accepts these; orjson refuses them
    b'\xef\xbb\xbf{"bom": true}',
    '{"utf16": "été"}'.encode("utf-16"),
    b'{"dup": 1, "dup": 2, "lone": "\\ud800", "x": [1.5, -0, 1e-400, 9223372036854775807]}',
    b'{"images": [{"id": 1, "file_name": "\\u00e9t\\u00e9.png"}], "annotations": []}',
]


@pytest.fixture(params=[True, False], ids=["orjson", "json-only"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not request.param:
        monkeypatch.setattr(createml, "orjson", None)
    elif createml.orjson is None:
        pytest.skip("orjson is not installed (the optional 'fast' extra)")
    yield


@pytest.mark.usefixtures("parser")
@pytest.mark.parametrize("raw", ODD)
def test_load_json_gives_what_json_gives(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(raw)
    got, want = load_json(path), json.loads(raw)
    assert repr(got) == repr(want)  # repr: NaN != NaN, and ints stay ints


@pytest.mark.usefixtures("parser")
def test_load_json_reads_numbers_exactly_as_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    values = [float(v) for v in rng.uniform(-1e4, 1e4, 500)]
    values += [float(v) for v in rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500)]
    texts = [repr(v) for v in values] + [f"{v:.17g}" for v in values] + [f"{v:.6e}" for v in values]
    texts += ["5e-324", "2.2250738585072014e-308", "1.7976931348623157e308", "0.1", "1E5"]
    texts += ["123456789012345678", "-123456789012345678", "0", "-0", "-0.0"]
    texts = [t for t in texts if not re.search("[0-9]{19}", t)]  # not 0.000123456789...
    assert len(texts) > 1000
    ints = [str(2**63 - 1), str(-(2**63)), str(2**64 - 1), str(2**64), str(-(2**63) - 1)]
    for i, numbers in enumerate((texts, ints)):
        raw = ("[" + ",".join(numbers) + "]").encode()
        # the first file has no run of 19 digits, so orjson (when installed) reads it
        assert (createml._LONG_NUMBER in raw.translate(createml._DIGITS_ONLY)) == bool(i)
        path = tmp_path / f"numbers{i}.json"
        path.write_bytes(raw)
        got, want = load_json(path), json.loads(raw)
        assert [(type(v), repr(v)) for v in got] == [(type(v), repr(v)) for v in want]


@pytest.mark.usefixtures("parser")
def test_load_json_refuses_what_json_refuses_with_its_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"images": [1, 2,\n  ]}')
    with pytest.raises(DatasetFormatError, match=r"bad.json is not valid JSON .* line 2 column 3"):
        load_json(bad)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"name": "\xe9t\xe9"}')
    with pytest.raises(DatasetFormatError, match="is not UTF-8 text"):
        load_json(latin)
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(DatasetFormatError, match="nests JSON too deeply"):
        load_json(deep)


# ---- the garbage collector -------------------------------------------------------------------


def test_import_pauses_the_collector_and_restores_it(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return coco.read(*args, **kwargs)

    src = _coco(tmp_path / "src", 3)
    assert gc.isenabled()
    spied = dataclasses.replace(coco.FORMAT, read=spy)
    monkeypatch.setitem(formats.FORMATS, "coco", spied)
    import_dataset(ws, src, "one", "coco")
    assert gc.isenabled() and seen == [False]
    (tmp_path / "src" / "images" / "im1.png").write_bytes(b"not an image")
    with pytest.raises(DatasetFormatError):
        import_dataset(ws, src, "two", "coco")
    assert gc.isenabled() and seen == [False, False]
    gc.disable()
    try:
        with pytest.raises(DatasetFormatError):
            import_dataset(ws, src, "three", "coco")
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


# ---- what a failure leaves: nothing referenced, nothing half-written ----------------------------


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _temps(root: Path) -> list[Path]:
    return [p for p in _files(root) if p.name.startswith(".tmp-")]


def _counts(ws: Workspace) -> list[int]:
    with ws.session() as s:
        return [
            s.scalar(select(func.count()).select_from(m)) or 0
            for m in (Dataset, DatasetVersion, DatasetItem, Blob)
        ]


def test_a_strict_failure_in_the_last_images_leaves_nothing(ws: Workspace, tmp_path: Path) -> None:
    src = _coco(tmp_path / "src", 40)
    (tmp_path / "src" / "images" / "im33.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetFormatError, match="im33.png"):
        import_dataset(ws, src, "bad", "coco")
    assert _files(ws.blobs_dir) == [] and _counts(ws) == [0, 0, 0, 0]


def test_a_skipped_image_is_not_stored(ws: Workspace, tmp_path: Path) -> None:
    src = _coco(tmp_path / "src", 5)
    doc = json.loads(src.read_text())
    doc["images"][2]["width"] = W + 1  # found once the image is read: skipped, not stored
    src.write_text(json.dumps(doc))
    summary = import_dataset(ws, src, "lenient", "coco", lenient=True)
    assert summary["images"] == 4 and "declares im2.png as 65x48" in summary["problems"][0]
    assert len(_files(ws.blobs_dir)) == 4 and _temps(ws.blobs_dir) == []
    assert ws.check().ok


@pytest.mark.parametrize("step", ["sync", "rename", "sync after renames", "rows"])
def test_a_failure_at_any_later_step_leaves_nothing_referenced(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The sync of the temp files, the renames, the sync of the renames, the rows: a failure
    at each step leaves no row, no blob under its final name and no temp file (the blobs
    already renamed are removed again)."""
    src = _coco(tmp_path / "src", 20)
    calls = {"n": 0}

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, f"{step} failed")

    if step.startswith("sync"):
        syncfs = blobs_mod.syncfs
        nth = 2 if "after" in step else 1

        def sync_then_fail(folder: Path) -> bool:
            calls["n"] += 1
            if calls["n"] == nth:
                raise OSError(5, f"{step} failed")
            return syncfs(folder)

        monkeypatch.setattr(blobs_mod, "syncfs", sync_then_fail)
    elif step == "rename":
        commit = blobs_mod._Stager.commit

        def commit_then_fail(self: Any, st: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 7:
                raise OSError(5, "rename failed")
            return commit(self, st)

        monkeypatch.setattr(blobs_mod._Stager, "commit", commit_then_fail)
    else:
        monkeypatch.setattr(dataset_import, "_create_rows", fail)
    with pytest.raises(OSError, match=f"{step} failed"):
        import_dataset(ws, src, "broken", "coco")
    assert _files(ws.blobs_dir) == [] and _counts(ws) == [0, 0, 0, 0]
