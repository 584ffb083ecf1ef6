"""Read and validate a YOLO detection dataset on disk, without writing anything.

Accepted layouts (class names from ``data.yaml``/``data.yml`` ``names:``, list or dict, or
from ``classes.txt`` at the top or in ``labels/``)::

    images/*.jpg          labels/*.txt                       (flat; Outpost splits it)
    images/train/*.jpg    labels/train/*.txt  (+ val, test)  (the source's split is kept)

Images may sit in sub-folders; the label of ``images/<split>/a/b.jpg`` is
``labels/<split>/a/b.txt``. An image without a label file is a background image (no boxes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from desktop_app.core.dataset_records import (
    IMAGE_SUFFIXES,
    Annotation,
    Progress,
    ScannedDataset,
    ScannedImage,
    SourceImage,
    inspect_images,
)
from desktop_app.core.errors import DatasetFormatError

__all__ = [
    "Progress",
    "ScannedDataset",
    "ScannedImage",
    "names_from_txt",
    "read_class_names",
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


def scan_yolo(
    path: Path, progress: Progress | None = None, workers: int | None = None
) -> ScannedDataset:
    """Validate a YOLO detection dataset completely and return what it holds.

    Args:
        path: The dataset folder (the one holding ``images/`` and ``labels/``), or its
            ``data.yaml``.
        progress: Called as ``progress("validate", done, total)`` while images are decoded.
        workers: Threads that decode images (default: up to 8).

    Raises:
        DatasetFormatError: on the first problem, naming the file and what is wrong.
    """
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
    entries, has_split = _find_entries(root)
    if not entries:
        raise DatasetFormatError(
            f"not a YOLO dataset: {images_dir} holds no images (.jpg, .png, ...); add images"
        )
    names = read_class_names(root)
    _check_orphan_labels(root, entries)
    sources = [
        SourceImage(e.file_name, e.image, e.split, _read_label(e.label, len(names)))
        for e in entries
    ]
    return inspect_images(root, "yolo", names, sources, has_split, progress, workers)


# ---- layout ----------------------------------------------------------------------------


def _find_entries(root: Path) -> tuple[list[_Entry], bool]:
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
    for d in split_dirs:
        split = SPLIT_DIRS[d.name.lower()]
        for p in _image_files(d):
            e = _entry(p, d, labels_dir / d.name, split)
            key = f"{split}/{e.file_name}"
            if key in seen:
                raise DatasetFormatError(
                    f"{p} and {seen[key]} are both in the {split} split under one name; rename one"
                )
            seen[key] = p
            entries.append(e)
    names_by_split: dict[str, str] = {}
    for e in entries:
        other = names_by_split.setdefault(e.file_name, e.split or "")
        if other != e.split:
            raise DatasetFormatError(
                f"{e.image} has the same name as an image in images/{other}/; rename one (names must be unique across splits)"
            )
    return entries, True


def _image_files(folder: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(
            Path(dirpath) / f
            for f in sorted(filenames)
            if _is_image(Path(f)) and not f.startswith(".")
        )
    return sorted(out)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _entry(image: Path, split_root: Path, label_root: Path, split: str | None) -> _Entry:
    rel = image.relative_to(split_root)
    return _Entry(rel.as_posix(), image, (label_root / rel).with_suffix(".txt"), split)


def _check_orphan_labels(root: Path, entries: list[_Entry]) -> None:
    labels_dir = root / "labels"
    expected: dict[Path, Path] = {}
    for e in entries:
        if e.label in expected:
            raise DatasetFormatError(
                f"{e.image} and {expected[e.label]} share the label file {e.label}; rename one image"
            )
        expected[e.label] = e.image
    for dirpath, dirnames, filenames in os.walk(labels_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.suffix != ".txt" or f.startswith(".") or p == labels_dir / "classes.txt":
                continue
            if p not in expected:
                image_dir = root / "images" / p.parent.relative_to(labels_dir)
                raise DatasetFormatError(
                    f"label {p} has no image (expected {image_dir / p.stem}.jpg or .png); add the image or remove the label"
                )


# ---- class names -----------------------------------------------------------------------


def read_class_names(root: Path) -> tuple[str, ...]:
    """Class names from ``data.yaml``/``data.yml`` (``names``), else ``classes.txt``.

    Raises:
        DatasetFormatError: no names file, or its names are malformed.
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
    raise DatasetFormatError(
        f"no class names: {root} has no data.yaml with names: and no classes.txt; add one (one class name per line)"
    )


def _names_from_yaml(p: Path) -> tuple[str, ...] | None:
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetFormatError(f"{p} cannot be read as YAML ({reason}); fix the file") from None
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


# ---- labels ----------------------------------------------------------------------------


def _read_label(p: Path, nc: int) -> tuple[Annotation, ...]:
    if not p.is_file():
        return ()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(
            f"{p} cannot be read ({type(exc).__name__}); save it as UTF-8 text"
        ) from None
    return tuple(_parse_line(p, n, line, nc) for n, line in _numbered_lines(text))


def _numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, line


def _parse_line(p: Path, n: int, line: str, nc: int) -> Annotation:
    where = f"{p}:{n}"
    parts = line.split()
    if len(parts) != 5:
        hint = (
            "polygons (segmentation) are not supported; "
            if len(parts) > 5 and len(parts) % 2 == 1
            else ""
        )
        raise DatasetFormatError(
            f"{where}: expected 5 numbers (class cx cy w h), found {len(parts)}; {hint}fix the line"
        )
    try:
        cls_f = float(parts[0])
        coords = [float(v) for v in parts[1:]]
    except ValueError:
        raise DatasetFormatError(
            f"{where}: {line.strip()!r} is not 5 numbers (class cx cy w h); fix the line"
        ) from None
    if not cls_f.is_integer():
        raise DatasetFormatError(
            f"{where}: class id {parts[0]} is not a whole number; fix the line"
        )
    cls = int(cls_f)
    if not 0 <= cls < nc:
        raise DatasetFormatError(
            f"{where}: class id {cls} is out of range 0..{nc - 1} ({nc} class names); fix the label or add the class name"
        )
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in coords):
        raise DatasetFormatError(
            f"{where}: coordinates must be normalised to 0..1, found {' '.join(parts[1:])}; fix the line"
        )
    if coords[2] <= 0 or coords[3] <= 0:
        raise DatasetFormatError(
            f"{where}: box width and height must be positive, found {parts[3]} {parts[4]}; fix the line"
        )
    return Annotation(cls, coords[0], coords[1], coords[2], coords[3])
