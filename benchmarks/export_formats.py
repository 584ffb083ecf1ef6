"""Export formats side by side, in the spirit of ``yolo benchmark``.

For one trained run: per format and precision, the export time, package size, the p50/p90
latency of one image through our runtime (``Predictor.predict``: letterbox, backend, NMS) and
through Ultralytics ``predict`` on the same model file, the parity numbers stored with the
export, and the accuracy measured at export time on the run's validation split (box mAP50-95
and mAP50, or a classifier's top-1) through our runtime and through the PyTorch model.
Goal: our p50 ≤ Ultralytics' on every format, every export within its tolerance.

Latency is timed twice, so the table is honest either way:

* defaults: each side as it loads the model file by itself. Our backends pick their own
  thread count (LiteRT: one core less than the machine, at most 4); Ultralytics' LiteRT
  backend takes ``min(8, cpu_count - 1)``, its OpenVINO backend every core and, on a CPU
  with bf16 (or fp16) arithmetic, the plugin's reduced default precision, where ours pins
  f32 for an FP32 export. Both sides' thread counts and precisions are printed.
* matched: both at one thread count (``--threads N``, else the count Ultralytics picked)
  and, for OpenVINO, both at our inference precision (Ultralytics' compiled model is
  recompiled with it). ONNX Runtime's threads are left to the library on Ultralytics' side
  ("auto").

    .venv/bin/python benchmarks/export_formats.py --workspace WS [--run latest]
        [--formats onnx,torchscript,openvino,openvino:fp16,openvino:int8,tflite,tflite:int8,coreml]
        [--runs 50] [--threads N]

Exports run in a child process (``outpost export --json``); the predict paths (each side at
its defaults and, where they differ, matched) are timed here, in alternation, so a busy
machine skews none of them. The default formats include
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


def our_settings(predictor: Any) -> tuple[int | None, str | None]:
    """The thread count and inference precision our loaded backend runs with."""
    backend = predictor.backend
    if backend.key == "onnxruntime":
        return int(backend.session.get_session_options().intra_op_num_threads), None
    if backend.key == "torchscript":
        import torch

        return torch.get_num_threads(), None  # set process-wide when the backend loaded
    return getattr(backend, "threads", None), getattr(backend, "inference_precision", None)


def ultralytics_settings(reference: Any, key: str) -> tuple[int | None, str | None]:
    """The thread count and inference precision Ultralytics' backend runs with after its first
    ``predict`` (threads None: the library picks them itself, ONNX Runtime's default)."""
    backend = reference.predictor.model.backend
    if key == "tflite":
        from ultralytics.nn.backends import litert

        return int(litert.NUM_THREADS), None
    if key == "openvino":
        compiled = backend.ov_compiled_model
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        return int(compiled.get_property("INFERENCE_NUM_THREADS")), hint.to_string()
    if key == "torchscript":
        import torch

        return torch.get_num_threads(), None
    if key == "onnx":
        threads = int(backend.session.get_session_options().intra_op_num_threads)
        return threads or None, None
    return None, None


def load_reference(
    model_path: Path,
    task: str,
    img: np.ndarray,
    imgsz: int,
    key: str,
    threads: int | None = None,
    precision: str | None = None,
) -> Any:
    """Ultralytics' model on ``model_path``, set up by one ``predict``; ``threads`` and
    ``precision`` pin what its LiteRT or OpenVINO backend runs with (the matched comparison;
    TorchScript's calls set torch's count themselves), None leaves Ultralytics' own choice."""
    from ultralytics import YOLO

    if key == "tflite" and threads:
        from ultralytics.nn.backends import litert

        default, litert.NUM_THREADS = litert.NUM_THREADS, threads
        try:
            reference = YOLO(str(model_path), task=task)
            reference.predict(img, imgsz=imgsz, device="cpu", verbose=False)
        finally:
            litert.NUM_THREADS = default
        return reference
    reference = YOLO(str(model_path), task=task)
    reference.predict(img, imgsz=imgsz, device="cpu", verbose=False)  # sets it up
    if key == "openvino" and (threads or precision):
        import openvino as ov

        backend = reference.predictor.model.backend
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        xml = next(Path(model_path).glob("*.xml"))
        backend.ov_compiled_model = ov.Core().compile_model(str(xml), "CPU", config)
    return reference


def _settings(threads: int | None, precision: str | None) -> str:
    text = str(threads) if threads else "auto"
    return f"{text} {precision}" if precision else text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--run", default="latest")
    parser.add_argument("--formats", default=None, help="default: every format set up here")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the matched comparison (default: the count Ultralytics picks)",
    )
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

    from runtimes.package import PackageReader
    from runtimes.predictor import Predictor
    from runtimes.preprocess import read_image

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
            image_path = (
                args.image
                or sorted((args.workspace / "runs").glob(f"{e['run_id']}/data/images/val/*"))[0]
            )
            img = read_image(image_path)
            key = e["format"]
            ours_default = Predictor(folder)  # every backend at its own default thread count
            ours_setting = our_settings(ours_default)
            imgsz = ours_default.input_hw[0]
            task = ours_default.manifest.model.task
            model_path = ultralytics_model_path(folder, ours_default.manifest, Path(tmp))
            reference = load_reference(model_path, task, img, imgsz, key)
            ultra_setting = ultralytics_settings(reference, key)

            # Matched: both sides at one thread count (--threads, else Ultralytics' own) and,
            # where Ultralytics' OpenVINO picks a reduced precision, both at ours.
            threads = args.threads or ultra_setting[0] or ours_setting[0]
            ours_matched = (
                Predictor(folder, threads=threads) if threads != ours_setting[0] else ours_default
            )
            matched_setting = (
                our_settings(ours_matched) if ours_matched is not ours_default else ours_setting
            )
            pin_threads = threads if threads != ultra_setting[0] else None
            pin_precision = matched_setting[1] if matched_setting[1] != ultra_setting[1] else None
            if key == "torchscript":  # one model; its calls set torch's thread count
                reference_matched = reference
                theirs_matched_setting = (pin_threads or ultra_setting[0], None)
                extra_theirs = pin_threads is not None
            elif (pin_threads and key in ("tflite", "openvino")) or pin_precision:
                reference_matched = load_reference(
                    model_path, task, img, imgsz, key, pin_threads, pin_precision
                )
                theirs_matched_setting = ultralytics_settings(reference_matched, key)
                if key == "tflite":  # its module-wide count is back to the default by now
                    theirs_matched_setting = (pin_threads, None)
                extra_theirs = True
            else:  # nothing to pin (ONNX Runtime: Ultralytics leaves its threads to it)
                reference_matched, theirs_matched_setting = reference, ultra_setting
                extra_theirs = False

            def run_ours(p: Any, n: int | None, i: np.ndarray = img) -> Callable[[], None]:
                def once() -> None:
                    if p.backend.key == "torchscript" and n:
                        torch.set_num_threads(n)  # torch's thread count is process-wide
                    p.predict(i)

                return once

            def run_theirs(
                r: Any, n: int | None, i: np.ndarray = img, s: int = imgsz
            ) -> Callable[[], None]:
                def once() -> None:
                    if n:  # TorchScript only: torch's thread count is process-wide
                        torch.set_num_threads(n)
                    r.predict(i, imgsz=s, device="cpu", verbose=False)

                return once

            fns = [
                run_ours(ours_default, ours_setting[0]),
                run_theirs(reference, ultra_setting[0] if key == "torchscript" else None),
            ]
            if ours_matched is not ours_default:
                fns.append(run_ours(ours_matched, matched_setting[0]))
            if extra_theirs:
                torch_threads = theirs_matched_setting[0] if key == "torchscript" else None
                fns.append(run_theirs(reference_matched, torch_threads))
            # torch's thread count is process-wide: switching it on every call would time the
            # thread pool's rebuild, so TorchScript alternates in blocks when the counts differ.
            torch_counts = {ours_setting[0], ultra_setting[0], matched_setting[0]}
            block = 10 if key == "torchscript" and len(torch_counts) > 1 else 1
            times = percentiles(fns, args.runs, block=block)
            ours_d, theirs_d = times[0], times[1]
            rest = times[2:]
            ours_m = rest.pop(0) if ours_matched is not ours_default else ours_d
            theirs_m = rest.pop(0) if extra_theirs else theirs_d
            ours_default.close()
            ours_matched.close()
            rows.append(
                {
                    **e,
                    "size_mb": package.stat().st_size / 1e6,
                    "ours": ours_d,
                    "theirs": theirs_d,
                    "ours_matched": ours_m,
                    "theirs_matched": theirs_m,
                    "settings": (ours_setting, ultra_setting),
                    "matched_settings": (matched_setting, theirs_matched_setting),
                }
            )
    report(rows, converted, exports, args.runs, img, imgsz)


