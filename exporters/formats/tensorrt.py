"""TensorRT: an engine built here (NVIDIA GPU + ``tensorrt``), or ONNX the device builds from.

A TensorRT engine is tied to the GPU and TensorRT version that built it, so the portable
choice is :class:`OnnxForTensorRtExporter` (``outpost export RUN --format onnx
--for-tensorrt``): an ONNX package whose ``format.details.tensorrt_build`` asks the device's
ONNX Runtime to build and cache the engine itself through its TensorRT execution provider
(see :mod:`runtimes.backends.onnxruntime`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from typing import Any

from exporters.base import Capability, ExportArtifact, Exporter, ExportError, ExportRequest
from exporters.formats.onnx import OnnxExporter
from exporters.formats.ultralytics_common import export_with_ultralytics, remove_source

DEFAULT_WORKSPACE_MB = 1024
NEEDS_MESSAGE = (
    "tensorrt export needs an NVIDIA GPU and the tensorrt package; or use "
    "`--format onnx --for-tensorrt` to ship ONNX and let the device build the engine"
)


def cuda_gpu_available() -> bool:
    """Whether torch sees an NVIDIA GPU here (False without torch or CUDA)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


class TensorRtExporter(Exporter):
    capability = Capability(
        key="tensorrt",
        title="TensorRT engine",
        frameworks=("ultralytics",),
        tasks=("detect", "segment", "classify", "pose"),
        precisions=("fp32", "fp16"),
        runtime="tensorrt",
        suffix=".engine",
        needs=("torch", "ultralytics", "onnx", "tensorrt"),
        notes=(
            "A serialized engine, built only where an NVIDIA GPU and TensorRT exist and valid "
            "only on that GPU/TensorRT version. Elsewhere use `--format onnx --for-tensorrt`."
        ),
        extra="export",
    )

    def check(self, request: ExportRequest) -> None:
        if not (tensorrt_available() and cuda_gpu_available()):
            raise ExportError(NEEDS_MESSAGE)
        super().check(request)

    def export(self, request: ExportRequest) -> ExportArtifact:
        half: dict[str, Any] = {"half": True} if request.precision == "fp16" else {}
        workspace = int(request.options.get("workspace_mb", DEFAULT_WORKSPACE_MB))
        result = export_with_ultralytics(
            request, "engine", "TensorRT", device=0, workspace=workspace / 1024, **half
        )
        target = request.out_dir / "model.engine"
        shutil.move(str(result.produced), target)
        for leftover in request.out_dir.glob("source/*.onnx"):
            leftover.unlink(missing_ok=True)
        remove_source(request)
        import tensorrt

        return ExportArtifact(
            format_key="tensorrt",
            runtime="tensorrt",
            model_file=target,
            class_names=result.class_names,
            architecture=result.architecture,
            input_name="images",
            input_shape=(1, 3, request.imgsz, request.imgsz),
            output_layout=result.output_layout,
            preprocessing=result.preprocessing,
            postprocessing=result.postprocessing,
            precision=request.precision,
            details={
                "workspace_mb": workspace,
                "fp16": request.precision == "fp16",
                "end2end": result.end2end,
                "built_on": "this machine's GPU (an engine runs only on the same GPU model and TensorRT version)",
            },
            tools={**result.tools, "tensorrt": str(tensorrt.__version__)},
        )


def tensorrt_build_request(fp16: bool, workspace_mb: int = DEFAULT_WORKSPACE_MB) -> dict[str, Any]:
    """The ``format.details.tensorrt_build`` of an ONNX package meant for TensorRT."""
    return {"fp16": bool(fp16), "workspace_mb": int(workspace_mb), "engine_cache": "trt_cache"}


class OnnxForTensorRtExporter(Exporter):
    """ONNX shipped for the device to build its own TensorRT engine from (``--for-tensorrt``).

    The package's format is plain ``onnx`` (every ONNX runtime runs it); ``fp16`` here is
    the precision the device's engine is built at, the shipped ONNX stays float32.
    """

    capability = Capability(
        key="onnx-tensorrt",
        title="ONNX for TensorRT (engine built on the device)",
        frameworks=("ultralytics",),
        tasks=("detect", "segment", "classify", "pose"),
        precisions=("fp32", "fp16"),
        runtime="onnxruntime",
        suffix=".onnx",
        needs=("torch", "ultralytics", "onnx", "onnxslim"),
        notes=(
            "An ONNX package (format key onnx) asking the device's ONNX Runtime TensorRT "
            "execution provider to build and cache the engine in the model folder; fp16 = "
            "an fp16 engine. Runs as plain ONNX where TensorRT is absent."
        ),
    )

    def export(self, request: ExportRequest) -> ExportArtifact:
        onnx_request = dataclasses.replace(request, precision="fp32")
        artifact = OnnxExporter().export(onnx_request)
        build = tensorrt_build_request(
            request.precision == "fp16",
            int(request.options.get("workspace_mb", DEFAULT_WORKSPACE_MB)),
        )
        return dataclasses.replace(artifact, details={**artifact.details, "tensorrt_build": build})
