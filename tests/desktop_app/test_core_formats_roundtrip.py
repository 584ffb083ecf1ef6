"""The round-trip matrix: every pair of registered formats that can hold a task.

For each task and each ordered pair (src, dst) of formats whose capabilities list the task,
a small dataset (3 classes, 6 images of 64x48) is written by src, read back, written by dst
and read again; the result must hold the same images (sha256), classes, splits (where both
formats keep splits) and annotations within the formats' tolerance. The formats come from
the FORMATS table at collection time, so every registered format takes part.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from desktop_app.core.dataset_records import (
    TASKS,
    Annotation,
    ExportDataset,
    ExportItem,
    ScannedDataset,
)
from desktop_app.core.formats import FORMATS
from runtimes.fileio import sha256_file

W, H = 64, 48
CLASSES = ("dog", "cat", "bird")  # not sorted: formats that keep the order must keep it
SPLITS = ("train", "train", "val", "val", "test", "test")
KEEPS_ORDER = frozenset({"yolo", "coco", "voc", "cvat"})  # others sort names or folders
NORM_TOL = 1e-6
PX_TOL = {"voc": 0.5 + 1e-6}  # whole-pixel formats: each edge moves by up to half a pixel


def _cases() -> list[Any]:
    """Every (task, src, dst) where both formats can hold the task's information."""
    out = []
    for task in TASKS:
        for src, a in FORMATS.items():
            for dst, b in FORMATS.items():
                if task in a.capabilities.tasks and task in b.capabilities.tasks:
                    out.append(pytest.param(task, src, dst, id=f"{task}-{src}-{dst}"))
    return out


def test_every_task_has_a_round_trip_pair() -> None:
    assert {case.values[0] for case in _cases()} == set(TASKS)


def _px_box(x0: int, y0: int, x1: int, y1: int) -> tuple[float, float, float, float]:
    """Normalised corners a little off the pixel grid (whole-pixel formats must round)."""
    return (x0 + 0.37) / W, (y0 + 0.21) / H, (x1 - 0.33) / W, (y1 - 0.45) / H


def _objects(task: str, i: int) -> tuple[Annotation, ...]:
    if task == "classify":
        return (Annotation.whole_image(i % 3),)
    if i == 5:
        return ()  # a labelled image without objects (background)
    boxes = [(4 + i, 3 + i, 30 + i, 25 + i, i % 3), (36, 10, 60 - i, 44, (i + 1) % 3)]
    out = []
    for x0, y0, x1, y1, cls in boxes:
        nx0, ny0, nx1, ny1 = _px_box(x0, y0, x1, y1)
        extra: dict[str, Any] = {}
        if task == "segment":  # a quadrilateral touching all four sides of its box
            mx, my = (nx0 + nx1) / 2, (ny0 + ny1) / 2
            extra["polygons"] = ((mx, ny0, nx1, my, mx, ny1, nx0, my),)
        if task == "pose":
            extra["keypoints"] = (
                nx0 + 0.25 * (nx1 - nx0),
                ny0 + 0.5 * (ny1 - ny0),
                2.0,
                nx0 + 0.75 * (nx1 - nx0),
                ny0 + 0.25 * (ny1 - ny0),
                2.0,
                nx0 + 0.5 * (nx1 - nx0),
                ny0 + 0.75 * (ny1 - ny0),
                1.0,
            )
        out.append(Annotation.from_xyxy(cls, nx0, ny0, nx1, ny1, **extra))
    return tuple(out)


def _source(task: str, folder: Path) -> tuple[ExportDataset, dict[str, Path]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    items, files = [], {}
    for i in range(6):
        p = folder / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        sha = sha256_file(p)
        files[sha] = p
        items.append(ExportItem(p.name, sha, W, H, SPLITS[i], _objects(task, i)))
    kpt = (3, 3) if task == "pose" else None
    return ExportDataset("m", "v1", "0" * 64, CLASSES, tuple(items), task, kpt), files


def _as_export(scan: ScannedDataset) -> tuple[ExportDataset, dict[str, Path]]:
    items = tuple(
        ExportItem(
            img.file_name,
            img.sha256,
            img.width,
            img.height,
            img.source_split or "train",
            img.boxes,
            "labelled" if img.labelled else "unlabelled",
        )
        for img in scan.images
    )
    data = ExportDataset(
        "m", "v1", "0" * 64, scan.class_names, items, scan.task, scan.keypoint_shape
    )
    return data, {img.sha256: img.path for img in scan.images}


def _write_read(key: str, data: ExportDataset, files: dict[str, Path], out: Path) -> ScannedDataset:
    def copy_image(sha: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[sha], dest)

    out.mkdir()
    FORMATS[key].write(data, out, copy_image)
    scan = FORMATS[key].read(out, None, None)
    assert scan.problems == ()
    return scan


def _normalised(data: ExportDataset) -> dict[str, tuple[str, list[tuple[Any, ...]]]]:
    return {
        item.sha256: (
            item.split,
            sorted(
                (data.class_names[a.cls], a.xyxy, a.polygons, a.keypoints) for a in item.annotations
            ),
        )
        for item in data.items
    }


def _close(a: tuple[float, ...], b: tuple[float, ...], tol: float) -> bool:
    return len(a) == len(b) and all(abs(u - v) <= tol for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize(("task", "src", "dst"), _cases())
def test_round_trip(task: str, src: str, dst: str, tmp_path: Path) -> None:
    original, files = _source(task, tmp_path / "source")
    first = _write_read(src, original, files, tmp_path / "first")
    assert first.task == task
    middle, middle_files = _as_export(first)
    last = _write_read(dst, middle, middle_files, tmp_path / "second")
    assert last.task == task

    if src in KEEPS_ORDER and dst in KEEPS_ORDER:
        assert last.class_names == CLASSES
    else:
        assert set(last.class_names) == set(CLASSES)
    final, _ = _as_export(last)
    want, got = _normalised(original), _normalised(final)
    assert sorted(want) == sorted(got)  # the same images, by sha256
    both_split = first.has_source_split and last.has_source_split
    px = max(PX_TOL.get(src, 0.0), PX_TOL.get(dst, 0.0))
    for sha, (split, anns) in want.items():
        got_split, got_anns = got[sha]
        if both_split:
            assert got_split == split, sha
        assert len(got_anns) == len(anns), sha
        for (name, box, polys, kpts), (g_name, g_box, g_polys, g_kpts) in zip(
            anns, got_anns, strict=True
        ):
            assert g_name == name, sha
            tols = (px / W, px / H, px / W, px / H) if px else (NORM_TOL,) * 4
            assert all(abs(u - v) <= t for u, v, t in zip(box, g_box, tols, strict=True)), (
                sha,
                box,
                g_box,
            )
            if task == "segment":
                assert len(g_polys) == len(polys), sha
                for p, q in zip(polys, g_polys, strict=True):
                    assert _close(p, q, NORM_TOL), (sha, p, q)
            if task == "pose":
                assert _close(kpts, g_kpts, NORM_TOL), (sha, kpts, g_kpts)
