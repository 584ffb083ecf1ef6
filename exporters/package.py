"""Build an ``.outpost.zip`` package from an export artifact and its provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters.base import ExportArtifact
from runtimes.package import Manifest, utc_now, write_package

README_TEMPLATE = """# {name} ({fmt})

An Outpost model package (schema v{schema}).

- task: {task}, architecture: {arch}, precision: {precision}
- input: {input_name} {shape} float32 NCHW, RGB, letterboxed with pad 114, scaled 1/255
- classes: {classes}
- runtime: {runtime}

Run it with `outpost predict {file_name} IMAGE`, or deploy it to a device with
`outpost deploy EXPORT --device ID`. `manifest.json` lists every file with its sha256.
"""


def build_package(
    artifact: ExportArtifact,
    *,
    name: str,
    version: str,
    out_path: Path,
    framework: str,
    task: str,
    provenance: dict[str, Any],
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    validation: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``out_path`` (a ``.outpost.zip``) holding the model, a README and the manifest.

    ``validation`` (the parity report against the PyTorch model) goes into
    ``format.details.validation``: a free-form field every schema-1 reader already accepts.
    """
    readme = artifact.model_file.parent / "README.md"
    readme.write_text(
        README_TEMPLATE.format(
            name=name,
            fmt=artifact.format_key,
            schema=1,
            task=task,
            arch=artifact.architecture,
            precision=artifact.precision,
            input_name=artifact.input_name,
            shape=list(artifact.input_shape),
            classes=", ".join(artifact.class_names),
            runtime=artifact.runtime,
            file_name=out_path.name,
        ),
        encoding="utf-8",
    )
    model_arcname = artifact.model_file.name
    fields = {
        "name": name,
        "version": version,
        "created_at": utc_now(),
        "model": {
            "framework": framework,
            "task": task,
            "architecture": artifact.architecture,
            "class_names": list(artifact.class_names),
            "input": {
                "name": artifact.input_name,
                "shape": list(artifact.input_shape),
                "dtype": "float32",
                "layout": "NCHW",
            },
            "preprocessing": {
                "resize": "letterbox",
                "pad_value": 114,
                "scale": 1 / 255.0,
                "color": "RGB",
            },
            "postprocessing": {
                "kind": "yolo_detect",
                "nms_included": artifact.output_layout == "xyxy_score_class",
                "output_layout": artifact.output_layout,
                "box_units": "pixels",
                "conf_threshold": conf_threshold,
                "iou_threshold": iou_threshold,
                "max_det": 300,
            },
            "precision": artifact.precision,
        },
        "format": {
            "key": artifact.format_key,
            "file": model_arcname,
            "runtime": artifact.runtime,
            "details": {**artifact.details, **({"validation": validation} if validation else {})},
        },
        "provenance": {**provenance, "tools": artifact.tools},
    }
    files = {model_arcname: artifact.model_file, "README.md": readme}
    files.update({extra.name: extra for extra in artifact.extra_files})
    return write_package(out_path, fields, files)
