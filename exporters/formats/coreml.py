"""CoreML export (``.mlpackage``, ML Program) of Ultralytics checkpoints and timm classifiers,
in the ``coreml`` toolenv.

coremltools converts on Linux but CoreML predicts only on macOS (and iOS): an export made
here cannot be checked against the PyTorch model, so its parity is recorded as ``not_run``
with the reason (:data:`PARITY_NOT_RUN`) and it must never count as validated.

An ``.mlpackage`` is a folder; a package holds single files, so it ships as
``model.mlpackage.zip`` (stored, not compressed) which the CoreML runtime backend and the
generated wrappers unpack beside it. Precisions: fp32 (float32 compute), fp16 (float16
compute), int8 (8-bit k-means palettized weights, float16 compute: coremltools' weight
compression). The input is an RGB image type (scale 1/255), as Apple's Vision framework
expects; the outputs are the raw head, like every other format (no NMS pipeline).

A timm classifier (classify only) is rebuilt in the toolenv from the run's checkpoint by
:func:`~exporters.formats.timm_common.load_timm_checkpoint` (``weights_only=True``), traced,
and converted with the same RGB image input: its ``mean``/``std`` normalisation is folded into
the graph ahead of the network (an image input has one scale for all channels), so the
package's preprocessing is the run's letterbox (Pillow bilinear, 114 grey) and 1/255 only,
and the output is the class probabilities (softmax included), as in its other formats.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

from exporters.base import (
    Capability,
    ExportArtifact,
    Exporter,
    ExportError,
    ExportRequest,
)
from exporters.formats.timm_common import check_timm_task
from exporters.toolenv import ToolEnv, child_artifact, child_payload

TOOLCHAIN = "coreml"
MODEL_ARCHIVE = "model.mlpackage.zip"
PARITY_NOT_RUN = {
    "status": "not_run",
    "reason": "CoreML predicts only on macOS; the export was converted but not checked "
    "against the PyTorch model here",
}
QUANTIZE = {"fp32": None, "fp16": 16, "int8": 8}


class CoreMlExporter(Exporter):
    capability = Capability(
        key="coreml",
        title="CoreML",
        frameworks=("ultralytics", "timm"),
        tasks=("detect", "segment", "classify", "pose"),
        precisions=("fp32", "fp16", "int8"),
        runtime="coreml",
        suffix=".mlpackage",
        needs=("torch", "ultralytics"),
        notes=(
            "CoreML ML Program (.mlpackage) for Apple devices, converted by coremltools in its "
            "own toolchain (`outpost export setup coreml`). Converts on Linux, predicts only on "
            "macOS: parity is not run elsewhere. int8 = 8-bit palettized weights. timm: classify "
            "only (traced, mean/std and softmax inside the model)."
        ),
        extra="coreml",
    )

    def check(self, request: ExportRequest) -> None:
        cap = self.capability
        check_timm_task(request.framework, request.task, cap.key)
        self.check_supported(request, pip_extra="export")
        ToolEnv.for_name(TOOLCHAIN).require("coreml")
        self.check_checkpoint(request)

    def export(self, request: ExportRequest) -> ExportArtifact:
        env = ToolEnv.for_name(TOOLCHAIN)
        payload = child_payload(request)
        try:
            out = env.call(f"{__name__}:child_export", payload, what="coreml")
        except ExportError:
            shutil.rmtree(request.out_dir / "source", ignore_errors=True)
            shutil.rmtree(request.out_dir / "model.mlpackage", ignore_errors=True)
            raise
        return child_artifact(
            out,
            request,
            env,
            format_key="coreml",
            runtime="coreml",
            details={**out["details"], "parity": dict(PARITY_NOT_RUN)},
        )


def parity_not_run(details: dict[str, Any]) -> str | None:
    """The reason an export's parity could not be run here (None when it can be)."""
    parity = details.get("parity")
    if isinstance(parity, dict) and parity.get("status") == "not_run":
        return str(parity.get("reason", "parity not run"))
    return None


def zip_mlpackage(folder: Path, archive: Path) -> None:
    """Store the ``.mlpackage`` folder as one zip (entries under ``model.mlpackage/``)."""
    tmp = archive.with_name(archive.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"model.mlpackage/{path.relative_to(folder).as_posix()}")
    tmp.replace(archive)


