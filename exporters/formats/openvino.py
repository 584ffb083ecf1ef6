"""OpenVINO IR export of Ultralytics checkpoints and timm classifiers: FP32, FP16-compressed
weights, or INT8 quantized by NNCF."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from exporters.base import (
    Capability,
    ExportArtifact,
    Exporter,
    ExportError,
    ExportRequest,
    missing_modules,
)
from exporters.formats.timm_common import (
    TimmModel,
    check_timm_task,
    export_timm_onnx,
    load_timm_checkpoint,
    timm_artifact_fields,
)
from exporters.formats.ultralytics_common import (
    UltralyticsExport,
    export_with_ultralytics,
    remove_source,
)
from runtimes.backends.openvino import disable_openvino_telemetry

MAX_CALIBRATION_IMAGES = 300


def _half_kwargs() -> dict[str, Any]:
    """Ultralytics 8.4 renamed ``half`` to ``quantize=16``; ask in the installed version's words."""
    import ultralytics.cfg

    defaults: dict[str, Any] = getattr(ultralytics.cfg, "DEFAULT_CFG_DICT", {})
    return {"quantize": 16} if "quantize" in defaults else {"half": True}


class OpenVinoExporter(Exporter):
    capability = Capability(
        key="openvino",
        title="OpenVINO",
        frameworks=("ultralytics", "timm"),
        tasks=("detect", "segment", "classify", "pose"),
        precisions=("fp32", "fp16", "int8"),
        runtime="openvino",
        suffix=".xml",
        needs=("torch", "ultralytics", "openvino"),
        notes=(
            "OpenVINO IR (.xml + .bin) for Intel CPUs/GPUs/NPUs. fp32 runs in f32; fp16 halves "
            "the weights and runs at the CPU's reduced precision (bf16 where it has it); int8 is "
            "quantized by NNCF (post-training, calibrated on up to 300 training images, the "
            "detection head kept in float). timm: classify only, converted from the run's ONNX "
            "graph (softmax included). Telemetry is switched off."
        ),
        extra="openvino",
    )

    def check(self, request: ExportRequest) -> None:
        check_timm_task(request.framework, request.task, self.capability.key)
        super().check(request)
        if request.precision == "int8":
            if missing_modules(("nncf",)):
                raise ExportError(
                    "openvino int8 export needs nncf: pip install 'outpost[export]' (or pip install nncf)"
                )
            if not request.options.get("calibration_images"):
                raise ExportError(
                    "openvino int8 export needs calibration images: the dataset version has none; "
                    "add training images or export fp32/fp16"
                )

    def export(self, request: ExportRequest) -> ExportArtifact:
        disable_openvino_telemetry()
        if request.framework == "timm":
            return self._export_timm(request)
        kwargs = _half_kwargs() if request.precision == "fp16" else {}
        result = export_with_ultralytics(request, "openvino", "OpenVINO", **kwargs)
        xml = next(result.produced.glob("*.xml"))
        target = request.out_dir / "model.xml"
        weights = request.out_dir / "model.bin"
        shutil.move(str(xml), target)
        shutil.move(str(xml.with_suffix(".bin")), weights)
        shutil.rmtree(result.produced, ignore_errors=True)
        remove_source(request)
        int8: dict[str, Any] = {}
        if request.precision == "int8":
            int8 = quantize_int8(target, result, request)
        import openvino

        return ExportArtifact(
            format_key="openvino",
            runtime="openvino",
            model_file=target,
            extra_files=(weights,),
            class_names=result.class_names,
            architecture=result.architecture,
            input_name="images",
            input_shape=(1, 3, request.imgsz, request.imgsz),
            output_layout=result.output_layout,
            preprocessing=result.preprocessing,
            postprocessing=result.postprocessing,
            precision=request.precision,
            details={
                "weights": weights.name,
                "compressed_to_fp16": request.precision == "fp16",
                "inference_precision_hint": "cpu default" if request.precision == "fp16" else "f32",
                "dynamic": False,
                "end2end": result.end2end,
                **int8,
            },
            tools={
                **result.tools,
                "openvino": openvino.get_version().split("-")[0],
                **({"nncf": int8["nncf"]} if int8 else {}),
            },
        )

    def _export_timm(self, request: ExportRequest) -> ExportArtifact:
        import openvino as ov

        model = load_timm_checkpoint(request.checkpoint)
        staging = request.out_dir / "source"
        staging.mkdir(parents=True, exist_ok=True)
        onnx_file = staging / "model.onnx"
        export_timm_onnx(model, onnx_file, request.options.get("opset"))
        converted = ov.convert_model(str(onnx_file))
        int8: dict[str, Any] = {}
        if request.precision == "int8":
            converted, int8 = quantize_timm_int8(converted, model, request)
        target = request.out_dir / "model.xml"
        weights = request.out_dir / "model.bin"
        ov.save_model(converted, str(target), compress_to_fp16=request.precision == "fp16")
        shutil.rmtree(staging, ignore_errors=True)
        return ExportArtifact(
            format_key="openvino",
            runtime="openvino",
            model_file=target,
            extra_files=(weights,),
            precision=request.precision,
            details={
                "weights": weights.name,
                "compressed_to_fp16": request.precision == "fp16",
                "inference_precision_hint": "cpu default" if request.precision == "fp16" else "f32",
                "dynamic": False,
                "end2end": False,
                **int8,
            },
            tools={
                **model.tools,
                "openvino": ov.get_version().split("-")[0],
                **({"nncf": int8["nncf"]} if int8 else {}),
            },
            **timm_artifact_fields(model),
        )


