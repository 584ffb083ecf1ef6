"""Export formats side by side, in the spirit of ``yolo benchmark``.

For one trained run: per format and precision, the export time, package size, the p50/p90
latency of one image through our runtime (``Predictor.predict``: letterbox, backend, NMS) and
through Ultralytics ``predict`` on the same model file, the parity numbers stored with the
export, and the accuracy measured at export time on the run's validation split (box mAP50-95
and mAP50, or a classifier's top-1) through our runtime and through the PyTorch model.
Goal: our p50 ≤ Ultralytics' on every format, every export within its tolerance.

    .venv/bin/python benchmarks/export_formats.py --workspace WS [--run latest]
        [--formats onnx,torchscript,openvino,openvino:fp16,openvino:int8,tflite,tflite:int8,coreml]
        [--runs 50] [--threads N]

Exports run in a child process (``outpost export --json``); the two predict paths are timed
here, in alternation, so a busy machine skews neither. The default formats include
``tflite`` and ``tflite:int8`` when the ``litert`` toolchain is set up, and ``coreml`` when
the ``coreml`` one is (``outpost export setup NAME``). CoreML predicts only on macOS, so
its row holds the conversion time and size only (converted here, outside the export records).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtimes.offline import apply_offline_env  # noqa: E402


def percentiles(
    fns: list[Callable[[], object]], runs: int, warmup: int = 5, block: int = 1
) -> list[tuple[float, float]]:
    """p50/p90 ms of each function, timed in alternation.

    ``block`` > 1 alternates blocks of that many timed calls, each after one untimed call:
    for functions that switch a process-wide setting (torch's thread count), whose first
    call after a switch rebuilds the thread pool, a cost of the alternation, not of either.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, runs // block)):
        for fn, out in zip(fns, times, strict=True):
            if block > 1:
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
    return [(float(np.percentile(t, 50)), float(np.percentile(t, 90))) for t in times]


def export(workspace: Path, run: str, formats: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "desktop_app.cli", "export", run, "--format", formats]
        + ["--workspace", str(workspace), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if not proc.stdout.strip():
        sys.exit(f"export failed: {proc.stderr[-2000:]}")
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    return results


def default_formats() -> str:
    """The base formats, plus those whose toolchain is set up on this machine."""
    from exporters.toolenv import ToolEnv

    formats = ["onnx", "torchscript", "openvino", "openvino:fp16", "openvino:int8"]
    if ToolEnv.for_name("litert").exists():
        formats += ["tflite", "tflite:int8"]
    if ToolEnv.for_name("coreml").exists():
        formats.append("coreml")
    return ",".join(formats)


def convert_only(workspace: Path, run_ref: str, spec: str, scratch: Path) -> dict[str, Any]:
    """Convert the run to a format no runtime here predicts with (CoreML): time and size."""
    from desktop_app.core.training import resolve_run
    from desktop_app.core.workspace import Workspace
    from exporters.base import ExportRequest, try_export
    from exporters.registry import default_registry
    from runtimes.errors import OutpostError

    key, _, precision = spec.partition(":")
    ws = Workspace.open(workspace)
    run = resolve_run(ws, run_ref)
    row: dict[str, Any] = {"id": "-", "run_id": run.id, "format": key}
    row["precision"] = precision or "fp32"
    try:
        artifact = try_export(
            default_registry().get(key),
            ExportRequest(
                checkpoint=ws.resolve(run.best_checkpoint),
                framework=run.framework,
                task=run.task,
                imgsz=int(run.params.get("imgsz") or 640),
                out_dir=scratch / f"convert-{key}",
                precision=row["precision"],
                options={"config_dir": str(workspace / "yolo_config")},
            ),
        )
    except OutpostError as exc:
        return {**row, "status": "failed", "error": str(exc)}
    reason = (artifact.details.get("parity") or {}).get("reason", "")
    return {
        **row,
        "status": "converted",
        "seconds": artifact.seconds,
        "size_mb": artifact.model_file.stat().st_size / 1e6,
        "error": f"parity not run: {reason}",
    }


def ultralytics_model_path(folder: Path, manifest: Any, scratch: Path) -> Path:
    """Lay the package's model file out as Ultralytics expects to find it."""
    model_file = folder / manifest.format.file
    if manifest.format.key != "openvino":
        return model_file
    target = scratch / f"{manifest.name}-{manifest.version}_openvino_model"
    target.mkdir(parents=True, exist_ok=True)
    for name in manifest.files:
        if name.endswith((".xml", ".bin")):
            shutil.copyfile(folder / name, target / name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--run", default="latest")
    parser.add_argument("--formats", default=None, help="default: every format set up here")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    apply_offline_env(args.workspace / "yolo_config")
    specs = (args.formats or default_formats()).split(",")
    convert_specs = [f for f in specs if f.split(":")[0] == "coreml"]
    export_specs = [f for f in specs if f not in convert_specs]
    exports = export(args.workspace, args.run, ",".join(export_specs)) if export_specs else []
    with tempfile.TemporaryDirectory() as scratch:
        converted = [
            convert_only(args.workspace, args.run, f, Path(scratch)) for f in convert_specs
        ]

    import torch
    from ultralytics import YOLO

    from runtimes.package import PackageReader
    from runtimes.predictor import Predictor
    from runtimes.preprocess import read_image

    threads = args.threads
    rows = []
    img = np.zeros((1, 1, 3), np.uint8)
    imgsz = 0
    with tempfile.TemporaryDirectory() as tmp:
        for e in exports:
            if not e.get("package"):
                rows.append({**e, "ours": None})
                continue
            package = Path(e["package"])
            folder = Path(tmp) / e["id"]
            with PackageReader(package) as reader:
                reader.extract(folder)
            predictor = Predictor(folder, threads=threads)
            image_path = (
                args.image
                or sorted((args.workspace / "runs").glob(f"{e['run_id']}/data/images/val/*"))[0]
            )
            img = read_image(image_path)
            imgsz = predictor.input_hw[0]
            reference = YOLO(
                str(ultralytics_model_path(folder, predictor.manifest, Path(tmp))),
                task=predictor.manifest.model.task,
            )
            reference.predict(img, imgsz=imgsz, device="cpu", verbose=False)  # sets it up
            ultra_threads = torch.get_num_threads()  # Ultralytics: cpu_count - 1 on the CPU

            def ours_once(p: Predictor = predictor, i: np.ndarray = img) -> None:
                if p.backend.key == "torchscript":
                    torch.set_num_threads(threads)  # torch's thread count is process-wide
                p.predict(i)

            def theirs_once(
                r: Any = reference, i: np.ndarray = img, s: int = imgsz, n: int = ultra_threads
            ) -> None:
                torch.set_num_threads(n)
                r.predict(i, imgsz=s, device="cpu", verbose=False)

            # torch's thread count is process-wide: switching it on every call would time the
            # thread pool's rebuild, so TorchScript alternates in blocks when the counts differ.
            switches = predictor.backend.key == "torchscript" and threads != ultra_threads
            ours, theirs = percentiles(
                [ours_once, theirs_once], args.runs, block=10 if switches else 1
            )
            predictor.close()
            rows.append(
                {
                    **e,
                    "size_mb": package.stat().st_size / 1e6,
                    "ours": ours,
                    "theirs": theirs,
                    "ultra_threads": f"[{ultra_threads}]" if e["format"] == "torchscript" else "",
                }
            )

    print(
        f"\nrun {(exports or converted)[0]['run_id']}: {args.runs} alternating runs after 5 warm-up, "
        f"{threads} threads, one {img.shape[1]}x{img.shape[0]} image at {imgsz} px; "
        "[n]: torch threads Ultralytics chose\n"
    )
    header = (
        f"{'format':<12} {'prec':<5} {'status':<17} {'export s':>8} {'MB':>5} "
        f"{'ours p50/p90 ms':>16} {'ultra p50/p90 ms':>17} {'ratio':>8} "
        f"{'conf':>5} {'matched':>8} {'box px':>7} {'score':>8} {'raw box':>8} {'raw score':>9} "
        f"{'mAP ours':>8} {'mAP torch':>9} {'mAP50 ours':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in converted:
        size = f"{r['seconds']:>8.1f} {r['size_mb']:>5.1f}" if r["status"] == "converted" else ""
        print(
            f"{r['format']:<12} {r['precision']:<5} {r['status']:<17} {size} {r.get('error', '')}"
        )
    for r in rows:
        if r["ours"] is None:
            print(f"{r['format']:<12} {r['precision']:<5} {r['status']:<17} {r.get('error', '')}")
            continue
        v = r.get("validation") or {}
        ours, theirs = r["ours"], r["theirs"]
        matched = f"{v['matched']}/{max(v['reference_detections'], v['export_detections'])}"
        acc = v.get("accuracy") or {}
        raw_box = v.get("raw_max_box_deviation_px")
        raw_score = v.get("raw_max_score_deviation")
        ratio = f"{ours[0] / theirs[0]:.2f}{r['ultra_threads']}"
        print(
            f"{r['format']:<12} {r['precision']:<5} {r['status']:<17} {r['seconds']:>8.1f} "
            f"{r['size_mb']:>5.1f} {ours[0]:>7.2f}/{ours[1]:<8.2f} "
            f"{theirs[0]:>8.2f}/{theirs[1]:<8.2f} {ratio:>8} {v['conf']:>5} {matched:>8} "
            f"{v['max_box_deviation_px']:>7.3f} {v['max_score_deviation']:>8.5f} "
            f"{_num(raw_box, 8, 4)} {_num(raw_score, 9, 6)} "
            f"{_num(acc.get('export'), 8, 4)} {_num(acc.get('pytorch'), 9, 4)} "
            f"{_num(acc.get('export_map50'), 10, 4)}"
        )


def _num(value: float | None, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


if __name__ == "__main__":
    main()
