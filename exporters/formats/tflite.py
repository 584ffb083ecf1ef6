"""TFLite / LiteRT export of Ultralytics checkpoints, run in the ``litert`` toolenv.

Ultralytics' own ``format="litert"`` path converts with ``litert-torch``; it wraps detect,
segment and pose heads so box (and keypoint ``x, y``) channels come out divided by the input
size (per-tensor INT8 quantization then keeps the class scores' resolution). The manifest
records that as ``format.details.output_box_units = "normalized"``; the LiteRT runtime
backend multiplies them back, so every runtime hands the same raw head (pixels) to the
shared post-processing.

Precisions: fp32; fp16 (weights stored as float16 by ``ai-edge-quantizer``, computed in
float32); int8 (static INT8 weights and activations by ``ai-edge-quantizer``, calibrated on
up to 300 images of the run's dataset version preprocessed exactly as the runtime does,
float32 input and output kept; the head and the stem convolution stay float).

Calibration sets each activation's range to the 95th percentile of the ranges the calibration
images give it, one image at a time (the 5th for the minimum). ``ai-edge-quantizer``'s default
merges images by an exponential moving average (weight 0.95 on the ranges seen so far),
which forgets all but the last ~20 images and under-estimates the ranges, so activations of
other images clip; the widest range over every image lets one unusual image coarsen every
step. Measured on a yolo11n (160 px, 77 calibration and 16 validation images): moving
average 0.148 max score deviation, 23/27 detections matched, mAP50-95 0.338 (PyTorch
0.345); widest range 0.050, 20/27, 0.316; 95th percentile 0.032, 23/27, 0.335. INT16
activations (finer steps, the same moving-average ranges) were no better than INT8 (0.148).

:func:`child_export` runs inside the toolenv (see :mod:`exporters.toolenv`); the main
process only sends it a JSON payload and never imports the toolchain.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from exporters.base import (
    Capability,
    ExportArtifact,
    Exporter,
    ExportError,
    ExportRequest,
)
from exporters.toolenv import ToolEnv, child_artifact, child_payload

TOOLCHAIN = "litert"
OUTPUT_BOX_UNITS = "normalized"


class TfliteExporter(Exporter):
    capability = Capability(
        key="tflite",
        title="TFLite / LiteRT",
        frameworks=("ultralytics",),
        tasks=("detect", "segment", "classify", "pose"),
        precisions=("fp32", "fp16", "int8"),
        runtime="litert",
        suffix=".tflite",
        needs=("torch", "ultralytics"),
        notes=(
            "LiteRT flatbuffer for Android, embedded Linux and microcontrollers, converted by "
            "litert-torch in its own toolchain (`outpost export setup litert`, ~1 GB once). "
            "fp16 stores float16 weights; int8 is static INT8 (ai-edge-quantizer, calibrated on "
            "up to 300 images of the run's dataset version, float I/O, float head and stem). "
            "Boxes leave the model divided by the input size; the litert runtime scales them back."
        ),
        extra="litert",
    )

    def check(self, request: ExportRequest) -> None:
        self.check_supported(request, pip_extra="export")
        ToolEnv.for_name(TOOLCHAIN).require("tflite")
        if request.precision == "int8" and not request.options.get("calibration_images"):
            raise ExportError(
                "tflite int8 export needs calibration images: the dataset version has none; "
                "add training images or export fp32/fp16"
            )
        self.check_checkpoint(request)

    def export(self, request: ExportRequest) -> ExportArtifact:
        env = ToolEnv.for_name(TOOLCHAIN)
        payload = child_payload(
            request,
            calibration_images=[str(p) for p in request.options.get("calibration_images", [])],
        )
        try:
            out = env.call(f"{__name__}:child_export", payload, what="tflite")
        except ExportError:
            _clean_build(request.out_dir)
            raise
        return child_artifact(out, request, env, format_key="tflite", runtime="litert")


def _clean_build(out_dir: Path) -> None:
    shutil.rmtree(out_dir / "source", ignore_errors=True)
    for leftover in out_dir.glob("*.tflite"):
        leftover.unlink(missing_ok=True)


def _embedded_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata.json`` Ultralytics appends to a ``.tflite`` (a zip-tolerant flatbuffer)."""
    try:
        with zipfile.ZipFile(path) as zf:
            data: dict[str, Any] = json.loads(zf.read("metadata.json"))
            return data
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return {}


def _append_metadata(path: Path, metadata: dict[str, Any]) -> None:
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps(metadata))


# Tensor names of the converted model carry the PyTorch module path; this matches the head.
HEAD_SCOPE = r".*ultralytics\.nn\.modules\.head\..*"
# ... and this the stem, the first convolution of every Ultralytics task model (model.0).
STEM_SCOPE = r".*\.nn\.tasks\.\w+Model_model/ultralytics\.nn\.modules\.conv\.Conv_0[/;].*"


RANGE_PERCENTILE = 95.0


