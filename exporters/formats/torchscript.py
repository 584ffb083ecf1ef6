"""TorchScript export of Ultralytics checkpoints (traced, static shape, CPU)."""

from __future__ import annotations

import shutil

from exporters.base import Capability, ExportArtifact, Exporter, ExportRequest
from exporters.formats.ultralytics_common import export_with_ultralytics, remove_source


class TorchScriptExporter(Exporter):
    capability = Capability(
        key="torchscript",
        title="TorchScript",
        frameworks=("ultralytics",),
        tasks=("detect", "segment", "classify", "pose"),
        precisions=("fp32",),
        runtime="torchscript",
        suffix=".torchscript",
        needs=("torch", "ultralytics"),
        notes="Runs wherever torch (libtorch) runs; the heaviest runtime, no quantization.",
    )

    def export(self, request: ExportRequest) -> ExportArtifact:
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
