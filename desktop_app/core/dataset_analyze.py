"""Look at a dataset on disk before importing it: format, images, classes, problems."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from desktop_app.core.dataset_archive import opened_source
from desktop_app.core.dataset_records import Progress, ScannedDataset
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats import DatasetFormat, detect_format, get_format


def analyze_dataset(
    path: Path | str, fmt: str = "auto", progress: Progress | None = None
) -> dict[str, Any]:
    """Detect the format of ``path`` and report what an import would store; writes nothing.

    Problems that stop an import go to ``problems`` (and ``ok`` is False); things an import
    accepts but a person should know go to ``warnings``.

    Returns:
        ``{"path", "format", "ok", "problems", "warnings", "images", "classes",
        "annotations", "annotations_per_class", "splits", "background_images",
        "flags": {"iscrowd", "difficult", "truncated", "polygons"}, "duplicate_images"}``.

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
        "images": 0,
        "classes": [],
        "annotations": 0,
        "annotations_per_class": {},
        "splits": {},
        "background_images": 0,
        "flags": {},
        "duplicate_images": 0,
    }
    chosen: DatasetFormat | None = None if fmt == "auto" else get_format(fmt)
    try:
        with opened_source(source) as folder:
            chosen = chosen or detect_format(folder)
            report["format"] = chosen.key
            scanned = chosen.read(folder, progress, None)
    except DatasetFormatError as exc:
        report["problems"].append(str(exc))
        return report
    report.update(_describe(scanned))
    report["ok"] = True
    return report


def _describe(scanned: ScannedDataset) -> dict[str, Any]:
    names = scanned.class_names
    per_class = dict.fromkeys(names, 0)
    flags: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    background = 0
    for img in scanned.images:
        splits[img.source_split or "unassigned"] += 1
        background += not img.boxes
        for a in img.boxes:
            per_class[names[a.cls]] += 1
            for key in ("iscrowd", "difficult", "truncated", "polygons"):
                flags[key] += bool(getattr(a, key))
    shas = Counter(img.sha256 for img in scanned.images)
    duplicates = sum(n - 1 for n in shas.values() if n > 1)
    warnings = [f"class {n!r} has no annotations" for n, c in per_class.items() if c == 0]
    if background:
        warnings.append(f"{background} images have no annotations (stored as background)")
    if duplicates:
        warnings.append(f"{duplicates} images are byte-identical copies of another image")
    if flags["iscrowd"]:
        warnings.append(
            f"{flags['iscrowd']} crowd annotations (iscrowd) are kept as boxes and flagged; their masks are not kept"
        )
    return {
        "images": len(scanned.images),
        "classes": list(names),
        "annotations": sum(per_class.values()),
        "annotations_per_class": per_class,
        "splits": dict(sorted(splits.items())),
        "background_images": background,
        "flags": {k: flags[k] for k in ("iscrowd", "difficult", "truncated", "polygons")},
        "duplicate_images": duplicates,
        "warnings": warnings,
    }
