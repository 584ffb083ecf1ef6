"""What a dataset format plugin is: a key, a detector, a reader and a writer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from desktop_app.core.dataset_records import (
    CopyImage,
    ExportDataset,
    Problems,
    Progress,
    ScannedDataset,
)

# read(path, progress, problems): problems=None means strict (raise on the first problem).
Reader = Callable[[Path, "Progress | None", "Problems | None"], ScannedDataset]
Writer = Callable[[ExportDataset, Path, CopyImage], None]


@dataclass(frozen=True)
class FormatCapabilities:
    """What a format can hold beyond class boxes (an export drops what it cannot hold)."""

    tasks: frozenset[str] = frozenset({"detect"})
    polygons: bool = False
    keypoints: bool = False
    rle: bool = False
    iscrowd: bool = False
    difficult: bool = False
    truncated: bool = False
    unlabelled: bool = False  # can tell an unlabelled image from a background one


@dataclass(frozen=True)
class DatasetFormat:
    """One on-disk dataset format.

    Args:
        key: The name users type (``--format coco``).
        title: A human name.
        detect: True when a folder or file looks like this format (cheap: names, not content).
        read: Validates everything and returns the common records; raises DatasetFormatError.
        write: Writes a version into an empty folder, copying images with ``copy_image``.
        capabilities: What it holds beyond boxes.
    """

    key: str
    title: str
    detect: Callable[[Path], bool]
    read: Reader
    write: Writer
    capabilities: FormatCapabilities
