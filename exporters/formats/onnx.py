"""ONNX export of Ultralytics checkpoints (static shape, simplified with onnxslim)."""

from __future__ import annotations

import ast
import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from exporters.base import Capability, ExportArtifact, Exporter, ExportError, ExportRequest
from runtimes.offline import apply_offline_env, quiet_ultralytics_settings


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    """Ultralytics logs banners and usage hints at INFO; an export reports through our log only."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


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
        frameworks=("ultralytics",),
        tasks=("detect",),
        precisions=("fp32",),
        runtime="onnxruntime",
        suffix=".onnx",
        needs=("onnx", "onnxslim"),
        notes="Runs on ONNX Runtime (CPU, CUDA, TensorRT, CoreML, OpenVINO execution providers).",
    )

    def export(self, request: ExportRequest) -> ExportArtifact:
        config_dir = request.options.get("config_dir")
        if config_dir:
            apply_offline_env(Path(config_dir))
        try:
            import onnx
            import torch
            import ultralytics
            from ultralytics import YOLO  # type: ignore[attr-defined]
        except ImportError as exc:
            raise ExportError(
                f"ONNX export needs {exc.name}; install it with pip install 'outpost[export]'"
            ) from None
        quiet_ultralytics_settings()
        with _quiet_ultralytics():
            model = YOLO(str(request.checkpoint), task=request.task)
            produced = Path(
                model.export(
                    format="onnx",
                    imgsz=request.imgsz,
                    simplify=bool(request.options.get("simplify", True)),
                    dynamic=False,
                    opset=request.options.get("opset"),
                    device="cpu",
                    verbose=False,
                )
            )
        target = request.out_dir / "model.onnx"
        shutil.move(str(produced), target)
        meta, input_name, shape, opset = _onnx_metadata(target)
        names = ast.literal_eval(meta.get("names", "{}")) or dict(model.names)
        class_names = tuple(names[i] for i in sorted(names))
        end2end = meta.get("end2end", "False") == "True"
        yaml_file = (
            getattr(model.model, "yaml", {}).get("yaml_file", "") if hasattr(model, "model") else ""
        )
        architecture = Path(str(yaml_file)).stem or Path(request.checkpoint).stem
        return ExportArtifact(
            format_key="onnx",
            runtime="onnxruntime",
            model_file=target,
            class_names=class_names,
            architecture=architecture,
            input_name=input_name,
            input_shape=tuple(int(v) for v in shape),  # type: ignore[arg-type]
            output_layout="xyxy_score_class" if end2end else "xywh_classes",
            precision="fp32",
            details={"opset": opset, "simplify": True, "dynamic": False, "end2end": end2end},
            tools={
                "ultralytics": ultralytics.__version__,
                "torch": torch.__version__.split("+")[0],
                "onnx": onnx.__version__,
            },
        )
