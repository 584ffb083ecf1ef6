"""COCO object-detection JSON: boxes, polygons, ``iscrowd``/RLE, any category ids.

Accepted layouts (one or more annotation files; the split comes from each file's name or
folder, e.g. ``instances_train2017.json`` or ``valid/_annotations.coco.json``)::

    annotations.json + images/*.jpg                  (or the images beside the JSON)
    annotations/instances_{train,val}.json + images/{train,val}/*.jpg  (or {train,val}2017/)
    {train,valid,test}/_annotations.coco.json + the images beside each

Category ids may have gaps; they map to contiguous class ids in id order, names kept. A
crowd annotation (``iscrowd: 1``) keeps its ``bbox`` and its flag; an RLE mask is not kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop_app.core.dataset_records import (
    Annotation,
    CopyImage,
    ExportDataset,
    ExportItem,
    Problems,
    Progress,
    ScannedDataset,
    SourceImage,
    box_from_pixels,
    finite,
    inspect_images,
    safe_relative,
    split_of,
)
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities
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
        DatasetFormatError: on the first problem, naming the file and what is wrong.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetFormatError(f"not a COCO dataset: {path} does not exist; check the path")
    path = path.resolve()
    if path.is_file():
        root = path.parent.parent if path.parent.name.lower() == "annotations" else path.parent
        files = [_File(path, *_split_token(path))]
        docs = [_load(path)]
    else:
        root = path
        files, docs = [], []
        for f in _candidates(path):
            doc = _load(f.path)
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
    sources: list[SourceImage] = []
    for f, doc in zip(files, docs, strict=True):
        sources.extend(_read_file(root, f, doc, class_of))
    has_split = any(f.split for f in files)
    return inspect_images(root, "coco", names, sources, has_split, progress)


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


def _load(p: Path) -> Any:
    try:
        with open(p, "rb") as fh:
            return json.load(fh)
    except OSError as exc:
        raise DatasetFormatError(f"{p} cannot be read ({exc.strerror}); check the file") from None
    except UnicodeDecodeError:
        raise DatasetFormatError(f"{p} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(
            f"{p} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); fix the file"
        ) from None


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


def _read_file(
    root: Path, f: _File, doc: dict[str, Any], class_of: dict[int, int]
) -> Iterator[SourceImage]:
    where = str(f.path)
    images: dict[int, tuple[str, int, int, Path]] = {}
    for i, img in enumerate(_list(doc, "images", where)):
        at = f"{where}: images[{i}]"
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
        images[iid] = (name, w, h, _locate(root, f, name))
    anns: dict[int, list[Annotation]] = {iid: [] for iid in images}
    for i, ann in enumerate(_list(doc, "annotations", where)):
        at = f"{where}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DatasetFormatError(f"{at} is not an object; fix the file")
        if "id" in ann:
            at = f"{where}: annotation {ann['id']}"
        iid = _int(ann.get("image_id"), f"{at}.image_id")
        if iid not in images:
            raise DatasetFormatError(f"{at}: unknown image id {iid}; add the image or remove it")
        cid = _int(ann.get("category_id"), f"{at}.category_id")
        if cid not in class_of:
            raise DatasetFormatError(
                f"{at}: unknown category id {cid} (known: {sorted(class_of)}); add the category or fix the id"
            )
        name, w, h, _ = images[iid]
        anns[iid].append(_annotation(ann, class_of[cid], w, h, f"{at} ({name})"))
    for iid, (name, w, h, path) in images.items():
        yield SourceImage(name, path, f.split, tuple(anns[iid]), (w, h), f.path)


def _locate(root: Path, f: _File, name: str) -> Path:
    """The image file for ``name``: beside the JSON, in an images/ folder, or a split folder."""
    json_dir = f.path.parent
    dirs = [json_dir, json_dir / "images", root, root / "images"]
    if f.token:
        for word in dict.fromkeys((f.token, f.split or f.token)):
            dirs += [root / "images" / word, root / word]
    for d in dirs:
        p = d / name
        if p.is_file() or p.is_symlink():
            return p
    return dirs[0] / name  # missing: inspect_images reports it


def _annotation(ann: dict[str, Any], cls: int, w: int, h: int, at: str) -> Annotation:
    crowd = ann.get("iscrowd", 0) in (1, True)
    seg = ann.get("segmentation")
    polygons = _polygons(seg, w, h, at) if isinstance(seg, list) else ()
    bbox = ann.get("bbox")
    if bbox is None and polygons:
        xs = [v for p in polygons for v in p[0::2]]
        ys = [v for p in polygons for v in p[1::2]]
        corners = (min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)
    else:
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        ):
            raise DatasetFormatError(f"{at}: bbox must be 4 numbers [x, y, width, height]; fix it")
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
        iscrowd=crowd,
        difficult=bool(attrs.get("difficult", False)),
        truncated=bool(attrs.get("truncated", False)),
    )


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
            tuple(min(max(v / (w if i % 2 == 0 else h), 0.0), 1.0) for i, v in enumerate(pts))
        )
    return tuple(out)


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
            row: dict[str, Any] = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": a.cls + 1,
                "bbox": box,
                "area": _area(polys) if polys else box[2] * box[3],
                "iscrowd": int(a.iscrowd),
                "segmentation": polys,
            }
            attrs = {k: True for k in ("difficult", "truncated") if getattr(a, k)}
            if attrs:
                row["attributes"] = attrs
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
            {"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(data.class_names)
        ],
        "images": images,
        "annotations": anns,
    }


def _area(polys: list[list[float]]) -> float:
    total = 0.0
    for p in polys:
        xs, ys = p[0::2], p[1::2]
        total += abs(math.fsum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2
    return total


FORMAT = DatasetFormat(
    key="coco",
    title="COCO JSON (object detection)",
    detect=detect,
    read=read,
    write=write,
    capabilities=FormatCapabilities(polygons=True, iscrowd=True, difficult=True, truncated=True),
)
