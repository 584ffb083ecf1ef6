"""Runtime overhead: raw ``session.run`` vs ``outpost predict`` in-process vs the agent over HTTP
vs Ultralytics ``predict``, on one ONNX model and one image, at 320 and 640 px.

Prints p50 latencies (ms) and each path's ratio to raw, side by side, in one run on one machine.
Goals: in-process ≤ 1.05× raw and agent ≤ 1.15× raw at 640.

    .venv/bin/python benchmarks/runtime_overhead.py [--runs 50] [--sizes 320,640]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from desktop_app.core.demo import LocalAgent  # noqa: E402
from runtimes.latency import benchmark  # noqa: E402
from runtimes.offline import apply_offline_env  # noqa: E402

if TYPE_CHECKING:
    from device_agent.client import AgentClient


def p50s(paths: dict[str, Callable[[], object]], runs: int, warmup: int = 5) -> dict[str, float]:
    """p50 ms of each path, one path after another (warm-up excluded).

    Paths are timed in blocks, not interleaved: ONNX Runtime's worker threads spin briefly
    after each run, so interleaving sessions (or the agent's process) would time each path
    against the previous one's spinning threads on a 2-core machine.
    """
    return {name: benchmark(fn, warmup=warmup, runs=runs)["p50"] for name, fn in paths.items()}


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


def paired_client(agent: LocalAgent, timeout: float) -> AgentClient:
    """Pair a fresh desktop key with a code from ``outpost-agent pair``, as the demo does."""
    from device_agent.auth import KeyPair
    from device_agent.client import AgentClient, pair_with_agent

    desktop = KeyPair.generate()
    pinned = pair_with_agent(
        agent.ready["url"], desktop, agent.ready["agent_id"], agent.pairing_code()
    )
    return AgentClient(agent.ready["url"], timeout=timeout, key=desktop, agent_key=pinned)


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

    from runtimes.allocator import keep_large_buffers
    from runtimes.predictor import Predictor
    from runtimes.preprocess import letterbox, read_image, to_tensor

    keep_large_buffers()  # as `outpost predict` and the agent do (the raw path benefits alike)
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
    rows: dict[int, dict[str, float]] = {}
    agent = LocalAgent(workdir / "agent", workdir / "agent.log")
    agent.start()
    try:
        client = paired_client(agent, timeout=60)
        for size in sizes:
            package, onnx_file = (
                workdir / f"bench-{size}.outpost.zip",
                workdir / f"model-{size}.onnx",
            )

            session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            tensor = to_tensor(letterbox(img, (size, size))[0])
            predictor = Predictor.from_path(package)
            model_name = client.upload_package(package)["name"]
            timed = p50s(
                {
                    "raw": lambda: session.run(None, {name: tensor}),  # noqa: B023
                    "ours": lambda: predictor.predict(img),  # noqa: B023
                    "ours_bytes": lambda: predictor.predict_bytes(image_bytes),  # noqa: B023
                    "agent": lambda: client.infer(image_bytes, model=model_name),  # noqa: B023
                },
                args.runs,
            )
            predictor.close()
            rows[size] = timed
    finally:
        agent.stop()
    # Ultralytics last: it loads torch, whose threads would otherwise share the timings above.
    # Its ratio is to a raw session.run timed beside it.
    from ultralytics import YOLO

    for size in sizes:
        yolo = YOLO(str(workdir / f"model-{size}.onnx"), task="detect")
        session = ort.InferenceSession(
            str(workdir / f"model-{size}.onnx"), providers=["CPUExecutionProvider"]
        )
        tensor = to_tensor(letterbox(img, (size, size))[0])
        rows[size].update(
            {
                f"ul_{k}": v
                for k, v in p50s(
                    {
                        "raw": lambda: session.run(None, {"images": tensor}),  # noqa: B023
                        "ultralytics": lambda: yolo.predict(img, imgsz=size, verbose=False),  # noqa: B023
                    },
                    args.runs,
                ).items()
            }
        )

    header = f"{'imgsz':>5} | {'raw session.run':>15} | {'outpost in-process':>18} | {'+ JPEG decode':>13} | {'agent over HTTP':>15} | {'ultralytics predict':>19}"
    print(header)
    print("-" * len(header))
    for size, r in rows.items():
        raw = r["raw"]
        ratio_ul = r["ul_ultralytics"] / r["ul_raw"]
        print(
            f"{size:>5} | {raw:>10.2f} 1.00x | {r['ours']:>11.2f} {r['ours'] / raw:>5.2f}x"
            f" | {r['ours_bytes']:>6.2f} {r['ours_bytes'] / raw:>5.2f}x"
            f" | {r['agent']:>8.2f} {r['agent'] / raw:>5.2f}x | {r['ul_ultralytics']:>12.2f} {ratio_ul:>5.2f}x"
        )
    print("ultralytics is timed last, against its own raw session.run measured beside it;")
    print("in-process = letterbox + tensor + session.run + decode/NMS/rescale on a decoded image;")
    print(
        "agent = HTTP upload of the JPEG + decode + the same path + JSON reply, measured at the client."
    )


if __name__ == "__main__":
    main()
