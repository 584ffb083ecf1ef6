"""``outpost demo``: the whole loop on a sample, headless, on a fresh workspace.

sample dataset → import → train → export ONNX → start a local agent on 127.0.0.1 →
discover it by mDNS → pair with it (a code from its own ``outpost-agent pair``) → deploy →
inference on sample images → latency pulled back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runtimes.errors import OutpostError

LOOPBACK = "127.0.0.1"


class DemoError(OutpostError):
    """A step of the demo failed."""


@dataclass(frozen=True)
class DemoOptions:
    workspace: Path | None = None
    epochs: int = 30
    imgsz: int = 160
    count: int = 128
    seed: int = 0
    infer_images: int = 24


def fresh_workspace_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path.cwd() / ".outpost-demo" / f"ws-{stamp}"


class LocalAgent:
    """An ``outpost-agent`` child process on loopback; reads its ready line for the id."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        cmd = [
            sys.executable,
            "-m",
            "device_agent",
            "serve",
            "--interface",
            LOOPBACK,
            "--port",
            "0",
            "--data-dir",
            str(self.data_dir),
        ]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)  # noqa: S603
        result: dict[str, Any] = {}

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if obj.get("event") == "ready":
                    result.update(obj)
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not result:
            self.stop()
            raise DemoError(
                f"the local agent did not start within {timeout:.0f} s; see {self.log_path}"
            )
        self.ready = result
        return result

    def pairing_code(self, timeout: float = 60.0) -> str:
        """A one-time code from ``outpost-agent pair`` on this agent's data folder."""
        cmd = [
            sys.executable,
            "-m",
            "device_agent",
            "pair",
            "--json",
            "--data-dir",
            str(self.data_dir),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
        except subprocess.TimeoutExpired:
            raise DemoError(f"outpost-agent pair did not answer within {timeout:.0f} s") from None
        try:
            return str(json.loads(done.stdout)["code"])
        except (ValueError, KeyError, TypeError):
            reason = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise DemoError(f"outpost-agent pair failed: {reason[0]}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()


def run_demo(opts: DemoOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    from desktop_app.core.datasets import import_yolo, write_sample_dataset
    from desktop_app.core.devices import connect, deploy, discover, pair, pull_usage
    from desktop_app.core.exports import export_run
    from desktop_app.core.training import TrainOptions, run_training
    from desktop_app.core.workspace import Workspace
    from runtimes.latency import percentiles
    from runtimes.predictor import Predictor
    from runtimes.preprocess import read_image

    t_start = time.perf_counter()
    root = Path(opts.workspace) if opts.workspace else fresh_workspace_dir()
    if root.exists() and any(root.iterdir()):
        raise DemoError(
            f"{root} is not empty; the demo needs a fresh workspace (omit --workspace to get one)"
        )
    ws = Workspace.open(root)
    steps: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        steps[name] = round(time.perf_counter() - t0, 2)

    say(f"[1/8] workspace: {ws.root}")
    t0 = time.perf_counter()
    sample_dir = ws.root / "sample-dataset"
    write_sample_dataset(sample_dir, seed=opts.seed, count=opts.count)
    step("sample", t0)
    say(f"[2/8] sample dataset ({opts.count} images, 3 classes) written to {sample_dir}")

    t0 = time.perf_counter()
    imported = import_yolo(ws, sample_dir, "shapes", seed=42)
    step("import", t0)
    say(
        f"[3/8] imported as dataset 'shapes' v1: {json.dumps(imported.get('splits', imported.get('counts', {})))}"
    )

    t0 = time.perf_counter()
    say(f"[4/8] training yolo11n from scratch: {opts.epochs} epochs at {opts.imgsz} px")

    def progress(event: dict[str, Any]) -> None:
        if event["event"] == "epoch_end":
            m = event.get("metrics") or {}
            say(
                f"      epoch {event['epoch']:>3}/{event['epochs']}  box_loss={m.get('train/box_loss', 0):.3f}  mAP50={m.get('metrics/mAP50(B)', 0):.3f}"
            )

    # Small drawn images: mosaic would shrink shapes to a few pixels, so the demo trains without it.
    train_opts = TrainOptions(
        dataset="shapes",
        model="yolo11n.yaml",
        epochs=opts.epochs,
        imgsz=opts.imgsz,
        batch=8,
        workers=0,
        extra={"mosaic": 0.0},
    )
    run = run_training(ws, train_opts, on_event=progress)
    step("train", t0)
    metrics = run["final_metrics"]
    say(
        f"      run {run['id']}: mAP50={metrics.get('metrics/mAP50(B)', 0):.3f} mAP50-95={metrics.get('metrics/mAP50-95(B)', 0):.3f}"
    )

    t0 = time.perf_counter()
    exports = export_run(ws, run["id"], ["onnx"])
    step("export", t0)
    export = exports[0]
    if export["status"] != "completed":
        raise DemoError(f"export failed: {export.get('error')}")
    say(f"[5/8] exported ONNX package: {export['package']}")

    agent = LocalAgent(ws.root / "demo-agent", ws.root / "demo-agent.log")
    t0 = time.perf_counter()
    try:
        ready = agent.start()
        say(
            f"[6/8] local agent {ready['agent_id']} started on {LOOPBACK} (port {ready['port']}); discovering it by mDNS ..."
        )
        found = discover(ws, [LOOPBACK], timeout=15.0, want_id=ready["agent_id"])
        match = [d for d in found if d["id"] == ready["agent_id"]]
        if not match:
            raise DemoError(
                f"the local agent was not found by mDNS on {LOOPBACK}; see {agent.log_path}"
            )
        device = match[0]
        step("agent_discovery", t0)
        say(
            f"      found {device['name']} ({device['id']}) at {device['address']}:{device['port']} via _outpost._tcp.local."
        )

        t0 = time.perf_counter()
        paired = pair(ws, device["id"], agent.pairing_code(), [LOOPBACK])
        step("pair", t0)
        say(
            f"      paired with {device['name']} using a one-time code; pinned key {paired['fingerprint'][:16]}..."
        )

        t0 = time.perf_counter()
        deployed = deploy(ws, export["id"], device["id"], [LOOPBACK])
        step("deploy", t0)
        say(f"[7/8] deployed model '{deployed['model']}' to {device['name']}")

        t0 = time.perf_counter()
        images = sorted((sample_dir / "images").glob("*.jpg"))[: opts.infer_images]
        _, client = connect(ws, device["id"], [LOOPBACK])
        detections = 0
        for image in images:
            reply = client.infer(image.read_bytes())
            detections += len(reply["detections"])
        predictor = Predictor.from_path(Path(export["package"]))
        local_ms = []
        try:
            predictor.warmup()
            for image in images:
                t = time.perf_counter()
                predictor.predict(read_image(image))
                local_ms.append((time.perf_counter() - t) * 1e3)
        finally:
            predictor.close()
        usage = pull_usage(ws, device["id"], [LOOPBACK])
        step("inference", t0)
    finally:
        agent.stop()

    local = percentiles(local_ms)
    latency = [
        {
            "device": "this workstation (in-process)",
            "format": "onnx",
            "runtime": predictor.backend.key,
            "requests": len(local_ms),
            "p50_ms": local["p50"],
            "p90_ms": local["p90"],
        }
    ] + [
        {
            "device": f"{u['device_name']} (agent)",
            "format": u["format"],
            "runtime": u["runtime"],
            "requests": u["requests"],
            "p50_ms": u["p50_ms"],
            "p90_ms": u["p90_ms"],
        }
        for u in usage
    ]
    say(f"[8/8] inference: {len(images)} images sent to the agent, {detections} detections")
    say("")
    say(_latency_table(latency))
    total = round(time.perf_counter() - t_start, 1)
    summary = {
        "workspace": str(ws.root),
        "database": str(ws.root / "outpost.db"),
        "mlflow_tracking_uri": ws.mlflow_tracking_uri,
        "dataset": {
            "name": "shapes",
            "version": "v1",
            "path": str(sample_dir),
            **{k: v for k, v in imported.items() if k != "name"},
        },
        "run": {
            "id": run["id"],
            "metrics": metrics,
            "best_checkpoint": run["best_checkpoint"],
            "mlflow_run_id": run["mlflow_run_id"],
            "log": str(Path(run["run_dir"]) / "train.log"),
        },
        "export": {"id": export["id"], "package": export["package"], "sha256": export["sha256"]},
        "device": {**device, "data_dir": str(agent.data_dir), "log": str(agent.log_path)},
        "deployment": deployed["status"],
        "inference": {"images": len(images), "detections": detections},
        "latency": latency,
        "seconds": {**steps, "total": total},
    }
    say("")
    say(
        f"Stored in {ws.root}: database outpost.db, blobs/ (images by sha256), runs/{run['id']}/ (checkpoints, train.log),"
    )
    say(
        f"exports/{export['id']}/ (package), mlflow.db (MLflow tracking), demo-agent/ (the agent's installed models)."
    )
    say(
        f"Done in {total} s. Browse the run with: outpost runs show {run['id']} --workspace {ws.root}"
    )
    return summary


def _latency_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'device':<36} {'format':<7} {'runtime':<14} {'requests':>8} {'p50 ms':>8} {'p90 ms':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['device']:<36} {r['format']:<7} {str(r['runtime']):<14} {r['requests']:>8} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f}"
        )
    return "\n".join(lines)
