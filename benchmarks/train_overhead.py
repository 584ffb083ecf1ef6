"""Training overhead: bare Ultralytics ``model.train`` vs ``outpost train`` on the same data,
epochs, image size and options, on the CPU. Prints wall times and the ratio side by side.

    .venv/bin/python benchmarks/train_overhead.py [--epochs 5] [--imgsz 160] [--count 64]

``outpost train`` includes everything a user waits for: the workspace, the dataset snapshot
written for the trainer, the child process, MLflow logging and the per-epoch records.
Goal: ≤ 1.05× bare Ultralytics.
"""

from __future__ import annotations

import argparse
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
model.train(data=sys.argv[1], device="cpu", project=sys.argv[4], name="bare", exist_ok=True, **kw)
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT
    )  # noqa: S603
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="outpost-train-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "desktop_app.cli"]
    ws = work / "ws"
    subprocess.run(
        [*cli, "dataset", "sample", "--out", str(work / "s"), "--count", str(args.count)],
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
        "batch": 8,
        "nbs": 8,
        "mosaic": 0.0,
        "workers": 0,
        "plots": False,
        "seed": 0,
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
        "8",
        "--workers",
        "0",
        "--seed",
        "0",
        "--set",
        "mosaic=0",
        "--set",
        "nbs=8",
        "--device",
        "cpu",
    ]
    data_yaml = str(work / "bare-data" / "data.yaml")
    rows = []
    for label, all_threads in (
        ("bare ultralytics (its default: 1 CPU thread)", False),
        ("bare ultralytics + all CPU threads", True),
    ):
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
        )
        rows.append((label, bare))
    ours = timed(outpost_cmd, env)
    print(
        f"{args.count} sample images, yolo11n from scratch, {args.epochs} epochs at {args.imgsz} px, batch 8, CPU ({os.cpu_count()} threads)"
    )
    print(f"{'path':<48} {'wall s':>8} {'outpost / this':>15}")
    for label, secs in rows:
        print(f"{label:<48} {secs:>8.1f} {ours / secs:>14.2f}x")
    print(f"{'outpost train (child process, MLflow, records)':<48} {ours:>8.1f} {1.0:>14.2f}x")


if __name__ == "__main__":
    main()