def report(
    rows: list[dict[str, Any]],
    converted: list[dict[str, Any]],
    exports: list[dict[str, Any]],
    runs: int,
    img: np.ndarray,
    imgsz: int,
) -> None:
    """Print the latency table (defaults and matched), the parity table and the goal."""
    print(
        f"\nrun {(exports or converted)[0]['run_id']}: {runs} alternating runs after 5 warm-up "
        f"on {os.cpu_count()} CPUs, one {img.shape[1]}x{img.shape[0]} image at {imgsz} px\n"
        "defaults: each side as it loads a model file by itself (threads, inference precision "
        "where the runtime picks one);\nmatched: both at one thread count (and OpenVINO both "
        "at our precision); ratio = ours / ultra p50; 'auto': the library decides\n"
    )
    header = (
        f"{'format':<12} {'prec':<5} {'status':<17} {'export s':>8} {'MB':>5} | "
        f"{'thr ours/ultra':>16} {'ours p50/p90':>13} {'ultra p50/p90':>13} {'ratio':>5} | "
        f"{'matched':>10} {'ours p50/p90':>13} {'ultra p50/p90':>13} {'ratio':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in converted:
        size = f"{r['seconds']:>8.1f} {r['size_mb']:>5.1f}" if r["status"] == "converted" else ""
        print(
            f"{r['format']:<12} {r['precision']:<5} {r['status']:<17} {size} {r.get('error', '')}"
        )
    misses = []
    for r in rows:
        if r["ours"] is None:
            print(f"{r['format']:<12} {r['precision']:<5} {r['status']:<17} {r.get('error', '')}")
            misses.append(f"{r['format']}:{r['precision']} {r['status']}")
            continue
        (ours_s, ultra_s), (m_ours, m_ultra) = r["settings"], r["matched_settings"]
        ratio = r["ours"][0] / r["theirs"][0]
        m_ratio = r["ours_matched"][0] / r["theirs_matched"][0]
        thr = f"{_settings(*ours_s)}/{_settings(*ultra_s)}"
        matched = _settings(*m_ours)
        if m_ours != m_ultra:
            matched += f"/{_settings(*m_ultra)}"
        print(
            f"{r['format']:<12} {r['precision']:<5} {r['status']:<17} {r['seconds']:>8.1f} "
            f"{r['size_mb']:>5.1f} | {thr:>16} {_pair(r['ours'])} {_pair(r['theirs'])} "
            f"{ratio:>5.2f} | {matched:>10} {_pair(r['ours_matched'])} "
            f"{_pair(r['theirs_matched'])} {m_ratio:>5.2f}"
        )
        if ratio > 1.0:
            misses.append(f"{r['format']}:{r['precision']} slower at defaults ({ratio:.2f})")
        if r["status"] != "completed":
            misses.append(f"{r['format']}:{r['precision']} {r['status']}")
    print()
    header = (
        f"{'format':<12} {'prec':<5} {'conf':>5} {'matched':>8} {'box px':>7} {'score':>8} "
        f"{'raw box':>8} {'raw score':>9} {'mAP ours':>8} {'mAP torch':>9} {'mAP50 ours':>10}  "
        "failures"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        v = r.get("validation") or {}
        if r["ours"] is None or not v:
            continue
        matched = f"{v['matched']}/{max(v['reference_detections'], v['export_detections'])}"
        acc = v.get("accuracy") or {}
        print(
            f"{r['format']:<12} {r['precision']:<5} {v['conf']:>5} {matched:>8} "
            f"{v['max_box_deviation_px']:>7.3f} {v['max_score_deviation']:>8.5f} "
            f"{_num(v.get('raw_max_box_deviation_px'), 8, 4)} "
            f"{_num(v.get('raw_max_score_deviation'), 9, 6)} "
            f"{_num(acc.get('export'), 8, 4)} {_num(acc.get('pytorch'), 9, 4)} "
            f"{_num(acc.get('export_map50'), 10, 4)}  {'; '.join(v.get('failures') or [])}"
        )
    print(
        "\ngoal (our p50 <= Ultralytics' at each side's defaults, every export within its "
        f"tolerance): {'met' if not misses else 'NOT met: ' + ', '.join(misses)}"
    )


def _pair(p50_p90: tuple[float, float]) -> str:
    return f"{p50_p90[0]:>6.2f}/{p50_p90[1]:<6.2f}"


def _num(value: float | None, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


if __name__ == "__main__":
    main()