def child_export(payload: dict[str, Any]) -> dict[str, Any]:
    """Inside the toolenv: Ultralytics' CoreML export (raw head, no NMS pipeline), or a timm
    classifier's conversion (:func:`child_export_timm`)."""
    if payload["framework"] == "timm":
        return child_export_timm(payload)
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
    quantize = QUANTIZE[request.precision]
    kwargs: dict[str, Any] = {"nms": False}
    if quantize is not None:
        kwargs["quantize"] = quantize
    result = export_with_ultralytics(request, "coreml", "CoreML", **kwargs)
    folder = out_dir / "model.mlpackage"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.move(str(result.produced), folder)
    import coremltools as ct

    spec = ct.utils.load_spec(str(folder))
    inputs = [i.name for i in spec.description.input]
    outputs = [o.name for o in spec.description.output]
    archive = out_dir / MODEL_ARCHIVE
    zip_mlpackage(folder, archive)
    shutil.rmtree(folder, ignore_errors=True)
    remove_source(request)
    return {
        "model_file": str(archive),
        "class_names": list(result.class_names),
        "architecture": result.architecture,
        "input_name": inputs[0] if inputs else "image",
        "output_layout": result.output_layout,
        "preprocessing": result.preprocessing,
        "postprocessing": result.postprocessing,
        "details": {
            "container": "zip of model.mlpackage (unpacked beside it before loading)",
            "model_type": "mlprogram",
            "input_type": "image (RGB, scale 1/255)",
            "outputs": outputs,
            "compute_precision": "float32" if request.precision == "fp32" else "float16",
            "weights": {"fp32": "float32", "fp16": "float16", "int8": "8-bit palettized"}[
                request.precision
            ],
            "end2end": result.end2end,
            "predicts_on": "macOS",
        },
        "tools": {**result.tools, "coremltools": str(ct.__version__)},
    }


def _normalised_input(module: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """``module`` behind ``(x - mean) / std``: takes the 0..1 RGB image the CoreML input gives."""
    import torch

    class Normalised(torch.nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner((x - self.mean) / self.std)

    return Normalised(module).eval()


def child_export_timm(payload: dict[str, Any]) -> dict[str, Any]:
    """Inside the toolenv: a timm classifier traced (mean/std and softmax inside) and converted
    to an ML Program with an RGB image input (scale 1/255) and a probabilities output."""
    import warnings

    import coremltools as ct
    import torch

    from exporters.formats.timm_common import (
        INPUT_NAME,
        OUTPUT_NAME,
        load_timm_checkpoint,
        timm_artifact_fields,
    )

    out_dir = Path(payload["out_dir"])
    precision = str(payload["precision"])
    model = load_timm_checkpoint(Path(payload["checkpoint"]))
    wrapped = _normalised_input(model.module, model.mean, model.std)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notices
        traced = torch.jit.trace(wrapped, model.example(), check_trace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coremltools' notices about the torch version
        mlmodel = ct.convert(
            traced,
            inputs=[
                ct.ImageType(
                    name=INPUT_NAME,
                    shape=model.input_shape,
                    scale=1 / 255.0,
                    color_layout=ct.colorlayout.RGB,
                )
            ],
            outputs=[ct.TensorType(name=OUTPUT_NAME)],
            convert_to="mlprogram",
            compute_precision=(
                ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
            ),
            minimum_deployment_target=ct.target.iOS15,
        )
        if precision == "int8":
            from coremltools.optimize.coreml import (
                OpPalettizerConfig,
                OptimizationConfig,
                palettize_weights,
            )

            config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=8, mode="kmeans"))
            mlmodel = palettize_weights(mlmodel, config)
    mlmodel.short_description = f"{model.arch} classifier ({len(model.class_names)} classes)"
    folder = out_dir / "model.mlpackage"
    shutil.rmtree(folder, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(folder))
    spec = ct.utils.load_spec(str(folder))
    inputs = [i.name for i in spec.description.input]
    outputs = [o.name for o in spec.description.output]
    archive = out_dir / MODEL_ARCHIVE
    zip_mlpackage(folder, archive)
    shutil.rmtree(folder, ignore_errors=True)
    fields = timm_artifact_fields(model)
    preprocessing = {k: v for k, v in fields["preprocessing"].items() if k not in ("mean", "std")}
    return {
        "model_file": str(archive),
        "class_names": list(fields["class_names"]),
        "architecture": fields["architecture"],
        "input_name": inputs[0] if inputs else INPUT_NAME,
        "input_shape": list(model.input_shape),
        "output_layout": fields["output_layout"],
        "preprocessing": preprocessing,
        "postprocessing": fields["postprocessing"],
        "details": {
            "container": "zip of model.mlpackage (unpacked beside it before loading)",
            "model_type": "mlprogram",
            "input_type": "image (RGB, scale 1/255)",
            "normalisation": {
                "inside_model": True,
                "mean": list(model.mean),
                "std": list(model.std),
            },
            "outputs": outputs,
            "compute_precision": "float32" if precision == "fp32" else "float16",
            "weights": {"fp32": "float32", "fp16": "float16", "int8": "8-bit palettized"}[
                precision
            ],
            "end2end": False,
            "predicts_on": "macOS",
        },
        "tools": {**model.tools, "coremltools": str(ct.__version__)},
    }
