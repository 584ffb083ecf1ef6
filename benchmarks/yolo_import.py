"""YOLO dataset import: ``outpost dataset import --format yolo`` vs Ultralytics' own dataset
scan, on the same YOLO folder, in one run on one machine.

The folder is the COCO dataset of ``benchmarks/dataset_import.py`` (``--images`` small PNG
images, ``--boxes-per-image`` boxes each, five classes) exported once as YOLO
(``images/{train,val}``, ``labels/{train,val}``, ``data.yaml``) and reused. Each case runs in
a fresh child process, best of ``--repeat``; seconds, CPU seconds, peak RSS and the ratio:

* ours: :func:`desktop_app.core.datasets.import_dataset` into a fresh workspace (every label
  line checked, every image read once, checked, hashed and stored as a blob, one
  transaction);
* ultralytics: ``YOLODataset`` built over both splits with its label cache removed first
  (``cache_labels``: every image opened and ``verify()``-ed with Pillow, every label file read
  and checked, in a thread pool): the scan ``model.train`` runs before its first epoch.

    .venv/bin/python benchmarks/yolo_import.py [--images 10000] [--boxes-per-image 10]
        [--repeat 1] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dataset_import import child, measure, print_table, scratch_root  # noqa: E402
from format_import import build_formats  # noqa: E402

CASES = ("ours", "ultralytics")


def build_yolo(workdir: Path, images: int, boxes: int) -> Path:
    """The YOLO folder (made once from the COCO dataset, then reused)."""
    return build_formats(workdir, images, boxes, ["yolo"]) / "yolo"


def run_ours(data: Path, scratch: Path) -> dict[str, Any]:
    from desktop_app.core.datasets import import_dataset
    from desktop_app.core.workspace import Workspace

    ws = Workspace.open(scratch / "ws", create=True)
    t0 = time.perf_counter()
    summary = import_dataset(ws, data, "bench", "yolo")
    return {"seconds": time.perf_counter() - t0, "annotations": summary["annotations"]}


def run_ultralytics(data: Path, scratch: Path) -> dict[str, Any]:
    import yaml
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.utils import LOGGER

    LOGGER.disabled = True
    for cache in (data / "labels").glob("*.cache"):
        cache.unlink()  # a scan, not a cache read
    names = yaml.safe_load((data / "data.yaml").read_text())["names"]
    names = dict(enumerate(names)) if isinstance(names, list) else names
    splits = [str(data / "images" / s) for s in ("train", "val") if (data / "images" / s).is_dir()]
    t0 = time.perf_counter()
    ds = YOLODataset(
        img_path=splits, data={"names": names, "nc": len(names), "channels": 3}, augment=False
    )
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "annotations": int(sum(len(lb["cls"]) for lb in ds.labels))}


RUNNERS = {"ours": run_ours, "ultralytics": run_ultralytics}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--boxes-per-image", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, RUNNERS)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="outpost-bench-yolo-"))
    try:
        data = build_yolo(workdir, args.images, args.boxes_per_image)
        results = {
            case: measure(case, data, max(1, args.repeat), script=__file__) for case in CASES
        }
    finally:
        shutil.rmtree(scratch_root(data), ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    ratio = results["ours"]["seconds"] / results["ultralytics"]["seconds"]
    if args.json:
        print(json.dumps({"results": results, "ours/ultralytics": ratio}, indent=2))
        return
    print(
        f"YOLO folder: {args.images} 64x48 PNG images, {args.images * args.boxes_per_image} boxes; "
        f"each case in a fresh process, best of {max(1, args.repeat)}"
    )
    print_table(results)
    print(f"goal ours faster than Ultralytics' scan: {'met' if ratio < 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
