"""Read and validate a YOLO dataset on disk (detect, segment or pose), without writing anything.

Accepted layouts (class names from ``data.yaml``/``data.yml`` ``names:``, list or dict, or
from ``classes.txt`` at the top or in ``labels/``)::

    images/*.jpg          labels/*.txt                       (flat; Outpost splits it)
    images/train/*.jpg    labels/train/*.txt  (+ val, test)  (the source's split is kept)

Images may sit in sub-folders; the label of ``images/<split>/a/b.jpg`` is
``labels/<split>/a/b.txt``. An empty label file marks a background image (labelled, no
objects); an image without a label file is unlabelled (the source says nothing about it).

The task follows the Ultralytics label formats:

* ``kpt_shape: [K, 2 or 3]`` in ``data.yaml`` → **pose**: ``cls cx cy w h`` followed by K
  keypoints of ``x y`` or ``x y v`` (``v``: 0 not labelled, 1 occluded, 2 visible; with
  two values a keypoint at ``0 0`` is not labelled, any other is visible). ``flip_idx`` is
  not kept (an export writes none; Ultralytics then trains without left-right flips).
* polygon lines ``cls x1 y1 x2 y2 x3 y3 ...`` → **segment** (the box is the polygon's bounds).
* ``cls cx cy w h`` lines → **detect**.

A dataset that mixes polygon and box lines is read as the kind most lines have, and each
line of the other kind is a problem: Ultralytics reads every line of a file with one polygon
as a polygon, so a box line there would become a two-point outline.

The classification layout (``train/<class>/*.jpg``) is read by
:mod:`desktop_app.core.formats.imagefolder`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from desktop_app.core.dataset_records import (
    IMAGE_SUFFIXES,
    Annotation,
    Problems,
    Progress,
    ScannedDataset,
    ScannedImage,
    SourceImage,
    announce_images,
    inspect_images,
)
from desktop_app.core.errors import DatasetFormatError

__all__ = [
    "Progress",
    "ScannedDataset",
    "ScannedImage",
    "find_class_names",
    "names_from_txt",
    "read_class_names",
    "read_keypoint_shape",
    "scan_yolo",
]

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
NAME_FILES = ("data.yaml", "data.yml")
EXPECTED = "expected images/ and labels/, and data.yaml or classes.txt"


@dataclass(frozen=True)
class _Entry:
    file_name: str
    image: Path
    label: Path
    split: str | None


_Lines = list[tuple[int, list[str]]]  # (line number, the numbers as text)


def scan_yolo(
    path: Path,
    progress: Progress | None = None,
    workers: int | None = None,
    problems: Problems | None = None,
) -> ScannedDataset:
    """Validate a YOLO detect, segment or pose dataset and return what it holds.

    Args:
        path: The dataset folder (the one holding ``images/`` and ``labels/``), or its
            ``data.yaml``.
        progress: Called as ``progress("validate", done, total)`` while images are decoded.
        workers: Threads that decode images (default: up to 8).
        problems: Lenient collector: bad lines, label files and images are listed there and
            skipped. None (strict): the first problem raises.

    Raises:
        DatasetFormatError: the folder is not a YOLO dataset, or (strict) on the first
            problem, naming the file and what is wrong.
    """
    report = problems if problems is not None else Problems()
    root = Path(path).expanduser()
    if root.is_file() and root.name in NAME_FILES:
        root = root.parent  # the dataset's data.yaml was given
    if not root.exists():
        raise DatasetFormatError(f"not a YOLO dataset: {root} does not exist; check the path")
    if not root.is_dir():
        raise DatasetFormatError(f"not a YOLO dataset: {root} is a file, not a folder ({EXPECTED})")
    root = root.resolve()
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DatasetFormatError(f"not a YOLO dataset: {root} has no images/ folder ({EXPECTED})")
    if not (root / "labels").is_dir():
        raise DatasetFormatError(f"not a YOLO dataset: {root} has no labels/ folder ({EXPECTED})")
    entries, has_split = _find_entries(root, report)
    if not entries:
        raise DatasetFormatError(
            f"not a YOLO dataset: {images_dir} holds no images (.jpg, .png, ...); add images"
        )
    announce_images(root, [e.image for e in entries])  # read while the labels are parsed
    names = read_class_names(root)
    kpt_shape = read_keypoint_shape(root)
    entries = _check_labels_files(root, entries, report)
    lines: list[_Lines | None] = []
    kept: list[_Entry] = []
    for e in entries:
        try:
            lines.append(_read_lines(e.label))
            kept.append(e)
        except DatasetFormatError as exc:  # an unreadable label file: skip its image
            report.add_error(exc)
    task = "pose" if kpt_shape is not None else _guess_task(lines)
    parser = _LineParser(task, len(names), kpt_shape)
    boxes = _plain_lines(lines, len(names)) if task == "detect" else None
    sources: list[SourceImage] = []
    for k, (e, numbered) in enumerate(zip(kept, lines, strict=True)):
        if numbered is None:
            sources.append(SourceImage(e.file_name, e.image, e.split, (), labelled=False))
            continue
        if boxes is not None:  # every line checked at once: all are valid boxes
            sources.append(SourceImage(e.file_name, e.image, e.split, boxes[k]))
            continue
        anns: list[Annotation] = []
        label = str(e.label)
        for n, parts in numbered:
            try:
                anns.append(parser.parse(f"{label}:{n}", parts))
            except DatasetFormatError as exc:
                report.add_error(exc)
        sources.append(SourceImage(e.file_name, e.image, e.split, tuple(anns)))
    return inspect_images(
        root,
        "yolo",
        names,
        sources,
        has_split,
        progress,
        workers,
        problems=report,
        task=task,
        keypoint_shape=kpt_shape,
    )


# ---- layout ----------------------------------------------------------------------------


def _find_entries(root: Path, report: Problems) -> tuple[list[_Entry], bool]:
    images_dir, labels_dir = root / "images", root / "labels"
    split_dirs = sorted(
        d for d in images_dir.iterdir() if d.is_dir() and d.name.lower() in SPLIT_DIRS
    )
    if not split_dirs:
        return [_entry(p, images_dir, labels_dir, None) for p in _image_files(images_dir)], False
    stray = sorted(
        p
        for p in images_dir.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and _is_image(p)) or (p.is_dir() and p not in split_dirs))
    )
    if stray:
        raise DatasetFormatError(
            f"{stray[0]} sits beside images/{split_dirs[0].name}/; move its images into a split folder (train, val, test)"
        )
    entries: list[_Entry] = []
    seen: dict[str, Path] = {}
    names_by_split: dict[str, str] = {}
    for d in split_dirs:
        split = SPLIT_DIRS[d.name.lower()]
        for p in _image_files(d):
            e = _entry(p, d, labels_dir / d.name, split)
            key = f"{split}/{e.file_name}"
            if key in seen:
                report.add(
                    f"{p} and {seen[key]} are both in the {split} split under one name; rename one"
                )
                continue
            other = names_by_split.setdefault(e.file_name, split)
            if other != split:
                report.add(
                    f"{e.image} has the same name as an image in images/{other}/; rename one (names must be unique across splits)"
                )
                continue
            seen[key] = p
            entries.append(e)
    return entries, True


def _image_files(folder: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(
            Path(os.path.join(dirpath, f))
            for f in sorted(filenames)
            if _is_image_name(f) and not f.startswith(".")
        )
    return sorted(out)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _is_image_name(name: str) -> bool:
    """:func:`_is_image` of a file name, without a ``Path`` (thousands of files)."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _entry(image: Path, split_root: Path, label_root: Path, split: str | None) -> _Entry:
    """The image under ``split_root`` and its label file under ``label_root`` (paths joined
    as strings: ``relative_to``/``with_suffix`` cost more than the rest of the scan)."""
    text, top = os.fspath(image), os.path.join(os.fspath(split_root), "")
    if not text.startswith(top):  # not below it as written: let pathlib say why
        rel = image.relative_to(split_root)
        return _Entry(rel.as_posix(), image, (label_root / rel).with_suffix(".txt"), split)
    rel_text = text[len(top) :]
    label = Path(os.path.join(os.fspath(label_root), os.path.splitext(rel_text)[0] + ".txt"))
    return _Entry(rel_text.replace(os.sep, "/"), image, label, split)


