"""The QA report of a dataset version: what is wrong or worth a look, grouped by check.

The checks run on plain records (:class:`QARecord`: file name, size, stored boxes, label
status, sha256), so the same code reports on a stored version (:func:`qa_report`) and on a
dataset on disk before it is imported (:func:`desktop_app.core.dataset_analyze.analyze_dataset`).

Each check has a severity: ``error`` (the annotations are wrong: a box outside the image or
without area, an unknown class, a stored image whose size differs from its record),
``warning`` (worth fixing: duplicate or tiny boxes, unlabelled or unreviewed images, repeated
images, imbalanced or empty classes, what a lenient import skipped) or ``info`` (background
images: labelled, with nothing in them).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from desktop_app.core.dataset_draft import get_draft
from desktop_app.core.dataset_records import max_image_pixels
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import Dataset, DatasetItem, DatasetVersion
from runtimes.errors import ImageDecodeError
from runtimes.preprocess import decode_image

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

__all__ = [
    "CHECKS",
    "Finding",
    "QARecord",
    "check_records",
    "qa_report",
]

SEVERITIES = ("error", "warning", "info")
EPS = 1e-6  # normalised coordinates may stray this far outside 0..1 (float rounding)

# key → (severity, what a finding means); the order is the report's order.
CHECKS: dict[str, tuple[str, str]] = {
    "unknown_class": ("error", "annotations with a class id outside the class list"),
    "outside_image": ("error", "boxes outside the image"),
    "zero_area": ("error", "boxes with zero or negative width or height"),
    "image_size": ("error", "stored images whose decoded size differs from their record"),
    "duplicate_boxes": ("warning", "duplicate boxes (same class, overlapping almost fully)"),
    "tiny_boxes": ("warning", "tiny boxes"),
    "unlabelled": ("warning", "images without labels"),
    "needs_review": ("warning", "images whose proposals await review"),
    "duplicate_images": ("warning", "images stored more than once (same content)"),
    "empty_classes": ("warning", "classes without annotations"),
    "class_imbalance": ("warning", "class imbalance"),
    "import_problems": ("warning", "problems a lenient import skipped"),
    "background": ("info", "background images (labelled, nothing in them)"),
}


@dataclass(frozen=True)
class QARecord:
    """One image as the checks see it.

    Args:
        file_name: The image's name in the dataset.
        width: Width in pixels.
        height: Height in pixels.
        boxes: Stored annotations, ``[cls, cx, cy, w, h, {extras}?]`` normalised.
        status: ``labelled``, ``unlabelled`` or ``needs_review``.
        sha256: The image content's sha256 ("" when unknown).
    """

    file_name: str
    width: int
    height: int
    boxes: Sequence[Sequence[Any]]
    status: str = "labelled"
    sha256: str = ""


@dataclass
class Finding:
    """Everything one check found: a count and the first few examples."""

    check: str
    severity: str
    title: str
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, file_name: str | None, detail: str, annotation: int | None, limit: int) -> None:
        """Count one finding, keeping it as an example while fewer than ``limit`` are kept."""
        self.count += 1
        if len(self.examples) < limit:
            self.examples.append(
                {"file_name": file_name, "annotation": annotation, "detail": detail}
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity,
            "title": self.title,
            "count": self.count,
            "examples": list(self.examples),
        }

    def line(self) -> str:
        """One readable line: the count, the title and the first example."""
        text = f"{self.count} {self.title}"
        if self.examples:
            ex = self.examples[0]
            where = ex["file_name"] or ""
            if ex["annotation"] is not None:
                where += f" annotation {ex['annotation']}"
            text += f" (e.g. {where + ': ' if where else ''}{ex['detail']})"
        return text


def check_records(
    records: Iterable[QARecord],
    class_names: Sequence[str],
    *,
    tiny_px: float = 4,
    duplicate_iou: float = 0.95,
    imbalance_ratio: float = 10.0,
    problems: Sequence[str] = (),
    max_examples: int = 20,
) -> dict[str, Finding]:
    """Run every record-level check; returns one :class:`Finding` per check in :data:`CHECKS`.

    Args:
        records: The images.
        class_names: Class names in class-id order.
        tiny_px: A box narrower or lower than this many pixels is tiny.
        duplicate_iou: Two boxes of one class in one image overlapping at least this much
            (intersection over union) are duplicates.
        imbalance_ratio: Warn when the most frequent class has more than this many times the
            annotations of the least frequent one (among classes that have any).
        problems: Messages a lenient import recorded (reported as ``import_problems``).
        max_examples: Examples kept per check.

    Raises:
        InvalidArgumentError: a threshold is out of range.
    """
    _check_thresholds(tiny_px, duplicate_iou, imbalance_ratio)
    found = {key: Finding(key, sev, title) for key, (sev, title) in CHECKS.items()}
    per_class = Counter[int]()
    first_of: dict[str, str] = {}
    n = len(class_names)
    for rec in records:
        if rec.sha256:
            if rec.sha256 in first_of:
                found["duplicate_images"].add(
                    rec.file_name,
                    f"same content as {first_of[rec.sha256]}",
                    None,
                    max_examples,
                )
            else:
                first_of[rec.sha256] = rec.file_name
        if rec.status == "unlabelled":
            found["unlabelled"].add(rec.file_name, "no labels yet", None, max_examples)
        elif rec.status == "needs_review":
            found["needs_review"].add(
                rec.file_name, f"{len(rec.boxes)} proposals to review", None, max_examples
            )
        elif not rec.boxes:
            found["background"].add(rec.file_name, "labelled, no objects", None, max_examples)
        boxes: list[tuple[int, int, float, float, float, float]] = []
        for i, row in enumerate(rec.boxes):
            cls = int(row[0])
            cx, cy, w, h = (float(v) for v in row[1:5])
            if not 0 <= cls < n:
                found["unknown_class"].add(
                    rec.file_name, f"class id {cls}, the classes are 0..{n - 1}", i, max_examples
                )
            else:
                per_class[cls] += 1
            if w <= 0 or h <= 0:
                found["zero_area"].add(
                    rec.file_name, f"width {w:g}, height {h:g} (normalised)", i, max_examples
                )
                continue
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            if x0 < -EPS or y0 < -EPS or x1 > 1 + EPS or y1 > 1 + EPS:
                found["outside_image"].add(
                    rec.file_name,
                    f"corners ({x0:.4f}, {y0:.4f}, {x1:.4f}, {y1:.4f}) leave 0..1",
                    i,
                    max_examples,
                )
            wp, hp = w * rec.width, h * rec.height
            if wp < tiny_px or hp < tiny_px:
                found["tiny_boxes"].add(
                    rec.file_name,
                    f"{wp:.1f}×{hp:.1f} pixels, under {tiny_px:g}",
                    i,
                    max_examples,
                )
            boxes.append((i, cls, x0, y0, x1, y1))
        for i, j, iou in _duplicates(boxes, duplicate_iou):
            found["duplicate_boxes"].add(
                rec.file_name, f"overlaps annotation {i} (IoU {iou:.3f})", j, max_examples
            )
    for cid, name in enumerate(class_names):
        if per_class[cid] == 0:
            found["empty_classes"].add(None, f"class {name!r} has no annotations", None, 1 << 30)
    counts = {cid: c for cid, c in per_class.items() if c > 0}
    if len(counts) >= 2:
        most = max(counts, key=lambda c: (counts[c], -c))
        least = min(counts, key=lambda c: (counts[c], c))
        ratio = counts[most] / counts[least]
        if ratio > imbalance_ratio:
            found["class_imbalance"].add(
                None,
                f"{class_names[most]!r} has {counts[most]} annotations, {class_names[least]!r} "
                f"{counts[least]} ({ratio:.1f}×, over {imbalance_ratio:g}×)",
                None,
                max_examples,
            )
    for message in problems:
        found["import_problems"].add(None, message, None, max_examples)
    return found


def _check_thresholds(tiny_px: float, duplicate_iou: float, imbalance_ratio: float) -> None:
    if not tiny_px >= 0:
        raise InvalidArgumentError(f"tiny_px must be 0 or more pixels, got {tiny_px!r}; try 4")
    if not 0 < duplicate_iou <= 1:
        raise InvalidArgumentError(
            f"duplicate_iou must be in (0, 1], got {duplicate_iou!r}; try 0.95"
        )
    if not imbalance_ratio >= 1:
        raise InvalidArgumentError(
            f"imbalance_ratio must be 1 or more, got {imbalance_ratio!r}; try 10"
        )


def _duplicates(
    boxes: list[tuple[int, int, float, float, float, float]], threshold: float
) -> list[tuple[int, int, float]]:
    """``(earlier index, later index, IoU)`` for same-class pairs at or over ``threshold``."""
    if len(boxes) < 2:
        return []
    by_class: dict[int, list[tuple[int, int, float, float, float, float]]] = defaultdict(list)
    for b in boxes:
        by_class[b[1]].append(b)
    out: list[tuple[int, int, float]] = []
    for group in by_class.values():
        if len(group) < 2:
            continue
        arr = np.array([b[2:] for b in group], dtype=np.float64)
        x0 = np.maximum(arr[:, None, 0], arr[None, :, 0])
        y0 = np.maximum(arr[:, None, 1], arr[None, :, 1])
        x1 = np.minimum(arr[:, None, 2], arr[None, :, 2])
        y1 = np.minimum(arr[:, None, 3], arr[None, :, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (arr[:, 2] - arr[:, 0]) * (arr[:, 3] - arr[:, 1])
        iou = inter / (area[:, None] + area[None, :] - inter)
        seen: set[int] = set()
        for later in range(1, len(group)):
            for earlier in range(later):
                if earlier not in seen and iou[earlier, later] >= threshold:
                    out.append((group[earlier][0], group[later][0], float(iou[earlier, later])))
                    seen.add(later)
                    break
    return sorted(out, key=lambda t: t[1])


def qa_report(
    ws: Workspace,
    name: str,
    version: str | int | None = None,
    *,
    tiny_px: float = 4,
    duplicate_iou: float = 0.95,
    imbalance_ratio: float = 10.0,
    deep: bool = False,
    max_examples: int = 20,
) -> dict[str, Any]:
    """The QA report of a stored version (the latest by default, or ``"draft"``).

    Args:
        ws: The open workspace.
        name: The dataset.
        version: ``"v2"``, ``2``, ``"draft"``, or None for the latest numbered version.
        tiny_px: Boxes narrower or lower than this many pixels are reported as tiny.
        duplicate_iou: Same-class boxes of one image overlapping at least this much are
            reported as duplicates.
        imbalance_ratio: Report class imbalance above this max/min annotation ratio.
        deep: Also decode every stored image and compare its size with the stored one.
        max_examples: Examples kept per check.

    Returns:
        ``{"dataset", "version", "task", "images", "annotations", "ok", "errors",
        "warnings", "infos", "findings": [{"check", "severity", "title", "count",
        "examples": [{"file_name", "annotation", "detail"}]}], "checked": [...], "deep"}``;
        ``findings`` lists only checks that found something, errors first; ``ok`` is True
        when no error-level check did.

    Raises:
        NotFoundError: no such dataset, version or draft.
        InvalidArgumentError: the version or a threshold is not valid.
    """
    with ws.session() as s:
        dataset, row = _resolve(s, name, version)
        items = s.execute(
            select(
                DatasetItem.file_name,
                DatasetItem.width,
                DatasetItem.height,
                DatasetItem.boxes,
                DatasetItem.label_status,
                DatasetItem.image_sha256,
            )
            .where(DatasetItem.version_id == row.id)
            .order_by(DatasetItem.file_name)
        ).all()
        label, class_names, task = row.label, list(row.class_names), dataset.task
        problems = [str(p) for p in (row.problems or [])]
    records = [QARecord(fn, w, h, boxes or [], st, sha) for fn, w, h, boxes, st, sha in items]
    found = check_records(
        records,
        class_names,
        tiny_px=tiny_px,
        duplicate_iou=duplicate_iou,
        imbalance_ratio=imbalance_ratio,
        problems=problems,
        max_examples=max_examples,
    )
    checked = [k for k in CHECKS if k != "image_size" or deep]
    if deep:
        _check_stored_sizes(ws, records, found["image_size"], max_examples)
    findings = sorted(
        (f for f in found.values() if f.count),
        key=lambda f: (SEVERITIES.index(f.severity), list(CHECKS).index(f.check)),
    )
    totals = Counter[str]()
    for f in findings:
        totals[f.severity] += f.count
    return {
        "dataset": name,
        "version": label,
        "task": task,
        "images": len(records),
        "annotations": sum(len(r.boxes) for r in records),
        "ok": totals["error"] == 0,
        "errors": totals["error"],
        "warnings": totals["warning"],
        "infos": totals["info"],
        "findings": [f.to_dict() for f in findings],
        "checked": checked,
        "deep": deep,
    }


def _resolve(s: Session, name: str, version: str | int | None) -> tuple[Dataset, DatasetVersion]:
    if isinstance(version, str) and version.strip().lower() == "draft":
        dataset = s.scalar(select(Dataset).where(Dataset.name == name))
        if dataset is None:
            raise NotFoundError(
                f"no dataset named {name!r}; list datasets with `outpost dataset list`"
            )
        draft = get_draft(s, dataset)
        if draft is None:
            raise NotFoundError(
                f"dataset {name!r} has no draft (nothing edited since its latest version); "
                f"check a version instead, e.g. {name}@v1"
            )
        return dataset, draft
    from desktop_app.core.datasets import find_version

    return find_version(s, name, version)


def _check_stored_sizes(
    ws: Workspace, records: list[QARecord], finding: Finding, max_examples: int
) -> None:
    """Decode each stored image once and compare its size with every record that uses it."""
    by_sha: dict[str, list[QARecord]] = defaultdict(list)
    for rec in records:
        by_sha[rec.sha256].append(rec)
    limit = max_image_pixels()  # the limit the import applied

    def measure(sha: str) -> tuple[int, int] | str:
        path = ws.blobs.path(sha)
        try:
            img = decode_image(path.read_bytes(), max_pixels=limit)
        except FileNotFoundError:
            return "the stored image is missing; run `outpost dataset validate`"
        except OSError as exc:
            return f"the stored image cannot be read ({exc.strerror})"
        except ImageDecodeError as exc:
            return f"the stored image cannot be decoded ({exc})"
        return int(img.shape[1]), int(img.shape[0])

    shas = sorted(by_sha)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for sha, got in zip(shas, pool.map(measure, shas), strict=True):
            for rec in by_sha[sha]:
                if isinstance(got, str):
                    finding.add(rec.file_name, got, None, max_examples)
                elif got != (rec.width, rec.height):
                    finding.add(
                        rec.file_name,
                        f"stored as {rec.width}x{rec.height}, the image is {got[0]}x{got[1]}",
                        None,
                        max_examples,
                    )
