"""YOLO detection folders: ``images/{split}/``, ``labels/{split}/*.txt``, ``data.yaml``.

The reader is :func:`desktop_app.core.dataset_yolo.scan_yolo`; the writer is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from desktop_app.core.dataset_records import (
    Annotation,
    CopyImage,
    ExportDataset,
    Problems,
    Progress,
    ScannedDataset,
)
from desktop_app.core.dataset_yolo import NAME_FILES, scan_yolo
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities
from runtimes.fileio import atomic_write_text


def detect(path: Path) -> bool:
    if path.is_file():
        return path.name in NAME_FILES
    return (path / "images").is_dir() and (path / "labels").is_dir()


def read(
    path: Path, progress: Progress | None = None, problems: Problems | None = None
) -> ScannedDataset:
    return scan_yolo(path, progress)


def write(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """Write a version as a YOLO folder that Ultralytics trains on and :func:`read` reads."""
    write_tree(data, out, copy_image, yaml_path=None)


def write_tree(
    data: ExportDataset, out: Path, copy_image: CopyImage, yaml_path: str | None
) -> None:
    """The YOLO tree; ``yaml_path`` goes into ``data.yaml`` as ``path:`` when given."""
    for item in data.items:
        copy_image(item.sha256, out / "images" / item.split / item.file_name)
        label = (out / "labels" / item.split / item.file_name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(label_line(a) for a in item.annotations), encoding="utf-8")
    for split in data.splits:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    counts = {s: sum(1 for i in data.items if i.split == s) for s in data.splits}
    doc: dict[str, Any] = {} if yaml_path is None else {"path": yaml_path}
    doc["train"] = "images/train"
    doc["val"] = "images/val" if counts.get("val") else "images/train"
    if counts.get("test"):
        doc["test"] = "images/test"
    doc["nc"] = len(data.class_names)
    doc["names"] = dict(enumerate(data.class_names))
    header = (
        f"# {data.name} {data.version} (content hash {data.content_hash}), written by Outpost\n"
    )
    atomic_write_text(
        out / "data.yaml", header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    )


def label_line(a: Annotation) -> str:
    return f"{a.cls} {a.cx:.6f} {a.cy:.6f} {a.w:.6f} {a.h:.6f}\n"


FORMAT = DatasetFormat(
    key="yolo",
    title="YOLO (Ultralytics detection)",
    detect=detect,
    read=read,
    write=write,
    capabilities=FormatCapabilities(),
)
