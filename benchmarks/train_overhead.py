"""Training overhead: bare Ultralytics ``model.train`` vs ``outpost train`` on the same data,
epochs, image size and options. Prints wall times, training throughput and the ratios side by
side.

    .venv/bin/python benchmarks/train_overhead.py [--epochs 5] [--imgsz 160] [--count 64]
    python benchmarks/train_overhead.py --device 0 --count 2000 --size 640 --imgsz 640 \
        --batch 64 --workers 8 --epochs 6                         # the GPU check

``outpost train`` includes everything a user waits for: the workspace, the dataset snapshot
written for the trainer, the child process, MLflow logging and the per-epoch records.
Throughput is the steady state: training images per second over epochs 2..N, from the
``time`` column of each run's ``results.csv`` (the first epoch holds warm-up).
Goals: wall ≤ 1.05× bare Ultralytics on the CPU; throughput ≥ 0.97× on a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE = """
import json, os, sys, torch
from runtimes.offline import apply_offline_env, quiet_ultralytics_settings
apply_offline_env(sys.argv[3])
from ultralytics import YOLO
quiet_ultralytics_settings()
kw = json.loads(sys.argv[2])
model = YOLO("yolo11n.yaml")
if kw.pop("all_threads"):
    model.add_callback("on_train_start", lambda t: torch.set_num_threads(os.cpu_count()))
model.train(data=sys.argv[1], project=sys.argv[4], name="bare", exist_ok=True, **kw)
"""


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Wall seconds of ``cmd``; its output goes to ``log``, whose tail is shown on failure."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # noqa: S603
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        sys.exit(f"{cmd[:4]} failed ({proc.returncode}):\n" + "\n".join(tail))
    return secs


def steady_throughput(results_csv: Path, train_images: int) -> float | None:
    """Training images per second over epochs 2..N (``time`` is cumulative seconds)."""
    if not results_csv.is_file():
        return None
    with results_csv.open() as fh:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(fh)]
    if len(rows) < 2 or "time" not in rows[0]:
        return None
    span = float(rows[-1]["time"]) - float(rows[0]["time"])
    return train_images * (len(rows) - 1) / span if span > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--size", type=int, default=160, help="sample image side (px)")
    parser.add_argument("--device", default="cpu", help="cpu or a CUDA index")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    cpu = args.device == "cpu"
    work = Path(tempfile.mkdtemp(prefix="outpost-train-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cli = [sys.executable, "-m", "desktop_app.cli"]
    ws = work / "ws"
    subprocess.run(
        [
            *cli,
            "dataset",
            "sample",
            "--out",
            str(work / "s"),
            "--count",
            str(args.count),
            "--size",
            str(args.size),
        ],
        check=True,
        capture_output=True,
        env=env,
    )  # noqa: S603
    subprocess.run(
        [*cli, "dataset", "import", str(work / "s"), "--name", "s", "--workspace", str(ws)],
        check=True,
        capture_output=True,
        env=env,
    )  # noqa: S603
    # The same training split the outpost run uses, materialised once for the bare run.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from desktop_app.core.workspace import Workspace; from desktop_app.core.datasets import materialize_yolo; print(materialize_yolo(Workspace.open(sys.argv[1]), 's', None, sys.argv[2]))",
            str(ws),
            str(work / "bare-data"),
        ],
        check=True,
        capture_output=True,
        env=env,
    )  # noqa: S603
    opts = {
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "nbs": args.batch,
        "mosaic": 0.0,
        "workers": args.workers,
        "plots": False,
        "seed": 0,
        "device": args.device,
    }
    outpost_cmd = [
        *cli,
        "train",
        "--dataset",
        "s",
        "--workspace",
        str(ws),
        "--epochs",
        str(args.epochs),
        "--imgsz",
        str(args.imgsz),
        "--batch",
        str(args.batch),
        "--workers",
        str(args.workers),
        "--seed",
        "0",
        "--set",
        "mosaic=0",
        "--set",
        f"nbs={args.batch}",
        "--set",
        "plots=false",
        "--device",
        args.device,
    ]
    data_yaml = str(work / "bare-data" / "data.yaml")
    train_images = len(list((work / "bare-data" / "images" / "train").glob("*")))
    variants = [("bare ultralytics (its default: 1 CPU thread)", False)] if cpu else []
    variants.append(
        ("bare ultralytics + all CPU threads", True) if cpu else ("bare ultralytics", False)
    )
    rows = []
    for label, all_threads in variants:
        bare = timed(
            [
                sys.executable,
                "-c",
                BARE,
                data_yaml,
                json.dumps({**opts, "all_threads": all_threads}),
                str(work / "cfg"),
                str(work / "bare"),
            ],
            env,
            work / f"bare-{len(rows)}.log",
        )
        rate = steady_throughput(work / "bare" / "bare" / "results.csv", train_images)
        rows.append((label, bare, rate))
    ours = timed(outpost_cmd, env, work / "outpost.log")
    warnings = [ln for ln in (work / "outpost.log").read_text().splitlines() if "MLflow" in ln]
    ours_csv = sorted((ws / "runs").glob("*/train/results.csv"))
    ours_rate = steady_throughput(ours_csv[-1], train_images) if ours_csv else None
    where = f"CPU ({os.cpu_count()} threads)" if cpu else _gpu_name(args.device)
    print(
        f"{args.count} sample images ({train_images} train) at {args.size} px, yolo11n from scratch, "
        f"{args.epochs} epochs at imgsz {args.imgsz}, batch {args.batch}, workers {args.workers}, {where}"
    )
    print(
        f"{'path':<48} {'wall s':>8} {'outpost/this':>13} {'img/s (ep 2..N)':>16} {'outpost/this':>13}"
    )
    for label, secs, rate in rows:
        r = (
            f"{rate:>16.1f} {ours_rate / rate:>12.3f}x"
            if rate and ours_rate
            else f"{'-':>16} {'-':>13}"
        )
        print(f"{label:<48} {secs:>8.1f} {ours / secs:>12.3f}x {r}")
    r = f"{ours_rate:>16.1f} {1.0:>12.3f}x" if ours_rate else f"{'-':>16} {'-':>13}"
    print(f"{'outpost train (child process, MLflow, records)':<48} {ours:>8.1f} {1.0:>12.3f}x {r}")
    for line in warnings[:3]:
        print(f"note: {line.strip()[:160]}")


def _gpu_name(device: str) -> str:
    try:
        import torch

        return f"CUDA {device}: {torch.cuda.get_device_name(int(device))}"
    except Exception as exc:  # noqa: BLE001 - a label only
        return f"CUDA {device} ({type(exc).__name__})"


if __name__ == "__main__":
    main()
