"""Look at a dataset on disk before importing it: format, images, classes, every problem."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from desktop_app.core.dataset_archive import opened_source
from desktop_app.core.dataset_qa import QARecord, check_records
from desktop_app.core.dataset_records import Problems, Progress, ScannedDataset
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats import DatasetFormat, detect_format, get_format

FLAGS = ("iscrowd", "difficult", "truncated", "polygons", "keypoints", "rle")
# Findings analyze reports in its own words (or as problems) rather than as QA warnings.
_OWN_WARNINGS = ("import_problems", "background", "duplicate_images", "empty_classes")


def analyze_dataset(
    path: Path | str, fmt: str = "auto", progress: Progress | None = None
) -> dict[str, Any]:
    """Detect the format of ``path`` and report what an import would store; writes nothing.

    The source is read leniently, so ``problems`` lists every problem at once (each one a
    strict import would stop at; a lenient import skips them); ``ok`` is True when there is
    none. A source that is not a dataset at all gives one problem. Things an import accepts
    but a person should know go to ``warnings``, including the QA report's findings
    (:mod:`desktop_app.core.dataset_qa`) on the records as read.

    Returns:
        ``{"path", "format", "ok", "problems", "warnings", "task", "images",
        "unlabelled_images", "classes", "annotations", "annotations_per_class", "splits",
        "background_images", "flags": {"iscrowd", "difficult", "truncated", "polygons",
        "keypoints", "rle"}, "duplicate_images", "keypoint_shape", "qa": [finding, ...]}``
        (a finding as in :func:`desktop_app.core.dataset_qa.qa_report`).

    Raises:
        InvalidArgumentError: ``fmt`` is not a known format.
    """
    source = Path(path).expanduser()
    report: dict[str, Any] = {
        "path": str(source.resolve()),
        "format": None,
        "ok": False,
        "problems": [],
        "warnings": [],
        "task": None,
        "images": 0,
        "unlabelled_images": 0,
        "classes": [],
        "annotations": 0,
        "annotations_per_class": {},
        "splits": {},
        "background_images": 0,
        "flags": {},
        "duplicate_images": 0,
        "keypoint_shape": None,
        "qa": [],
    }
    chosen: DatasetFormat | None = None if fmt == "auto" else get_format(fmt)
    problems = Problems(lenient=True)
    try:
        with opened_source(source) as folder:
            chosen = chosen or detect_format(folder)
            report["format"] = chosen.key
            scanned = chosen.read(folder, progress, problems)
    except DatasetFormatError as exc:  # not readable as a dataset at all
        report["problems"] = [*problems.messages, str(exc)]
        return report
    report.update(_describe(scanned))
    # A reader that returns before inspect_images may leave messages only in the collector.
    report["problems"] = list(dict.fromkeys([*problems.messages, *scanned.problems]))
    report["ok"] = not report["problems"]
    return report


def _describe(scanned: ScannedDataset) -> dict[str, Any]:
    names = scanned.class_names
    per_class = dict.fromkeys(names, 0)
    flags: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    background = unlabelled = 0
    records: list[QARecord] = []
    for img in scanned.images:
        splits[img.source_split or "unassigned"] += 1
        unlabelled += not img.labelled
        background += img.labelled and not img.boxes
        for a in img.boxes:
            if 0 <= a.cls < len(names):
                per_class[names[a.cls]] += 1
            for key in FLAGS:
                flags[key] += bool(getattr(a, key))
        records.append(
            QARecord(
                img.file_name,
                img.width,
                img.height,
                [(a.cls, a.cx, a.cy, a.w, a.h) for a in img.boxes],
                "labelled" if img.labelled else "unlabelled",
                img.sha256,
            )
        )
    found = check_records(records, names)
    duplicates = found["duplicate_images"].count
    warnings = [f"class {n!r} has no annotations" for n, c in per_class.items() if c == 0]
    if background:
        warnings.append(f"{background} images have no annotations (stored as background)")
    if duplicates:
        warnings.append(f"{duplicates} images are byte-identical copies of another image")
    if flags["iscrowd"]:
        warnings.append(
            f"{flags['iscrowd']} crowd annotations (iscrowd) are kept as boxes and flagged"
        )
    warnings += [f.line() for key, f in found.items() if f.count and key not in _OWN_WARNINGS]
    return {
        "task": scanned.task,
        "images": len(scanned.images),
        "unlabelled_images": unlabelled,
        "classes": list(names),
        "annotations": sum(len(img.boxes) for img in scanned.images),
        "annotations_per_class": per_class,
        "splits": dict(sorted(splits.items())),
        "background_images": background,
        "flags": {k: flags[k] for k in FLAGS},
        "duplicate_images": duplicates,
        "keypoint_shape": list(scanned.keypoint_shape) if scanned.keypoint_shape else None,
        "qa": [f.to_dict() for key, f in found.items() if f.count and key != "import_problems"],
        "warnings": warnings,
    }
