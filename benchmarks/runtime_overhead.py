"""Runtime overhead: raw ``session.run`` vs ``outpost predict`` in-process vs the agent over HTTP
vs Ultralytics ``predict``, on one ONNX model and one image, at 320 and 640 px.

Prints p50 latencies (ms) and each path's ratio to raw, side by side, in one run on one machine.
Goals: in-process ≤ 1.05× raw and agent ≤ 1.15× raw at 640.

    .venv/bin/python benchmarks/runtime_overhead.py [--runs 50] [--sizes 320,640]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtimes.offline import apply_offline_env  # noqa: E402

if TYPE_CHECKING:
    from device_agent.client import AgentClient


def p50(fn, runs: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def build_package(workdir: Path, imgsz: int) -> tuple[Path, Path]:
    """yolo11n (80 classes, from its YAML) exported to ONNX at ``imgsz`` and packaged."""
    from ultralytics import YOLO

    from exporters.base import ExportRequest, try_export
    from exporters.package import build_package as build
    from exporters.registry import default_registry

    ckpt = workdir / f"yolo11n-{imgsz}.pt"
    model = YOLO("yolo11n.yaml")
    model.save(str(ckpt))
    out = workdir / f"export-{imgsz}"
    artifact = try_export(
        default_registry().get("onnx"),
        ExportRequest(
            checkpoint=ckpt,
            framework="ultralytics",
            task="detect",
            imgsz=imgsz,
            out_dir=out,
            options={"config_dir": str(workdir / "cfg")},
        ),
    )
    onnx_copy = workdir / f"model-{imgsz}.onnx"
    onnx_copy.write_bytes(artifact.model_file.read_bytes())
    package = workdir / f"bench-{imgsz}.outpost.zip"
    build(
        artifact,
        name=f"bench{imgsz}",
        version="1",
        out_path=package,
        framework="ultralytics",
        task="detect",
        provenance={},
    )
    return package, onnx_copy


class Agent:
    def __init__(self, data_dir: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "device_agent",
            "serve",
            "--interface",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )  # noqa: S603
        for line in self.proc.stdout:  # type: ignore[union-attr]
            obj = json.loads(line)
            if obj.get("event") == "ready":
                self.url = obj["url"]
                self.agent_id = obj["agent_id"]
                break
        self.data_dir = data_dir

    def paired_client(self, timeout: float) -> AgentClient:
        """Pair a fresh desktop key with a code from ``outpost-agent pair``, as the demo does."""
        from device_agent.auth import KeyPair
        from device_agent.client import AgentClient, pair_with_agent

        shown = subprocess.run(  # noqa: S603
            [
                sys.executable,
                "-m",
                "device_agent",
                "pair",
                "--json",
                "--data-dir",
                str(self.data_dir),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        desktop = KeyPair.generate()
        code = json.loads(shown.stdout)["code"]
        pinned = pair_with_agent(self.url, desktop, self.agent_id, code)
        return AgentClient(self.url, timeout=timeout, key=desktop, agent_key=pinned)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--sizes", default="320,640")
    parser.add_argument(
        "--image", type=Path, default=None, help="default: ultralytics/assets/bus.jpg"
    )
    parser.add_argument("--build-into", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    if args.build_into:  # child step: export with torch, in its own process
        apply_offline_env(args.build_into / "cfg")
        for size in sizes:
            build_package(args.build_into, size)
        return

    workdir = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    apply_offline_env(workdir / "cfg")
    # Export in a child so torch's thread pool never shares this process with the timings.
    subprocess.run(  # noqa: S603
        [sys.executable, __file__, "--sizes", args.sizes, "--build-into", str(workdir)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import importlib.metadata
    import importlib.util

    import onnxruntime as ort

    from runtimes.predictor import Predictor
    from runtimes.preprocess import letterbox, read_image, to_tensor

    spec = importlib.util.find_spec("ultralytics")
    assets = Path(spec.origin).parent / "assets"  # type: ignore[union-attr, arg-type]
    image_path = args.image or assets / "bus.jpg"
    image_bytes = image_path.read_bytes()
    img = read_image(image_path)
    print(
        f"machine: {os.cpu_count()} CPU threads, onnxruntime {ort.__version__}, ultralytics {importlib.metadata.version('ultralytics')}"
    )
    print(
        f"image: {image_path.name} {img.shape[1]}x{img.shape[0]}, model: yolo11n (80 classes), {args.runs} timed runs after 5 warm-up runs, p50 ms"
    )
    rows = []
    yolo_rows = {}
    agent = Agent(workdir / "agent")
    try:
        client = agent.paired_client(timeout=60)
        for size in sizes:
            package, onnx_file = (
                workdir / f"bench-{size}.outpost.zip",
                workdir / f"model-{size}.onnx",
            )

            session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            tensor = to_tensor(letterbox(img, (size, size))[0])
            raw = p50(lambda: session.run(None, {name: tensor}), args.runs)  # noqa: B023

            predictor = Predictor.from_path(package)
            ours = p50(lambda: predictor.predict(img), args.runs)  # noqa: B023
            ours_bytes = p50(lambda: predictor.predict_bytes(image_bytes), args.runs)  # noqa: B023
            predictor.close()

            model_name = client.upload_package(package)["name"]
            over_http = p50(lambda: client.infer(image_bytes, model=model_name), args.runs)  # noqa: B023

            rows.append((size, raw, ours, ours_bytes, over_http))
    finally:
        agent.stop()
    # Ultralytics last: it loads torch, whose threads would otherwise share the timings above.
    from ultralytics import YOLO

    for size in sizes:
        yolo = YOLO(str(workdir / f"model-{size}.onnx"), task="detect")
        yolo_rows[size] = p50(lambda: yolo.predict(img, imgsz=size, verbose=False), args.runs)  # noqa: B023

    header = f"{'imgsz':>5} | {'raw session.run':>15} | {'outpost in-process':>18} | {'+ JPEG decode':>13} | {'agent over HTTP':>15} | {'ultralytics predict':>19}"
    print(header)
    print("-" * len(header))
    for size, raw, ours, ours_bytes, over_http in rows:
        theirs = yolo_rows[size]
        print(
            f"{size:>5} | {raw:>10.2f} 1.00x | {ours:>11.2f} {ours / raw:>5.2f}x | {ours_bytes:>6.2f} {ours_bytes / raw:>5.2f}x"
            f" | {over_http:>8.2f} {over_http / raw:>5.2f}x | {theirs:>12.2f} {theirs / raw:>5.2f}x"
        )
    print("in-process = letterbox + tensor + session.run + decode/NMS/rescale on a decoded image;")
    print(
        "agent = HTTP upload of the JPEG + decode + the same path + JSON reply, measured at the client."
    )


if __name__ == "__main__":
    main()
