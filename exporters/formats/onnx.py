"""ONNX export of Ultralytics checkpoints (static shape, simplified with onnxslim) and of timm
classifiers (``torch.onnx.export`` of the run's model with a softmax, static shape)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from exporters.base import Capability, ExportArtifact, Exporter, ExportError, ExportRequest
from exporters.formats.timm_common import (
    check_timm_task,
    export_timm_onnx,
    load_timm_checkpoint,
    timm_artifact_fields,
)
from exporters.formats.ultralytics_common import export_with_ultralytics, remove_source


def _onnx_metadata(path: Path) -> tuple[dict[str, str], str, tuple[int, ...], int | None]:
    """Ultralytics' metadata, the input name and shape, and the default-domain opset."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    inp = model.graph.input[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return meta, inp.name, shape, opset


class OnnxExporter(Exporter):
    capability = Capability(
        key="onnx",
        title="ONNX",
        frameworks=("ultralytics", "timm"),
        tasks=("detect", "segment", "classify", "pose"),
        precisions=("fp32",),
        runtime="onnxruntime",
        suffix=".onnx",
        needs=("torch", "ultralytics", "onnx", "onnxslim"),
        notes=(
            "Runs on ONNX Runtime (CPU, CUDA, TensorRT, CoreML, OpenVINO execution providers). "
            "timm: classify only, exported by torch.onnx with a softmax at the end."
        ),
    )

    def check(self, request: ExportRequest) -> None:
        check_timm_task(request.framework, request.task, self.capability.key)
        super().check(request)

    def export(self, request: ExportRequest) -> ExportArtifact:
        try:
            import onnx
        except ImportError:
            raise ExportError("ONNX export needs onnx; pip install 'outpost[export]'") from None
        if request.framework == "timm":
            return self._export_timm(request)
        result = export_with_ultralytics(
            request,
            "onnx",
            "ONNX",
            simplify=bool(request.options.get("simplify", True)),
            dynamic=False,
            opset=request.options.get("opset"),
        )
        target = request.out_dir / "model.onnx"
        shutil.move(str(result.produced), target)
        remove_source(request)
        meta, input_name, shape, opset = _onnx_metadata(target)
        names = ast.literal_eval(meta.get("names", "{}"))
        class_names = tuple(names[i] for i in sorted(names)) if names else result.class_names
        end2end = meta.get("end2end", "False") == "True"
        return ExportArtifact(
            format_key="onnx",
            runtime="onnxruntime",
            model_file=target,
            class_names=class_names,
            architecture=result.architecture,
            input_name=input_name,
            input_shape=tuple(int(v) for v in shape),  # type: ignore[arg-type]
            output_layout=result.output_layout
            if result.task == "classify"
            else ("xyxy_score_class" if end2end else "xywh_classes"),
            preprocessing=result.preprocessing,
            postprocessing=result.postprocessing,
            precision="fp32",
            details={"opset": opset, "simplify": True, "dynamic": False, "end2end": end2end},
            tools={**result.tools, "onnx": onnx.__version__},
        )

    def _export_timm(self, request: ExportRequest) -> ExportArtifact:
        import onnx

        model = load_timm_checkpoint(request.checkpoint)
        target = request.out_dir / "model.onnx"
        opset = export_timm_onnx(model, target, request.options.get("opset"))
        onnx.checker.check_model(str(target))
        return ExportArtifact(
            format_key="onnx",
            runtime="onnxruntime",
            model_file=target,
            precision="fp32",
            details={"opset": opset, "simplify": False, "dynamic": False, "end2end": False},
            tools={**model.tools, "onnx": onnx.__version__},
            **timm_artifact_fields(model),
        )
