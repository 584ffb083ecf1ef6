"""Dataset formats, registered explicitly in one table: ``FORMATS[key]``.

Each format module holds its reader and writer side by side (``yolo``, ``coco``, ``voc``,
``imagefolder``, ...); all readers produce the records of
:mod:`desktop_app.core.dataset_records`.
"""

from __future__ import annotations

from pathlib import Path

from desktop_app.core.dataset_records import Problems, Progress, ScannedDataset
from desktop_app.core.errors import DatasetFormatError, InvalidArgumentError
from desktop_app.core.formats import coco, createml, cvat, imagefolder, labelstudio, voc, yolo
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities

__all__ = [
    "FORMATS",
    "DatasetFormat",
    "FormatCapabilities",
    "detect_format",
    "get_format",
    "read_dataset",
]

# Detection tries these in order: the most specific layout first. Class folders
# ({train,val}/<class>/*.jpg, also YOLO's classification layout) come last and detect as
# "imagefolder"; pass --format yolo to record them as YOLO.
FORMATS: dict[str, DatasetFormat] = {
    f.key: f
    for f in (
        voc.FORMAT,
        cvat.FORMAT,  # an XML file whose root is <annotations>
        createml.FORMAT,  # a JSON list of {"image", "annotations"}: before COCO's any-*.json
        labelstudio.FORMAT,  # a JSON list of {"data", ...} tasks: before COCO too
        yolo.FORMAT,
        coco.FORMAT,
        imagefolder.FORMAT,
    )
}


def get_format(key: str) -> DatasetFormat:
    """The format named ``key``.

    Raises:
        InvalidArgumentError: no such format.
    """
    try:
        return FORMATS[key]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown dataset format {key!r}; use one of {', '.join(sorted(FORMATS))}"
        ) from None


def detect_format(path: Path) -> DatasetFormat:
    """The first format whose layout ``path`` matches.

    Raises:
        DatasetFormatError: the path does not exist or matches no format.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetFormatError(f"{p} does not exist; check the path")
    for fmt in FORMATS.values():
        if fmt.detect(p):
            return fmt
    raise DatasetFormatError(
        f"cannot tell the format of {p} (expected YOLO images/ + labels/, COCO *.json, VOC Annotations/, or class folders like train/<class>/*.jpg); pass --format"
    )


def read_dataset(
    path: Path,
    fmt: str = "auto",
    progress: Progress | None = None,
    *,
    lenient: bool = False,
) -> ScannedDataset:
    """Read and validate a dataset folder (or file) in format ``fmt`` ("auto" detects it).

    ``lenient`` keeps what is valid and lists the rest in ``ScannedDataset.problems``;
    otherwise the first problem raises.

    Raises:
        DatasetFormatError: the dataset is invalid (one line naming the file and problem).
        InvalidArgumentError: ``fmt`` is not a known format.
    """
    chosen = detect_format(path) if fmt == "auto" else get_format(fmt)
    return chosen.read(Path(path), progress, Problems(lenient) if lenient else None)
