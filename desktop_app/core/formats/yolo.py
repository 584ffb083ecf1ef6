"""YOLO (Ultralytics) datasets for every task: detect, segment, pose and classify.

Detect, segment and pose: ``images/{split}/``, ``labels/{split}/*.txt``, ``data.yaml``
(``kpt_shape`` for pose); the reader is :func:`desktop_app.core.dataset_yolo.scan_yolo`.
Classify: ``{train,val,test}/<class>/*.jpg`` without ``images/``, read by
:func:`desktop_app.core.formats.imagefolder.scan_class_folders` (a ``data.yaml`` ``names:``
list, when present, gives the class order). ``--format auto`` calls that layout
``imagefolder``; the records are the same.

The writer follows the dataset's task. A labelled image without objects gets an empty label
file (background); an unlabelled image gets none. Segment lines hold one outline per object:
an object with several outlines keeps its largest, and an object with only a box gets the
box's four corners. Pose lines hold ``x y v`` keypoints (``kpt_shape: [K, 3]``); ``flip_idx``
is not written. Classification images without a class are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from desktop_app.core.dataset_records import (
    TASKS,
    Annotation,
    CopyImage,
    ExportDataset,
    Problems,
    Progress,
    ScannedDataset,
    exact_text,
)
from desktop_app.core.dataset_yolo import NAME_FILES, find_class_names, scan_yolo
from desktop_app.core.formats import imagefolder
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities
from runtimes.fileio import atomic_write_text


def detect(path: Path) -> bool:
    if path.is_file():
        return path.name in NAME_FILES
    return (path / "images").is_dir() and (path / "labels").is_dir()


def read(
    path: Path, progress: Progress | None = None, problems: Problems | None = None
) -> ScannedDataset:
    """Read any YOLO layout: the classification one when there is no ``images/`` folder."""
    root = Path(path).expanduser()
    if root.is_file() and root.name in NAME_FILES:
        root = root.parent
    if (
        root.is_dir()
        and not (root / "images").is_dir()
        and imagefolder.looks_like_class_folders(root)
    ):
        names = find_class_names(root.resolve())
        return imagefolder.scan_class_folders(root, "yolo", progress, problems, names)
    return scan_yolo(path, progress, problems=problems)


def write(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """Write a version as a YOLO folder that Ultralytics trains on and :func:`read` reads."""
    write_tree(data, out, copy_image, yaml_path=None)


def write_tree(
    data: ExportDataset, out: Path, copy_image: CopyImage, yaml_path: str | None
) -> None:
    """The YOLO tree of the version's task; ``yaml_path`` goes into ``data.yaml`` as ``path:``."""
    doc: dict[str, Any] = {} if yaml_path is None else {"path": yaml_path}
    counts = {s: sum(1 for i in data.items if i.split == s) for s in data.splits}
    if data.task == "classify":
        imagefolder.write_class_folders(data, out, copy_image)
        doc["train"] = "train"
        doc["val"] = "val" if counts.get("val") else "train"
        if counts.get("test"):
            doc["test"] = "test"
    else:
        _write_labels(data, out, copy_image)
        doc["train"] = "images/train"
        doc["val"] = "images/val" if counts.get("val") else "images/train"
        if counts.get("test"):
            doc["test"] = "images/test"
    doc["nc"] = len(data.class_names)
    doc["names"] = dict(enumerate(data.class_names))
    if data.task == "pose":
        doc["kpt_shape"] = [_keypoint_count(data), 3]
    header = (
        f"# {data.name} {data.version} (content hash {data.content_hash}), written by Outpost\n"
    )
    atomic_write_text(
        out / "data.yaml", header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    )


def _write_labels(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    k = _keypoint_count(data) if data.task == "pose" else 0
    for item in data.items:
        copy_image(item.sha256, out / "images" / item.split / item.file_name)
        label = (out / "labels" / item.split / item.file_name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        if item.label_status == "unlabelled":
            continue  # no label file: the image is unlabelled, not background
        if data.task == "segment":
            text = "".join(polygon_line(a) for a in item.annotations)
        elif data.task == "pose":
            text = "".join(pose_line(a, k) for a in item.annotations)
        else:
            text = "".join(label_line(a) for a in item.annotations)
        label.write_text(text, encoding="utf-8")  # inside the export's temp folder
    for split in data.splits:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)


def _keypoint_count(data: ExportDataset) -> int:
    if data.keypoint_shape is not None:
        return data.keypoint_shape[0]
    return max((len(a.keypoints) // 3 for i in data.items for a in i.annotations), default=0) or 1


def label_line(a: Annotation) -> str:
    """A detection line: ``cls cx cy w h``."""
    return f"{a.cls} {exact_text(a.cx)} {exact_text(a.cy)} {exact_text(a.w)} {exact_text(a.h)}\n"


def polygon_line(a: Annotation) -> str:
    """A segmentation line: ``cls x1 y1 x2 y2 ...`` (the largest outline, else the box)."""
    if a.polygons:
        points = max(a.polygons, key=polygon_area)
    else:
        x0, y0, x1, y1 = a.xyxy
        points = (x0, y0, x1, y0, x1, y1, x0, y1)
    return f"{a.cls} " + " ".join(exact_text(v) for v in points) + "\n"


def pose_line(a: Annotation, k: int) -> str:
    """A pose line: the box and ``k`` keypoints ``x y v`` (missing ones as ``0 0 0``)."""
    kps = list(a.keypoints[: 3 * k]) + [0.0] * max(0, 3 * k - len(a.keypoints))
    parts = [
        f"{exact_text(kps[i])} {exact_text(kps[i + 1])} {int(kps[i + 2])}"
        for i in range(0, 3 * k, 3)
    ]
    return label_line(a).rstrip("\n") + " " + " ".join(parts) + "\n"


def polygon_area(points: tuple[float, ...]) -> float:
    """The area of a flat ``(x0, y0, x1, y1, ...)`` outline (shoelace)."""
    xs, ys = points[0::2], points[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


FORMAT = DatasetFormat(
    key="yolo",
    title="YOLO (Ultralytics: detect, segment, pose, classify)",
    detect=detect,
    read=read,
    write=write,
    # Polygons and keypoints are the segment and pose tasks' own data here, not extras that
    # ride along with other tasks: a detect export drops them (see dataset_export).
    capabilities=FormatCapabilities(tasks=frozenset(TASKS), unlabelled=True),
)
