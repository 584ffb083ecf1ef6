"""TorchScript export of Ultralytics checkpoints and timm classifiers (traced, static shape, CPU)."""

from __future__ import annotations

import shutil

from exporters.base import Capability, ExportArtifact, Exporter, ExportRequest
from exporters.formats.timm_common import (
    check_timm_task,
    load_timm_checkpoint,
    timm_artifact_fields,
)
from exporters.formats.ultralytics_common import export_with_ultralytics, remove_source


class TorchScriptExporter(Exporter):
    capability = Capability(
        key="torchscript",
        title="TorchScript",
        frameworks=("ultralytics", "timm"),
        tasks=("detect", "segment", "classify", "pose"),
        precisions=("fp32",),
        runtime="torchscript",
        suffix=".torchscript",
        needs=("torch", "ultralytics"),
        notes=(
            "Runs wherever torch (libtorch) runs; the heaviest runtime, no quantization. "
            "timm: classify only (traced, with a softmax at the end)."
        ),
    )

    def check(self, request: ExportRequest) -> None:
        check_timm_task(request.framework, request.task, self.capability.key)
        super().check(request)

    def export(self, request: ExportRequest) -> ExportArtifact:
        if request.framework == "timm":
            return self._export_timm(request)
        result = export_with_ultralytics(request, "torchscript", "TorchScript", optimize=False)
        target = request.out_dir / "model.torchscript"
        shutil.move(str(result.produced), target)
        remove_source(request)
        return ExportArtifact(
            format_key="torchscript",
            runtime="torchscript",
            model_file=target,
            class_names=result.class_names,
            architecture=result.architecture,
            input_name="images",
            input_shape=(1, 3, request.imgsz, request.imgsz),
            output_layout=result.output_layout,
            preprocessing=result.preprocessing,
            postprocessing=result.postprocessing,
            precision="fp32",
            details={"traced": True, "dynamic": False, "end2end": result.end2end},
            tools=result.tools,
        )

    def _export_timm(self, request: ExportRequest) -> ExportArtifact:
        import warnings

        import torch

        model = load_timm_checkpoint(request.checkpoint)
        target = request.out_dir / "model.torchscript"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notices
            traced = torch.jit.trace(model.module, model.example(), check_trace=False)
            traced.save(str(target))
        return ExportArtifact(
            format_key="torchscript",
            runtime="torchscript",
            model_file=target,
            precision="fp32",
            details={"traced": True, "dynamic": False, "end2end": False},
            tools=model.tools,
            **timm_artifact_fields(model),
        )