def _check_labels_files(root: Path, entries: list[_Entry], report: Problems) -> list[_Entry]:
    """Images that share a label file, and label files without an image, are problems."""
    labels_dir = root / "labels"
    expected: dict[str, Path] = {}  # label file (as a string: thousands of them) → its image
    kept: list[_Entry] = []
    for e in entries:
        label = os.fspath(e.label)
        if label in expected:
            report.add(
                f"{e.image} and {expected[label]} share the label file {e.label}; rename one image"
            )
            continue
        expected[label] = e.image
        kept.append(e)
    classes_txt = os.path.join(labels_dir, "classes.txt")
    for dirpath, dirnames, filenames in os.walk(labels_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            text = os.path.join(dirpath, f)
            if not f.endswith(".txt") or f.startswith(".") or text == classes_txt:
                continue
            if text not in expected:
                p = Path(text)
                image_dir = root / "images" / p.parent.relative_to(labels_dir)
                report.add(
                    f"label {p} has no image (expected {image_dir / p.stem}.jpg or .png); add the image or remove the label"
                )
    return kept


# ---- class names -----------------------------------------------------------------------


def read_class_names(root: Path) -> tuple[str, ...]:
    """Class names from ``data.yaml``/``data.yml`` (``names``), else ``classes.txt``.

    Raises:
        DatasetFormatError: no names file, or its names are malformed.
    """
    names = find_class_names(root)
    if names is None:
        raise DatasetFormatError(
            f"no class names: {root} has no data.yaml with names: and no classes.txt; add one (one class name per line)"
        )
    return names


def find_class_names(root: Path) -> tuple[str, ...] | None:
    """Like :func:`read_class_names`, but None when ``root`` has no names file.

    Raises:
        DatasetFormatError: a names file is malformed.
    """
    for name in NAME_FILES:
        p = root / name
        if p.is_file():
            names = _names_from_yaml(p)
            if names is not None:
                return names
    for p in (root / "classes.txt", root / "labels" / "classes.txt"):
        if p.is_file():
            return names_from_txt(p)
    return None


def _names_from_yaml(p: Path) -> tuple[str, ...] | None:
    data = _load_yaml(p)
    if not isinstance(data, dict) or data.get("names") is None:
        return None
    raw = data["names"]
    if isinstance(raw, list):
        names = [str(n) for n in raw]
    elif isinstance(raw, dict):
        try:
            ids = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise DatasetFormatError(
                f"{p}: names: keys must be class ids 0, 1, 2, ...; fix the file"
            ) from None
        if ids != list(range(len(ids))):
            raise DatasetFormatError(
                f"{p}: names: ids must run 0..{len(ids) - 1} without gaps; fix the file"
            )
        by_id = {int(k): v for k, v in raw.items()}
        names = [str(by_id[i]) for i in ids]
    else:
        raise DatasetFormatError(
            f"{p}: names: must be a list or a mapping of id to name; fix the file"
        )
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DatasetFormatError(
            f"{p}: nc is {nc} but names lists {len(names)} classes; make them agree"
        )
    return _checked_names(names, p)


def names_from_txt(p: Path) -> tuple[str, ...]:
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(
            f"{p} cannot be read ({type(exc).__name__}); save it as UTF-8 text"
        ) from None
    while lines and not lines[-1].strip():
        lines.pop()
    return _checked_names([line.strip() for line in lines], p)


def _checked_names(names: list[str], p: Path) -> tuple[str, ...]:
    if not names:
        raise DatasetFormatError(f"{p} lists no class names; add one name per class")
    for i, n in enumerate(names):
        if not n.strip():
            raise DatasetFormatError(f"{p}: class {i} has an empty name; name every class")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DatasetFormatError(f"{p}: class name {dup!r} appears twice; make class names unique")
    return tuple(names)


def read_keypoint_shape(root: Path) -> tuple[int, int] | None:
    """``kpt_shape: [K, 2 or 3]`` from ``data.yaml``, or None when there is none (not pose).

    Raises:
        DatasetFormatError: ``kpt_shape`` is malformed.
    """
    for name in NAME_FILES:
        p = root / name
        if not p.is_file():
            continue
        data = _load_yaml(p)
        raw = data.get("kpt_shape") if isinstance(data, dict) else None
        if raw is None:
            continue
        if (
            not isinstance(raw, list | tuple)
            or len(raw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
            or raw[0] < 1
            or raw[1] not in (2, 3)
        ):
            raise DatasetFormatError(
                f"{p}: kpt_shape must be [keypoints, 2 or 3], found {raw!r}; fix the file"
            )
        return int(raw[0]), int(raw[1])
    return None


def _load_yaml(p: Path) -> Any:
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetFormatError(f"{p} cannot be read as YAML ({reason}); fix the file") from None


# ---- labels ----------------------------------------------------------------------------


def _plain_lines(lines: list[_Lines | None], nc: int) -> list[tuple[Annotation, ...]] | None:
    """Each label file's boxes when every line of every file is a valid ``cls cx cy w h``
    box, checked in one vectorised pass (the same numbers as :meth:`_LineParser.parse`);
    None as soon as one is not (the per-line check then names the problem).
    """
    rows = [parts for numbered in lines for _, parts in numbered or ()]
    if not rows:
        return [() for _ in lines]
    if set(map(len, rows)) != {5}:
        return None
    try:
        values = np.array(list(map(float, itertools.chain.from_iterable(rows))), np.float64)
    except ValueError:
        return None
    table = values.reshape(-1, 5)
    cls, box = table[:, 0], table[:, 1:]
    with np.errstate(invalid="ignore"):
        ok = (
            np.isfinite(cls).all()
            and (cls == np.floor(cls)).all()
            and ((cls >= 0) & (cls < nc)).all()
            and np.isfinite(box).all()
            and ((box >= 0.0) & (box <= 1.0)).all()
            and (box[:, 2:] > 0).all()
        )
    if not ok:
        return None
    plain = Annotation.plain
    made = [
        plain(c, x, y, w, h)
        for c, (x, y, w, h) in zip(cls.astype(np.int64).tolist(), box.tolist(), strict=True)
    ]
    out: list[tuple[Annotation, ...]] = []
    at = 0
    for numbered in lines:
        n = len(numbered) if numbered else 0
        out.append(tuple(made[at : at + n]))
        at += n
    return out


def _read_lines(p: Path) -> _Lines | None:
    """The non-blank lines of a label file, split into words; None when there is no file."""
    try:
        with open(p, encoding="utf-8-sig") as fh:
            text = fh.read()
    except (FileNotFoundError, IsADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(
            f"{p} cannot be read ({type(exc).__name__}); save it as UTF-8 text"
        ) from None
    return [(n, line.split()) for n, line in _numbered_lines(text)]


def _numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, line


def _is_polygon_line(parts: list[str]) -> bool:
    return len(parts) >= 7 and len(parts) % 2 == 1


def _guess_task(lines: list[_Lines | None]) -> str:
    """ "segment" when most box-or-polygon lines are polygons, else "detect"."""
    boxes = polygons = 0
    for numbered in lines:
        for _, parts in numbered or ():
            boxes += len(parts) == 5
            polygons += _is_polygon_line(parts)
    return "segment" if polygons and polygons >= boxes else "detect"


class _LineParser:
    """Parses one label line of a task into an :class:`Annotation` (raises on a bad line)."""

    def __init__(self, task: str, nc: int, kpt_shape: tuple[int, int] | None) -> None:
        self.task = task
        self.nc = nc
        self.kpt_shape = kpt_shape

    def parse(self, where: str, parts: list[str]) -> Annotation:
        if self.task == "pose":
            return self._pose(where, parts)
        if self.task == "segment":
            return self._polygon(where, parts)
        return self._box(where, parts)

    def _box(self, where: str, parts: list[str]) -> Annotation:
        if len(parts) != 5:
            hint = (
                "a polygon line in a dataset whose other lines are boxes (YOLO needs polygons "
                "on every line of a segmentation dataset); "
                if _is_polygon_line(parts)
                else ""
            )
            raise DatasetFormatError(
                f"{where}: expected 5 numbers (class cx cy w h), found {len(parts)}; {hint}fix the line"
            )
        cls, coords = self._numbers(where, parts, "5 numbers (class cx cy w h)")
        return Annotation(cls, *self._checked_box(where, parts, coords))

    def _checked_box(
        self, where: str, parts: list[str], coords: list[float]
    ) -> tuple[float, float, float, float]:
        _check_unit(where, parts[1:5], coords[:4])
        if coords[2] <= 0 or coords[3] <= 0:
            raise DatasetFormatError(
                f"{where}: box width and height must be positive, found {parts[3]} {parts[4]}; fix the line"
            )
        return coords[0], coords[1], coords[2], coords[3]

    def _polygon(self, where: str, parts: list[str]) -> Annotation:
        if not _is_polygon_line(parts):
            hint = (
                "a box line in a dataset whose other lines are polygons (Ultralytics would read "
                "it as a two-point outline); "
                if len(parts) == 5
                else ""
            )
            raise DatasetFormatError(
                f"{where}: expected a class and at least 3 x y points, found {len(parts)} numbers; {hint}fix the line"
            )
        cls, coords = self._numbers(where, parts, "a class and x y points")
        _check_unit(where, parts[1:], coords)
        xs, ys = coords[0::2], coords[1::2]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        if x1 <= x0 or y1 <= y0:
            raise DatasetFormatError(
                f"{where}: the polygon has no area (its points lie on one line); fix or remove it"
            )
        return Annotation.from_xyxy(cls, x0, y0, x1, y1, polygons=(tuple(coords),))

    def _pose(self, where: str, parts: list[str]) -> Annotation:
        assert self.kpt_shape is not None  # pose is chosen only with kpt_shape
        k, ndim = self.kpt_shape
        want = 5 + k * ndim
        shape = f"class cx cy w h and {k} keypoints of {ndim} numbers (kpt_shape [{k}, {ndim}])"
        if len(parts) != want:
            raise DatasetFormatError(
                f"{where}: expected {want} numbers ({shape}), found {len(parts)}; fix the line or kpt_shape in data.yaml"
            )
        cls, coords = self._numbers(where, parts, f"{want} numbers")
        box = self._checked_box(where, parts, coords)
        keypoints: list[float] = []
        for i in range(k):
            at = 4 + i * ndim
            x, y = coords[at], coords[at + 1]
            _check_unit(where, parts[at + 1 : at + 3], [x, y])
            if ndim == 3:
                v = coords[at + 2]
                if v not in (0.0, 1.0, 2.0):
                    raise DatasetFormatError(
                        f"{where}: keypoint {i + 1} visibility must be 0, 1 or 2, found {parts[at + 3]}; fix the line"
                    )
            else:
                v = 0.0 if x == 0 and y == 0 else 2.0
            keypoints.extend((x, y, v))
        return Annotation(cls, *box, keypoints=tuple(keypoints))

    def _numbers(self, where: str, parts: list[str], what: str) -> tuple[int, list[float]]:
        try:
            cls_f = float(parts[0])
            coords = [float(v) for v in parts[1:]]
        except ValueError:
            raise DatasetFormatError(
                f"{where}: {' '.join(parts)!r} is not {what}; fix the line"
            ) from None
        if not cls_f.is_integer():
            raise DatasetFormatError(
                f"{where}: class id {parts[0]} is not a whole number; fix the line"
            )
        cls = int(cls_f)
        if not 0 <= cls < self.nc:
            raise DatasetFormatError(
                f"{where}: class id {cls} is out of range 0..{self.nc - 1} ({self.nc} class names); fix the label or add the class name"
            )
        return cls, coords


def _check_unit(where: str, parts: list[str], values: list[float]) -> None:
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise DatasetFormatError(
            f"{where}: coordinates must be normalised to 0..1, found {' '.join(parts)}; fix the line"
        )
