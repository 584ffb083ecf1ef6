"""OpenVINO IR export of Ultralytics checkpoints: FP32, or FP16-compressed weights."""

from __future__ import annotations

import shutil
from typing import Any

from exporters.base import Capability, ExportArtifact, Exporter, ExportRequest
from exporters.formats.ultralytics_common import export_with_ultralytics, remove_source
from runtimes.backends.openvino import disable_openvino_telemetry


def _half_kwargs() -> dict[str, Any]:
    """Ultralytics 8.4 renamed ``half`` to ``quantize=16``; ask in the installed version's words."""
    import ultralytics.cfg

    defaults: dict[str, Any] = getattr(ultralytics.cfg, "DEFAULT_CFG_DICT", {})
    return {"quantize": 16} if "quantize" in defaults else {"half": True}


class OpenVinoExporter(Exporter):
    capability = Capability(
        key="openvino",
        title="OpenVINO",
        frameworks=("ultralytics",),
        tasks=("detect",),
        precisions=("fp32", "fp16"),
        runtime="openvino",
        suffix=".xml",
        needs=("torch", "ultralytics", "openvino"),
        notes=(
            "OpenVINO IR (.xml + .bin) for Intel CPUs/GPUs/NPUs. fp32 runs in f32; fp16 halves "
            "the weights and runs at the CPU's reduced precision (bf16 where it has it). "
            "Telemetry is switched off."
        ),
        extra="openvino",
    )

    def export(self, request: ExportRequest) -> ExportArtifact:
        disable_openvino_telemetry()
        kwargs = _half_kwargs() if request.precision == "fp16" else {}
        result = export_with_ultralytics(request, "openvino", "OpenVINO", **kwargs)
        xml = next(result.produced.glob("*.xml"))
        target = request.out_dir / "model.xml"
        weights = request.out_dir / "model.bin"
        shutil.move(str(xml), target)
        shutil.move(str(xml.with_suffix(".bin")), weights)
        shutil.rmtree(result.produced, ignore_errors=True)
        remove_source(request)
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
            output_layout="xyxy_score_class" if result.end2end else "xywh_classes",
            precision=request.precision,
            details={
                "weights": weights.name,
                "compressed_to_fp16": request.precision == "fp16",
                "inference_precision_hint": "cpu default" if request.precision == "fp16" else "f32",
                "dynamic": False,
                "end2end": result.end2end,
            },
            tools={**result.tools, "openvino": openvino.get_version().split("-")[0]},
        )
