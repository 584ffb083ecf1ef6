"""COCO JSON: boxes, polygons, RLE masks, keypoints, ``iscrowd``, any category ids.

Accepted layouts (one or more annotation files; the split comes from each file's name or
folder, e.g. ``instances_train2017.json`` or ``valid/_annotations.coco.json``)::

    annotations.json + images/*.jpg                  (or the images beside the JSON)
    annotations/instances_{train,val}.json + images/{train,val}/*.jpg  (or {train,val}2017/)
    {train,valid,test}/_annotations.coco.json + the images beside each

Category ids may have gaps; they map to contiguous class ids in id order, names kept.

* ``segmentation`` polygons are kept (normalised); an RLE mask (``{"size": [h, w],
  "counts": ...}``, usually on ``iscrowd: 1`` annotations) is kept as its compressed counts
  string (uncompressed counts lists are compressed), so COCO → COCO is lossless.
* ``keypoints`` (``x, y, v`` in pixels; ``categories[].keypoints`` names them) make the task
  ``pose`` with ``keypoint_shape`` ``(K, 3)``; keypoint names and ``skeleton`` are not kept
  (an export writes the names ``"0"``.. ``"K-1"`` and no skeleton).
* The task is ``pose`` when annotations carry keypoints, ``segment`` when every non-crowd
  annotation has a polygon, else ``detect`` (polygons still kept as extras).

Lenient reads skip a bad image entry or annotation and list it; a file that is not JSON, or
whose ``images``/``categories`` are not lists, is still refused.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from desktop_app.core.dataset_records import (
    Annotation,
    CopyImage,
    ExportDataset,
    ExportItem,
    ImageRuns,
    Problems,
    Progress,
    ScannedDataset,
    SourceImage,
    box_from_pixels,
    boxes_from_pixels,
    expect_images,
    finite,
    inspect_images,
    safe_relative,
    snap,
    snapped,
    split_of,
)
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities
from desktop_app.core.formats.createml import parse_json, read_json_bytes
from runtimes.fileio import atomic_write_text

_SPLIT_FOLDERS = ("train", "valid", "val", "validation", "test")


@dataclass(frozen=True)
class _File:
    path: Path
    split: str | None
    token: str | None  # the raw split word of the name, e.g. "train2017"


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".json"
    return bool(_candidates(path))


def read(
    path: Path, progress: Progress | None = None, problems: Problems | None = None
) -> ScannedDataset:
    """Validate COCO annotation file(s) and their images completely.

    Raises:
        DatasetFormatError: not a COCO dataset, or (strict) on the first problem, naming the
            file and what is wrong.
    """
    report = problems if problems is not None else Problems()
    found = _Found()  # the folders listed, the image lists read before their files' parse
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetFormatError(f"not a COCO dataset: {path} does not exist; check the path")
    path = path.resolve()
    if path.is_file():
        root = path.parent.parent if path.parent.name.lower() == "annotations" else path.parent
        files = [_File(path, *_split_token(path))]
        docs = [_load(root, files[0], found)]
    else:
        root = path
        files, docs = [], []
        for f in _candidates(path):
            doc = _load(root, f, found)
            if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
                files.append(f)
                docs.append(doc)
        if not files:
            raise DatasetFormatError(
                f"not a COCO dataset: {path} has no JSON file with images and annotations; check the path or --format"
            )
    categories = _merge_categories(files, docs)
    ids = sorted(categories)
    class_of = {cid: i for i, cid in enumerate(ids)}
    names = tuple(categories[cid] for cid in ids)
    reader = _Reader(class_of, _keypoint_count(files, docs), report, found)
    sources: list[SourceImage] = []
    for f, doc in zip(files, docs, strict=True):
        sources.extend(reader.read_file(root, f, doc))
    has_split = any(f.split for f in files)
    anns = [a for src in sources for a in src.annotations]
    if any(a.keypoints for a in anns):
        task = "pose"
    elif any(not a.iscrowd for a in anns) and all(a.polygons for a in anns if not a.iscrowd):
        task = "segment"
    else:
        task = "detect"
    shape = (reader.keypoints, 3) if task == "pose" and reader.keypoints else None
    return inspect_images(
        root,
        "coco",
        names,
        sources,
        has_split,
        progress,
        problems=report,
        task=task,
        keypoint_shape=shape,
    )


# ---- files -----------------------------------------------------------------------------


def _candidates(root: Path) -> list[_File]:
    found: list[Path] = []
    for folder in (root, root / "annotations", *(root / s for s in _SPLIT_FOLDERS)):
        if folder.is_dir():
            found.extend(
                p for p in sorted(folder.glob("*.json")) if p.is_file() and _is_visible(p.name)
            )
    return [_File(p, *_split_token(p)) for p in found]


def _is_visible(name: str) -> bool:
    return not name.startswith(".")


def _split_token(p: Path) -> tuple[str | None, str | None]:
    for part in reversed(p.stem.replace("-", "_").replace(".", "_").split("_")):
        split = split_of(part)
        if split is not None:
            return split, part
    split = split_of(p.parent.name)
    return (split, p.parent.name) if split else (None, None)


def _merge_categories(files: list[_File], docs: list[Any]) -> dict[int, str]:
    merged: dict[int, str] = {}
    origin: dict[int, Path] = {}
    for f, doc in zip(files, docs, strict=True):
        where = str(f.path)
        if not isinstance(doc, dict):
            raise DatasetFormatError(f"{where}: the top level must be an object; fix the file")
        cats = _list(doc, "categories", where)
        names: dict[str, int] = {}
        for i, cat in enumerate(cats):
            at = f"{where}: categories[{i}]"
            if not isinstance(cat, dict):
                raise DatasetFormatError(f"{at} is not an object; fix the file")
            cid = _int(cat.get("id"), f"{at}.id")
            name = cat.get("name")
            if not isinstance(name, str) or not name.strip():
                raise DatasetFormatError(f"{at} (id {cid}) has no name; name every category")
            if name in names and names[name] != cid:
                raise DatasetFormatError(
                    f"{at}: category name {name!r} is used by ids {names[name]} and {cid}; make names unique"
                )
            names[name] = cid
            if cid in merged and merged[cid] != name:
                raise DatasetFormatError(
                    f"{at}: category id {cid} is {name!r} here but {merged[cid]!r} in {origin[cid]}; make the files agree"
                )
            merged[cid] = name
            origin.setdefault(cid, f.path)
    if not merged:
        raise DatasetFormatError(
            f"{files[0].path} lists no categories; add a categories list with id and name"
        )
    return merged


@dataclass
class _Found:
    """What a read learns of the images before it checks them, kept for that check."""

    # folder → its file names, listed once per read
    listings: dict[Path, frozenset[str]] = field(default_factory=dict)
    # annotation file → its images list read on its own (see _early_images) and what
    # _all_images made of it, already handed to the helper
    early: dict[Path, tuple[list[Any], dict[int, tuple[str, int, int, Path]]]] = field(
        default_factory=dict
    )


def _load(root: Path, f: _File, found: _Found) -> Any:
    """Parse annotation file ``f``; one large enough for the import's helper process hands it
    the images it names first (see :func:`_early_images`), so the helper reads them while
    the rest of the file is parsed.

    Raises:
        DatasetFormatError: the file cannot be read or is not valid JSON.
    """
    raw = read_json_bytes(f.path)
    if expect_images(root, f.path):
        early = _early_images(raw, f.path)
        every = _all_images(root, f, early, found.listings) if early is not None else None
        if early is not None and every is not None:
            ImageRuns(root).extend([entry[3] for entry in every.values()])
            found.early[f.path] = (early, every)
    return parse_json(raw, f.path)


_IMAGES_KEY = re.compile(rb'"images"\s*:\s*\[')
_ANNOTATIONS_KEY = re.compile(rb'"annotations"\s*:\s*\[')


def _early_images(raw: bytes, where: Path) -> list[Any] | None:
    """The ``images`` list of a COCO file, parsed on its own from the file's bytes: the
    span from ``"images": [`` to the last ``]`` before ``"annotations": [`` (the order of
    every common exporter), or None when that span is not a JSON list.

    A guess, used only to start reading images early: the whole file is parsed and checked
    afterwards as always, and an image it does not name is never imported.
    """
    head = _IMAGES_KEY.search(raw)
    tail = _ANNOTATIONS_KEY.search(raw, head.end()) if head is not None else None
    if head is None or tail is None:
        return None
    close = raw.rfind(b"]", head.end(), tail.start())
    if close < 0:
        return None
    try:
        images = parse_json(raw[head.end() - 1 : close + 1], where)
    except DatasetFormatError:
        return None
    return images if isinstance(images, list) else None


def _keypoint_count(files: list[_File], docs: list[Any]) -> int | None:
    """K from ``categories[].keypoints`` (one layout for all), None when none names any.

    Raises:
        DatasetFormatError: categories name different numbers of keypoints.
    """
    found: dict[int, Path] = {}
    for f, doc in zip(files, docs, strict=True):
        for cat in doc.get("categories") or ():
            names = cat.get("keypoints") if isinstance(cat, dict) else None
            if isinstance(names, list) and names:
                found.setdefault(len(names), f.path)
    if len(found) > 1:
        (a, pa), (b, pb) = sorted(found.items())[:2]
        raise DatasetFormatError(
            f"{pb}: categories name {a} and {b} keypoints ({pa}); use one keypoint layout for all categories"
        )
    return next(iter(found), None)


class _Reader:
    """Reads the images and annotations of COCO files, reporting problems as it goes."""

    def __init__(
        self,
        class_of: dict[int, int],
        keypoints: int | None,
        report: Problems,
        found: _Found | None = None,
    ) -> None:
        self.class_of = class_of
        self.keypoints = keypoints  # K, from the categories or the first annotation with any
        self.report = report
        self.found = found if found is not None else _Found()
        self.listings = self.found.listings  # folder → its file names, read once

    def read_file(self, root: Path, f: _File, doc: dict[str, Any]) -> Iterator[SourceImage]:
        where = str(f.path)
        images: dict[int, tuple[str, int, int, Path]] = {}
        skipped: set[int] = set()
        image_runs = ImageRuns(root)
        listed = _list(doc, "images", where)
        early, at_once = self.found.early.pop(f.path, ([], None))
        if at_once is not None and early == listed:  # checked as read first, and announced
            images, listed = at_once, []
        at_once = _all_images(root, f, listed, self.listings) if listed else None
        if at_once is not None:  # the common case: all valid, plain names, checked at once
            images = at_once
            image_runs.extend([entry[3] for entry in at_once.values()])
            listed = []
        for i, img in enumerate(listed):
            try:
                iid, entry = self._image(root, f, img, f"{where}: images[{i}]", images)
            except DatasetFormatError as exc:
                self.report.add_error(exc)
                if isinstance(img, dict) and isinstance(img.get("id"), int):
                    skipped.add(img["id"])
                continue
            images[iid] = entry
            image_runs.add(entry[3])
        image_runs.flush()
        anns: dict[int, list[Annotation]] = {iid: [] for iid in images}
        raw = _list(doc, "annotations", where)
        every = _all_plain(raw, images, self.class_of)
        if every is not None:  # the common case: all plain valid boxes, checked at once
            for iid, a in every:
                anns[iid].append(a)
            raw = []
        plain = _plain_boxes(raw, images, self.class_of)
        for i, ann in enumerate(raw):
            done = plain.get(i)
            if done is not None:
                anns[done[0]].append(done[1])
                continue
            if isinstance(ann, dict) and ann.get("image_id") in skipped:
                continue  # its image was reported and skipped
            try:
                iid, a = self._annotation_of(ann, f"{where}: annotations[{i}]", where, images)
            except DatasetFormatError as exc:
                self.report.add_error(exc)
                continue
            anns[iid].append(a)
        for iid, (name, w, h, path) in images.items():
            yield SourceImage(name, path, f.split, tuple(anns[iid]), (w, h), f.path)

    def _image(
        self, root: Path, f: _File, img: Any, at: str, images: dict[int, Any]
    ) -> tuple[int, tuple[str, int, int, Path]]:
        if not isinstance(img, dict):
            raise DatasetFormatError(f"{at} is not an object; fix the file")
        iid = _int(img.get("id"), f"{at}.id")
        if iid in images:
            raise DatasetFormatError(f"{at}: image id {iid} appears twice; make ids unique")
        raw = img.get("file_name")
        if not isinstance(raw, str):
            raise DatasetFormatError(f"{at} (id {iid}) has no file_name; add it")
        name = safe_relative(raw, at)
        w, h = _int(img.get("width"), f"{at}.width"), _int(img.get("height"), f"{at}.height")
        if w <= 0 or h <= 0:
            raise DatasetFormatError(f"{at} ({name}): width and height must be positive; fix them")
        return iid, (name, w, h, _locate(root, f, name, self.listings))

    def _annotation_of(
        self, ann: Any, at: str, where: str, images: dict[int, tuple[str, int, int, Path]]
    ) -> tuple[int, Annotation]:
        if not isinstance(ann, dict):
            raise DatasetFormatError(f"{at} is not an object; fix the file")
        if "id" in ann:
            at = f"{where}: annotation {ann['id']}"
        iid = _int(ann.get("image_id"), f"{at}.image_id")
        if iid not in images:
            raise DatasetFormatError(f"{at}: unknown image id {iid}; add the image or remove it")
        cid = _int(ann.get("category_id"), f"{at}.category_id")
        if cid not in self.class_of:
            raise DatasetFormatError(
                f"{at}: unknown category id {cid} (known: {sorted(self.class_of)}); add the category or fix the id"
            )
        name, w, h, _ = images[iid]
        return iid, self._annotation(ann, self.class_of[cid], w, h, f"{at} ({name})")

    def _annotation(self, ann: dict[str, Any], cls: int, w: int, h: int, at: str) -> Annotation:
        crowd = ann.get("iscrowd", 0) in (1, True)
        seg = ann.get("segmentation")
        polygons = _polygons(seg, w, h, at) if isinstance(seg, list) else ()
        rle = _rle(seg, w, h, at) if isinstance(seg, dict) else None
        keypoints = self._keypoints(ann.get("keypoints"), w, h, at)
        bbox = ann.get("bbox")
        if bbox is None and polygons:
            xs = [v for p in polygons for v in p[0::2]]
            ys = [v for p in polygons for v in p[1::2]]
            corners = (min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)
        elif bbox is None and rle is not None:
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(_rle_object(rle, w, h)))
            corners = (x, y, x + bw, y + bh)
        else:
            if (
                not isinstance(bbox, list)
                or len(bbox) != 4
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
            ):
                raise DatasetFormatError(
                    f"{at}: bbox must be 4 numbers [x, y, width, height]; fix it"
                )
            x, y, bw, bh = (float(v) for v in bbox)
            corners = (x, y, x + bw, y + bh)
        x0, y0, x1, y1 = box_from_pixels(corners, w, h, at)
        attrs = ann.get("attributes")
        attrs = attrs if isinstance(attrs, dict) else {}
        return Annotation.from_xyxy(
            cls,
            x0,
            y0,
            x1,
            y1,
            polygons=polygons,
            keypoints=keypoints,
            rle=rle,
            iscrowd=crowd,
            difficult=bool(attrs.get("difficult", False)),
            truncated=bool(attrs.get("truncated", False)),
        )

    def _keypoints(self, raw: Any, w: int, h: int, at: str) -> tuple[float, ...]:
        if raw is None or raw == []:
            return ()
        if (
            not isinstance(raw, list)
            or len(raw) % 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
            or not finite(raw)
        ):
            raise DatasetFormatError(f"{at}: keypoints must be a list of x, y, v numbers; fix it")
        if self.keypoints is None:
            self.keypoints = len(raw) // 3
        if len(raw) != 3 * self.keypoints:
            raise DatasetFormatError(
                f"{at}: {len(raw) // 3} keypoints, but the categories name {self.keypoints}; fix the annotation"
            )
        out: list[float] = []
        for i in range(0, len(raw), 3):
            x, y, v = float(raw[i]), float(raw[i + 1]), raw[i + 2]
            if v not in (0, 1, 2):
                raise DatasetFormatError(
                    f"{at}: keypoint {i // 3 + 1} visibility must be 0, 1 or 2, found {v!r}; fix it"
                )
            if v == 0:
                out.extend((0.0, 0.0, 0.0))
                continue
            if x < -1 or y < -1 or x > w + 1 or y > h + 1:
                raise DatasetFormatError(
                    f"{at}: keypoint {i // 3 + 1} ({x:g}, {y:g}) lies outside the {w}x{h} image; fix it"
                )
            out.extend((snap(min(max(x / w, 0.0), 1.0)), snap(min(max(y / h, 0.0), 1.0)), float(v)))
        return tuple(out)


_PLAIN_KEYS = frozenset(
    {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "num_keypoints"}
)


_COLUMN_KEYS = _PLAIN_KEYS | {"segmentation", "keypoints"}


def _plain_extra(key: str, value: Any) -> bool:
    """True for a ``segmentation`` or ``keypoints`` that says nothing (None or ``[]``)."""
    return key in ("segmentation", "keypoints") and (
        value is None or (type(value) is list and not value)
    )


def _plain_boxes(
    raw: list[Any], images: dict[int, tuple[str, int, int, Path]], class_of: dict[int, int]
) -> dict[int, tuple[int, Annotation]]:
    """The annotations that are valid boxes, with or without outlines, checked all at once:
    index → (image id, annotation).

    Such an annotation has an integer ``image_id`` of a listed image, an integer
    ``category_id`` of a known category, a ``bbox`` of four numbers, no mask, keypoints or
    attributes, maybe a ``segmentation`` list of polygons, and a box (and outlines) that pass
    :func:`box_from_pixels` (and :func:`_polygons`), here computed for every box and every
    outline point in vectorised passes, with the same float operations in the same order, so
    the stored values are identical. Every other annotation (anything unusual, and every
    invalid one) is left out and goes through the full per-annotation check, which names
    the problem.
    """
    index: list[int] = []
    iids: list[int] = []
    classes: list[int] = []
    boxes: list[list[Any]] = []
    widths: list[int] = []
    heights: list[int] = []
    crowds: list[bool] = []
    outlines: list[list[Any] | None] = []
    plain = _PLAIN_KEYS
    for i, ann in enumerate(raw):
        if type(ann) is not dict:
            continue
        seg = None
        if not ann.keys() <= plain:
            if not ann.keys() <= _COLUMN_KEYS or not _plain_extra(
                "keypoints", ann.get("keypoints")
            ):
                continue  # attributes, keypoints, ...: the full check
            seg = ann.get("segmentation")
            if _plain_extra("segmentation", seg):
                seg = None  # an empty or null outline says nothing
            elif type(seg) is not list:
                continue  # a mask: the full check
        iid, cid, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if type(iid) is not int or type(cid) is not int or type(bbox) is not list:
            continue
        size = images.get(iid)
        cls = class_of.get(cid)
        if size is None or cls is None or len(bbox) != 4:
            continue
        a, b, c, d = bbox
        if not (
            (type(a) is float or type(a) is int)
            and (type(b) is float or type(b) is int)
            and (type(c) is float or type(c) is int)
            and (type(d) is float or type(d) is int)
        ):
            continue
        index.append(i)
        iids.append(iid)
        classes.append(cls)
        boxes.append(bbox)
        widths.append(size[1])
        heights.append(size[2])
        crowds.append(ann.get("iscrowd", 0) in (1, True))
        outlines.append(seg)
    if not index:
        return {}
    try:
        ok, cx, cy, bw, bh = _normalised(boxes, widths, heights)
        good, polygons = _polygon_columns(outlines, widths, heights)
    except (OverflowError, ValueError):
        return {}  # numbers too large for a float: the full check reports them
    plain_box = Annotation.plain
    return {
        index[k]: (
            iids[k],
            plain_box(classes[k], cx[k], cy[k], bw[k], bh[k], polygons[k], crowds[k]),
        )
        for k in np.flatnonzero(ok).tolist()
        if good[k]
    }


def _polygon_columns(
    outlines: list[list[Any] | None], widths: list[int], heights: list[int]
) -> tuple[list[bool], list[tuple[tuple[float, ...], ...]]]:
    """:func:`_polygons` for many annotations at once: ``(valid, polygons)`` per annotation
    (None: no outline, valid with none). An annotation whose outlines :func:`_polygons`
    would refuse is not valid here (the full check then names the problem); the values of
    the valid ones are the same floats, computed with the same operations.

    Raises:
        OverflowError: a number too large for a float.
    """
    valid = [True] * len(outlines)
    out: list[tuple[tuple[float, ...], ...]] = [()] * len(outlines)
    have = [k for k, seg in enumerate(outlines) if seg]
    if not have:
        return valid, out
    segs: list[list[Any]] = [outlines[k] or [] for k in have]
    polys: list[Any] = list(itertools.chain.from_iterable(segs))
    lengths = list(map(len, polys)) if set(map(type, polys)) == {list} else []
    if (
        not lengths
        or min(lengths) < 6
        or any(n % 2 for n in lengths)
        or not set(map(type, itertools.chain.from_iterable(polys))) <= _NUMBER_TYPES
    ):
        # something the full check refuses, somewhere: sort the outlines one by one
        keep = []
        for k in have:
            if all(
                type(poly) is list
                and len(poly) >= 6
                and not len(poly) % 2
                and set(map(type, poly)) <= _NUMBER_TYPES
                for poly in outlines[k] or []
            ):
                keep.append(k)
            else:
                valid[k] = False
        have = keep
        if not have:
            return valid, out
        segs = [outlines[k] or [] for k in have]
        polys = list(itertools.chain.from_iterable(segs))
        lengths = list(map(len, polys))
    counts = list(map(len, segs))  # outlines per annotation
    owners = np.repeat(np.array(have), counts)  # the annotation of each outline
    values = np.array(list(itertools.chain.from_iterable(polys)), dtype=np.float64)
    per_point = np.repeat(owners, np.array(lengths) // 2)  # ... and of each (x, y) pair
    sizes = np.empty_like(values)
    sizes[0::2] = np.array(widths, dtype=np.float64)[per_point]
    sizes[1::2] = np.array(heights, dtype=np.float64)[per_point]
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.isfinite(values) | (values < -1) | (values > sizes + 1)
        norm = snapped(np.minimum(np.maximum(values / sizes, 0.0), 1.0))
    ends = list(itertools.accumulate(lengths))
    starts = [0, *ends[:-1]]
    for k in owners[np.add.reduceat(bad, starts) > 0].tolist():
        valid[k] = False
    shapes = [tuple(norm[i:j]) for i, j in zip(starts, ends, strict=True)]
    if len(shapes) == len(have):  # one outline each, the common case
        for k, shape in zip(have, shapes, strict=True):
            out[k] = (shape,)
    else:
        at = 0
        for k, n in zip(have, counts, strict=True):
            out[k] = tuple(shapes[at : at + n])
            at += n
    return valid, out


def _columns(rows: list[dict[str, Any]], *keys: str) -> list[list[Any]]:
    """Each key's column: every row's value under it, None where a row has none."""
    return [[row.get(key) for row in rows] for key in keys]


def _only(column: list[Any], kind: type) -> bool:
    """Every value of ``column`` is exactly of type ``kind`` (a bool is not an int here)."""
    return set(map(type, column)) == {kind}


_NUMBER_TYPES = frozenset({int, float})
_OUTLINE_TYPES = frozenset({type(None), list})


def _all_plain(
    raw: list[Any], images: dict[int, tuple[str, int, int, Path]], class_of: dict[int, int]
) -> list[tuple[int, Annotation]] | None:
    """``(image id, annotation)`` for every annotation, in order, when all are valid boxes,
    with or without outlines (see :func:`_plain_boxes`); None as soon as one is not (the
    caller then sorts them out).

    Checks column by column (each a pass in C over the 100,000 annotations of a large file)
    instead of annotation by annotation: about half the cost of :func:`_plain_boxes`, and the
    same values.
    """
    if not raw:
        return []
    if set(map(type, raw)) != {dict} or not set().union(*raw) <= _COLUMN_KEYS:
        return None
    if any(v is not None and v != [] for v in (a["keypoints"] for a in raw if "keypoints" in a)):
        return None
    segs = [a.get("segmentation") for a in raw]
    if not set(map(type, segs)) <= _OUTLINE_TYPES:
        return None  # a mask: the other paths
    iids, cids, boxes = _columns(raw, "image_id", "category_id", "bbox")
    if not (_only(iids, int) and _only(cids, int) and _only(boxes, list)):
        return None
    if set(map(len, boxes)) != {4}:
        return None
    if not set(map(type, itertools.chain.from_iterable(boxes))) <= _NUMBER_TYPES:
        return None
    try:
        sizes = [images[i] for i in iids]
        classes = [class_of[c] for c in cids]
    except KeyError:
        return None
    try:
        numbers = np.fromiter(  # x, y, w, h, x, y, ...
            itertools.chain.from_iterable(boxes), dtype=np.float64, count=4 * len(boxes)
        )
        ok, cx, cy, bw, bh = _normalised(numbers, [z[1] for z in sizes], [z[2] for z in sizes])
    except (OverflowError, ValueError):
        return None
    if not ok.all():
        return None
    crowd = [a.get("iscrowd", 0) in (1, True) for a in raw]
    plain_box = Annotation.plain
    if any(segs):  # outlines too: checked and normalised in one pass
        try:
            good, outlines = _polygon_columns(
                [seg or None for seg in segs], [z[1] for z in sizes], [z[2] for z in sizes]
            )
        except (OverflowError, ValueError):
            return None
        if not all(good):
            return None
        return [
            (iid, plain_box(c, x, y, w, h, o, k))
            for iid, c, x, y, w, h, o, k in zip(
                iids, classes, cx, cy, bw, bh, outlines, crowd, strict=True
            )
        ]
    return [
        (iid, plain_box(c, x, y, w, h, (), k))
        for iid, c, x, y, w, h, k in zip(iids, classes, cx, cy, bw, bh, crowd, strict=True)
    ]


_NAME_SPECIALS = frozenset("/\\:\0")  # a name with one of these takes the checks one by one


def _all_images(
    root: Path, f: _File, raw: list[Any], listings: dict[Path, frozenset[str]]
) -> dict[int, tuple[str, int, int, Path]] | None:
    """``{id: (file name, width, height, path)}`` for every image of a COCO ``images`` list,
    in order, when all are valid and plainly named (see :meth:`_Reader._image`); None as
    soon as one is not (the caller then checks them one by one, which names the problem).

    Checks column by column, like :func:`_all_plain`: whole-number ids, widths and heights
    given as ints, each id once, sizes positive, names that are bare file names (no folder,
    no drive, no surrounding space, not ``.`` or ``..``), so :func:`safe_relative` would
    return them as they are. Each file is looked for as :func:`_locate` does: the first
    candidate folder whose listing has the name; one that no listing has goes through
    :func:`_locate` (a case-insensitive file system, or a missing file).
    """
    if not raw or set(map(type, raw)) != {dict}:
        return None
    ids, names, widths, heights = _columns(raw, "id", "file_name", "width", "height")
    if (
        not (_only(ids, int) and _only(widths, int) and _only(heights, int))
        or not _only(names, str)
        or len(set(ids)) != len(ids)
        or min(widths) <= 0
        or min(heights) <= 0
    ):
        return None
    if not _NAME_SPECIALS.isdisjoint("".join(names)) or not all(
        name == name.strip() and name not in ("", ".", "..") for name in names
    ):
        return None
    pending = set(names)
    folder_of: dict[str, Path] = {}
    for folder in _folders(root, f):
        listing = listings.get(folder)
        if listing is None:
            listing = listings[folder] = _file_names(folder)
        found = pending & listing
        if found:
            folder_of.update(dict.fromkeys(found, folder))
            pending -= found
            if not pending:
                break
    paths = [
        folder_of[name] / name if name in folder_of else _locate(root, f, name, listings)
        for name in names
    ]
    return dict(zip(ids, zip(names, widths, heights, paths, strict=True), strict=True))


def _normalised(
    boxes: Sequence[Any] | np.ndarray, widths: list[int], heights: list[int]
) -> tuple[np.ndarray, list[float], list[float], list[float], list[float]]:
    """:func:`boxes_from_pixels` for many ``[x, y, w, h]`` pixel boxes: ``(ok, cx, cy, w,
    h)``. ``boxes`` holds the boxes, or their numbers one after another.

    Raises:
        OverflowError, ValueError: a number too large for a float.
    """
    xywh = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0 = xywh[:, 0], xywh[:, 1]
    with np.errstate(over="ignore"):
        x1, y1 = x0 + xywh[:, 2], y0 + xywh[:, 3]
    w = np.array(widths, dtype=np.float64)
    h = np.array(heights, dtype=np.float64)
    return boxes_from_pixels(x0, y0, x1, y1, w, h)


@functools.lru_cache(maxsize=64)
def _folders(root: Path, f: _File) -> tuple[Path, ...]:
    """Where the images of annotation file ``f`` may be, in the order they are looked for."""
    json_dir = f.path.parent
    dirs = [json_dir, json_dir / "images", root, root / "images"]
    if f.token:
        for word in dict.fromkeys((f.token, f.split or f.token)):
            dirs += [root / "images" / word, root / word]
    return tuple(dirs)


def _locate(root: Path, f: _File, name: str, listings: dict[Path, frozenset[str]]) -> Path:
    """The image file for ``name``: beside the JSON, in an images/ folder, or a split folder.

    Each candidate folder is listed once per read (``listings``: its entries that are not
    folders), so a plain file name costs set lookups, not a stat.
    """
    dirs = _folders(root, f)
    for d in dirs:
        if "/" not in name:
            names = listings.get(d)
            if names is None:
                names = listings[d] = _file_names(d)
            if name in names:
                return d / name
            continue
        p = d / name
        if p.is_file() or p.is_symlink():
            return p
    for d in dirs:  # not listed under that exact name (a case-insensitive file system?)
        p = d / name
        if p.is_file() or p.is_symlink():
            return p
    return dirs[0] / name  # missing: inspect_images reports it


def _file_names(folder: Path) -> frozenset[str]:
    """The names in ``folder`` that are files or links (to anything but a folder)."""
    try:
        with os.scandir(folder) as entries:
            return frozenset(e.name for e in entries if not e.is_dir())
    except OSError:
        return frozenset()


def _polygons(seg: list[Any], w: int, h: int, at: str) -> tuple[tuple[float, ...], ...]:
    out: list[tuple[float, ...]] = []
    for poly in seg:
        if (
            not isinstance(poly, list)
            or len(poly) < 6
            or len(poly) % 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in poly)
            or not finite(poly)
        ):
            raise DatasetFormatError(
                f"{at}: each segmentation polygon must be an even list of at least 6 numbers; fix it"
            )
        pts = [float(v) for v in poly]
        if any(v < -1 or v > (w if i % 2 == 0 else h) + 1 for i, v in enumerate(pts)):
            raise DatasetFormatError(
                f"{at}: a segmentation polygon lies outside the {w}x{h} image; fix it"
            )
        out.append(
            tuple(snap(min(max(v / (w if i % 2 == 0 else h), 0.0), 1.0)) for i, v in enumerate(pts))
        )
    return tuple(out)


def _rle(seg: dict[str, Any], w: int, h: int, at: str) -> str:
    """A checked RLE mask as its compressed counts string (uncompressed counts are compressed)."""
    size = seg.get("size")
    if size != [h, w]:
        raise DatasetFormatError(
            f"{at}: the RLE mask's size {size!r} is not the image's [height, width] [{h}, {w}]; fix it"
        )
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise DatasetFormatError(
                f"{at}: RLE counts must be whole numbers of at least 0; fix the mask"
            )
        runs = counts
        packed = mask_utils.frPyObjects({"counts": counts, "size": [h, w]}, h, w)["counts"]
        text = packed.decode("ascii") if isinstance(packed, bytes) else str(packed)
    elif isinstance(counts, str):
        runs = rle_counts(counts, at)
        text = counts
    else:
        raise DatasetFormatError(
            f"{at}: RLE counts must be a string or a list of numbers; fix the mask"
        )
    if sum(runs) != w * h:
        raise DatasetFormatError(
            f"{at}: the RLE mask covers {sum(runs)} pixels, not the image's {w * h}; fix the mask"
        )
    return text


def rle_counts(text: str, at: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (checked in Python before any C code).

    Raises:
        DatasetFormatError: the string is not a valid compressed RLE.
    """
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            if p >= len(text):
                raise DatasetFormatError(
                    f"{at}: the RLE counts string ends mid-number; fix the mask"
                )
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise DatasetFormatError(
                    f"{at}: the RLE counts string holds {text[p]!r}, not a COCO RLE character; fix the mask"
                )
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise DatasetFormatError(f"{at}: the RLE mask has a negative run; fix the mask")
        counts.append(x)
    return counts


def _rle_object(text: str, w: int, h: int) -> dict[str, Any]:
    return {"size": [h, w], "counts": text.encode("ascii")}


def _list(doc: dict[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key, [] if key == "annotations" else None)
    if not isinstance(value, list):
        raise DatasetFormatError(f"{where}: {key!r} must be a list; fix the file")
    return value


def _int(value: Any, at: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not float(value).is_integer()
    ):
        raise DatasetFormatError(f"{at} must be a whole number, found {value!r}; fix the file")
    return int(value)


# ---- writing ---------------------------------------------------------------------------


def write(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """``annotations/instances_{split}.json`` and ``images/{split}/``; category ids from 1."""
    for split in data.splits:
        items = [i for i in data.items if i.split == split]
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for item in items:
            copy_image(item.sha256, out / "images" / split / item.file_name)
        doc = to_coco(data, items)
        atomic_write_text(
            out / "annotations" / f"instances_{split}.json",
            json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n",
        )


def to_coco(data: ExportDataset, items: list[ExportItem]) -> dict[str, Any]:
    """The COCO document for some items of a version."""
    k = max((len(a.keypoints) // 3 for i in data.items for a in i.annotations), default=0)
    if data.keypoint_shape is not None:
        k = data.keypoint_shape[0]
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image_id, item in enumerate(items, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": item.file_name,
                "width": item.width,
                "height": item.height,
            }
        )
        for a in item.annotations:
            x0, y0, x1, y1 = a.xyxy
            box = [x0 * item.width, y0 * item.height, a.w * item.width, a.h * item.height]
            polys = [
                [v * (item.width if i % 2 == 0 else item.height) for i, v in enumerate(p)]
                for p in a.polygons
            ]
            seg: Any = polys
            if polys:
                area = _area(polys)
            elif a.rle is not None:
                seg = {"size": [item.height, item.width], "counts": a.rle}
                area = float(sum(rle_counts(a.rle, item.file_name)[1::2]))
            else:
                area = box[2] * box[3]
            row: dict[str, Any] = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": a.cls + 1,
                "bbox": box,
                "area": area,
                "iscrowd": int(a.iscrowd),
                "segmentation": seg,
            }
            if k:
                row["keypoints"], row["num_keypoints"] = _pixel_keypoints(a, k, item)
            if a.difficult or a.truncated:
                row["attributes"] = {k: True for k in ("difficult", "truncated") if getattr(a, k)}
            anns.append(row)
    return {
        "info": {
            "description": f"{data.name} {data.version}",
            "version": data.version,
            "content_hash": data.content_hash,
            "contributor": "Outpost",
        },
        "licenses": [],
        "categories": [
            {"id": i + 1, "name": n, "supercategory": ""}
            | ({"keypoints": [str(j) for j in range(k)], "skeleton": []} if k else {})
            for i, n in enumerate(data.class_names)
        ],
        "images": images,
        "annotations": anns,
    }


def _pixel_keypoints(a: Annotation, k: int, item: ExportItem) -> tuple[list[float | int], int]:
    """``[x, y, v, ...]`` in pixels for ``k`` keypoints (missing ones ``0, 0, 0``), and how many are labelled."""
    out: list[float | int] = []
    labelled = 0
    for j in range(k):
        x, y, v = a.keypoints[3 * j : 3 * j + 3] if 3 * j + 3 <= len(a.keypoints) else (0, 0, 0)
        out.extend((x * item.width, y * item.height, int(v)))
        labelled += v > 0
    return out, labelled


def _area(polys: list[list[float]]) -> float:
    total = 0.0
    for p in polys:
        xs, ys = p[0::2], p[1::2]
        total += abs(math.fsum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2
    return total


FORMAT = DatasetFormat(
    key="coco",
    title="COCO JSON (detect, segment, pose)",
    detect=detect,
    read=read,
    write=write,
    capabilities=FormatCapabilities(
        tasks=frozenset({"detect", "segment", "pose"}),
        polygons=True,
        keypoints=True,
        rle=True,
        iscrowd=True,
        difficult=True,
        truncated=True,
    ),
)
