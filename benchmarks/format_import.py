"""Import of every annotation format, with and without the import's image helper process.

The COCO dataset of ``benchmarks/dataset_import.py`` (``--images`` small PNG images,
``--boxes-per-image`` boxes each, five classes) is exported once to each format (a folder
per format, reused by later runs with the same shape). Each case runs in a fresh child
process, best of ``--repeat``, and imports one folder into a new workspace:

* ``FORMAT``: :func:`desktop_app.core.datasets.import_dataset` as users run it: the images
  are read, checked, hashed and staged by the helper process (see
  :mod:`desktop_app.core.image_prefetch`) while the reader parses the annotations;
* ``FORMAT-alone``: the same import with the helper turned off (the importing process reads
  every image itself), the reference for what the helper saves.

Prints seconds, CPU seconds, peak RSS and with / without side by side per format.

    .venv/bin/python benchmarks/format_import.py [--images 10000] [--boxes-per-image 10]
        [--formats voc,cvat,labelstudio,createml,coco,yolo] [--repeat 1] [--workdir DIR]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dataset_import import build_dataset, child, measure, scratch_root  # noqa: E402

FORMATS = ("voc", "cvat", "labelstudio", "createml", "coco", "yolo")


def build_formats(workdir: Path, images: int, boxes: int, formats: list[str]) -> Path:
    """``workdir/formats/<format>`` for each format (exported once from the COCO dataset)."""
    out = workdir / "formats"
    marker = workdir / "formats.json"
    shape = {"images": images, "boxes_per_image": boxes}
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    if done.get("shape") != shape:
        shutil.rmtree(out, ignore_errors=True)
        done = {"shape": shape, "formats": []}
    missing = [f for f in formats if f not in done["formats"] or not (out / f).is_dir()]
    if not missing:
        return out
    coco = workdir / "coco"
    build_dataset(coco, images, boxes, "png", seed=0)
    from desktop_app.core.datasets import export_dataset, import_dataset
    from desktop_app.core.workspace import Workspace

    scratch = Path(tempfile.mkdtemp(prefix="formats-build-", dir=workdir))
    try:
        ws = Workspace.open(scratch / "ws", create=True)
        import_dataset(ws, coco, "source", "coco")
        for fmt in missing:
            shutil.rmtree(out / fmt, ignore_errors=True)
            export_dataset(ws, "source", fmt, out / fmt)
            done["formats"].append(fmt)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    marker.write_text(json.dumps(done))
    return out


def run_case(case: str, data: Path, scratch: Path) -> dict[str, Any]:
    """Import ``data/<format>`` (the case's format) into a fresh workspace."""
    from desktop_app.core import image_prefetch
    from desktop_app.core.datasets import import_dataset
    from desktop_app.core.workspace import Workspace

    fmt, _, alone = case.partition("-")
    if alone:
        image_prefetch.PREFETCH_MIN_IMAGES = sys.maxsize  # the importer reads every image
        image_prefetch.PREFETCH_EARLY_BYTES = sys.maxsize
    ws = Workspace.open(scratch / "ws", create=True)
    t0 = time.perf_counter()
    summary = import_dataset(ws, data / fmt, "bench", fmt)
    return {"seconds": time.perf_counter() - t0, "annotations": summary["annotations"]}


RUNNERS = {
    case: (lambda data, scratch, case=case: run_case(case, data, scratch))
    for fmt in FORMATS
    for case in (fmt, f"{fmt}-alone")
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--boxes-per-image", type=int, default=10)
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset")
    parser.add_argument("--repeat", type=int, default=1, help="best of N fresh runs per case")
    parser.add_argument("--workdir", type=Path, default=None, help="build/reuse the data here")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, RUNNERS)
        return
    if args.build:
        build_formats(args.workdir, args.images, args.boxes_per_image, args.formats.split(","))
        return
    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="outpost-bench-formats-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        # built in a child: the cases' processes would count this one's memory as their peak
        # (a forked child's peak resident size starts at its parent's)
        subprocess.run(  # noqa: S603
            [sys.executable, __file__, "--build", "--workdir", str(workdir), "--images",
             str(args.images), "--boxes-per-image", str(args.boxes_per_image), "--formats",
             ",".join(formats)],
            check=True,
        )  # fmt: skip
        data = workdir / "formats"
        for fmt in formats:
            for case in (fmt, f"{fmt}-alone"):  # in turn: both see the same moments
                results[case] = measure(case, data, max(1, args.repeat), script=__file__)
    finally:
        shutil.rmtree(scratch_root(workdir / "formats"), ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{args.images} 64x48 PNG images, {args.images * args.boxes_per_image} boxes, exported "
        f"to each format; each case in a fresh process, best of {max(1, args.repeat)}"
    )
    print(
        f"{'format':<13}{'with helper s':>14}{'CPU s':>8}{'alone s':>9}{'CPU s':>8}"
        f"{'with/alone':>12}{'peak RSS MB':>13}{'boxes':>9}"
    )
    for fmt in formats:
        on, off = results[fmt], results[f"{fmt}-alone"]
        print(
            f"{fmt:<13}{on['seconds']:>14.2f}{on['cpu_s']:>8.2f}{off['seconds']:>9.2f}"
            f"{off['cpu_s']:>8.2f}{on['seconds'] / off['seconds']:>11.2f}x"
            f"{on['rss_mb']:>13.0f}{on['annotations']:>9}"
        )


if __name__ == "__main__":
    main()