def collect_ranges(seen: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The calibrator's merge step: keep every calibration image's range of a tensor (see
    :func:`percentile_ranges`), the latest as its ``min``/``max``."""
    if not seen:
        return new
    return {
        **new,
        "mins": [*seen.get("mins", [seen["min"]]), new["min"]],
        "maxs": [*seen.get("maxs", [seen["max"]]), new["max"]],
    }


def percentile_ranges(qsvs: dict[str, Any], percentile: float = RANGE_PERCENTILE) -> dict[str, Any]:
    """Each tensor's range from the per-image ranges :func:`collect_ranges` kept: the
    ``percentile``-th of the maxima and the ``100 - percentile``-th of the minima."""
    out = {}
    for name, qsv in qsvs.items():
        qsv = dict(qsv)
        mins = np.stack(qsv.pop("mins", [qsv["min"]]))
        maxs = np.stack(qsv.pop("maxs", [qsv["max"]]))
        dtype = np.asarray(qsv["min"]).dtype
        qsv["min"] = np.percentile(mins, 100.0 - percentile, axis=0).astype(dtype)
        qsv["max"] = np.percentile(maxs, percentile, axis=0).astype(dtype)
        out[name] = qsv
    return out


def _quantize(
    source: Path, target: Path, precision: str, images: list[Path], imgsz: int, task: str
) -> dict[str, Any]:
    """Quantize the float32 model at ``source`` into ``target`` with ``ai-edge-quantizer``."""
    from ai_edge_quantizer import qtyping, quantizer, recipe, recipe_manager

    qt = quantizer.Quantizer(str(source))
    if precision == "fp16":
        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=recipe.AlgorithmName.FLOAT_CASTING,
        )
        qt.load_quantization_recipe(manager.get_quantization_recipe())
        qt.quantize().export_model(str(target), overwrite=True)
        return {
            "quantized": "fp16 weights, float32 compute",
            "quantizer": "ai-edge-quantizer weight-only float casting (16 bit)",
        }
    from exporters.formats.openvino import calibration_tensors

    tensors = calibration_tensors(images, imgsz, task)
    if not tensors:
        raise ExportError("tflite int8 export found no readable calibration images")
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    # Float input and output, INT8 inside: every runtime feeds the same float tensor.
    for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        qt.update_quantization_recipe(
            regex=".*", operation_name=op, algorithm_key=recipe.AlgorithmName.NO_QUANTIZE
        )
    # The head (Ultralytics' Detect/Segment/Pose/Classify modules: box regression, class
    # scores, box decoding) stays float: quantized, its scores drift by ~0.36 and mAP50-95
    # drops by 0.05 on a small detector, for little speed. So does the stem convolution (3
    # input channels, cheap): quantized, it moved a yolo11n's raw boxes by 7.1 px, float 3.2.
    for scope in (HEAD_SCOPE, STEM_SCOPE):
        qt.update_quantization_recipe(
            regex=scope,
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=recipe.AlgorithmName.NO_QUANTIZE,
        )
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, recipe_manager

    signatures = Interpreter(model_path=str(source)).get_signature_list()
    key, spec = next(iter(signatures.items()))
    samples = [{spec["inputs"][0]: t} for t in tensors]
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(qt.get_quantization_recipe())
    calibration = calibrator.Calibrator(str(source), qsv_update_func=collect_ranges)
    calibration.calibrate({key: samples}, manager)
    result = percentile_ranges(dict(calibration.get_model_qsvs()))
    qt.quantize(calibration_result=result).export_model(str(target), overwrite=True)
    return {
        "quantized": "int8",
        "quantizer": "ai-edge-quantizer static_wi8_ai8 (float I/O, float head and stem)",
        "calibration": f"{RANGE_PERCENTILE:g}th percentile of the per-image activation ranges",
        "calibration_images": len(tensors),
    }


def child_export(payload: dict[str, Any]) -> dict[str, Any]:
    """Inside the toolenv: Ultralytics' LiteRT export, then the precision's quantization."""
    from exporters.formats.ultralytics_common import export_with_ultralytics, remove_source

    out_dir = Path(payload["out_dir"])
    request = ExportRequest(
        checkpoint=Path(payload["checkpoint"]),
        framework=payload["framework"],
        task=payload["task"],
        imgsz=int(payload["imgsz"]),
        out_dir=out_dir,
        precision=payload["precision"],
        options={"config_dir": payload.get("config_dir")},
    )
    result = export_with_ultralytics(request, "litert", "TFLite")
    produced = Path(result.produced)
    metadata = _embedded_metadata(produced)
    target = out_dir / "model.tflite"
    details: dict[str, Any] = {
        "converter": "litert-torch (Ultralytics format=litert)",
        "dynamic": False,
        "end2end": result.end2end,
        "input_layout": "NCHW",
        # Raw box/keypoint channels as the model file gives them; the litert runtime scales
        # normalized ones back to input pixels.
        "output_box_units": "pixels"
        if result.task == "classify" or result.end2end
        else OUTPUT_BOX_UNITS,
    }
    precision = payload["precision"]
    if precision == "fp32":
        shutil.move(str(produced), target)
    else:
        staging = out_dir / "model.quant.tflite"
        details.update(
            _quantize(
                produced,
                staging,
                precision,
                [Path(p) for p in payload.get("calibration_images", [])],
                request.imgsz,
                result.task,
            )
        )
        _append_metadata(staging, metadata)  # the runtime reads the head facts from it
        staging.replace(target)
        produced.unlink(missing_ok=True)
    remove_source(request)
    import ai_edge_litert
    import litert_torch

    tools = {
        **result.tools,
        "litert-torch": str(getattr(litert_torch, "__version__", "")),
        "ai-edge-litert": str(getattr(ai_edge_litert, "__version__", "")),
    }
    return {
        "model_file": str(target),
        "class_names": list(result.class_names),
        "architecture": result.architecture,
        "input_name": "images",
        "output_layout": result.output_layout,
        "preprocessing": result.preprocessing,
        "postprocessing": result.postprocessing,
        "details": details,
        "tools": {k: v for k, v in tools.items() if v},
    }