def timm_calibration_tensors(images: list[Path], model: TimmModel) -> list[np.ndarray]:
    """The inputs of up to :data:`MAX_CALIBRATION_IMAGES` images, preprocessed exactly as the
    runtime does for the timm package (Pillow-bilinear letterbox, mean/std)."""
    from runtimes.preprocess import letterbox, read_image, to_tensor

    size = (model.imgsz, model.imgsz)
    tensors = []
    for path in images[:MAX_CALIBRATION_IMAGES]:
        placed, _ = letterbox(read_image(path), size, 114, interpolation="pil_bilinear")
        tensors.append(to_tensor(placed, mean=model.mean, std=model.std))
    return tensors


def quantize_timm_int8(
    converted: Any, model: TimmModel, request: ExportRequest
) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training quantization of a timm classifier's IR, calibrated on the run's
    training images."""
    import nncf

    images = [Path(p) for p in request.options.get("calibration_images", [])]
    tensors = timm_calibration_tensors(images, model)
    quantized = nncf.quantize(
        converted,
        nncf.Dataset(tensors),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(tensors),
    )
    return quantized, {
        "quantized": "int8",
        "quantizer": "nncf post-training (MIXED preset)",
        "calibration_images": len(tensors),
        "nncf": str(nncf.__version__),
    }


def calibration_tensors(images: list[Path], imgsz: int, task: str) -> list[np.ndarray]:
    """The model inputs of up to :data:`MAX_CALIBRATION_IMAGES` images, preprocessed exactly as
    the runtime will (letterbox, or the classifier's centre crop)."""
    from runtimes.predictor import center_crop
    from runtimes.preprocess import letterbox, read_image, to_tensor

    tensors = []
    for path in images[:MAX_CALIBRATION_IMAGES]:
        img = read_image(path)
        if task == "classify":
            placed, _ = center_crop(img, (imgsz, imgsz))
        else:
            placed, _ = letterbox(img, (imgsz, imgsz), 114)
        tensors.append(to_tensor(placed))
    return tensors


def _head_scope(model: Any) -> Any:
    """The detection head's post-processing (box decoding, sigmoid) kept in float, as
    Ultralytics does: quantizing it moves every box by whole pixels."""
    import nncf

    ops = model.get_ordered_ops()
    sigmoids = [op.get_friendly_name() for op in ops if op.get_type_name() == "Sigmoid"]
    if not sigmoids:
        return None
    head = sigmoids[-1].split("/", 1)[0]
    return nncf.IgnoredScope(
        names=[
            op.get_friendly_name()
            for op in ops
            if op.get_type_name() == "Sigmoid"
            or op.get_friendly_name().startswith((f"{head}/", f"{head}.dfl"))
        ]
    )


def quantize_int8(
    target: Path, result: UltralyticsExport, request: ExportRequest
) -> dict[str, Any]:
    """Quantize the FP32 IR at ``target`` (and its ``.bin``) in place with NNCF."""
    import nncf
    import openvino as ov

    images = [Path(p) for p in request.options.get("calibration_images", [])]
    tensors = calibration_tensors(images, request.imgsz, result.task)
    core = ov.Core()
    model = core.read_model(str(target))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(tensors),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(tensors),
        ignored_scope=_head_scope(model) if result.task != "classify" else None,
    )
    staging = target.parent / "int8"
    staging.mkdir(exist_ok=True)
    ov.save_model(quantized, str(staging / target.name), compress_to_fp16=False)
    shutil.move(str(staging / target.name), target)
    shutil.move(str(staging / target.with_suffix(".bin").name), target.with_suffix(".bin"))
    shutil.rmtree(staging, ignore_errors=True)
    return {
        "quantized": "int8",
        "quantizer": "nncf post-training (MIXED preset)",
        "calibration_images": len(tensors),
        "nncf": str(nncf.__version__),
    }
