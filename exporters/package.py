"""Build an ``.outpost.zip`` package from an export artifact and its provenance."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from exporters.base import ExportArtifact
from runtimes.errors import OutpostError
from runtimes.package import Manifest, utc_now, write_package
from runtimes.predictor import Predictor
from runtimes.preprocess import read_image

log = logging.getLogger(__name__)

SELF_TEST_INPUT = "selftest/input.png"
SELF_TEST_TOLERANCE = {"iou": 0.9, "score": 0.05}

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
    sample_image: Path | None = None,
) -> Manifest:
    """Write ``out_path`` (a ``.outpost.zip``) holding the model, a README and the manifest.

    ``validation`` (the parity report against the PyTorch model) goes into
    ``format.details.validation``: a free-form field every schema-1 reader already accepts.

    The package also carries a self-test: ``sample_image`` (a validation image of the run;
    a synthetic one when None), shrunk to the model's input size and stored as
    ``selftest/input.png``, with the detections the package's own runtime gives on it. A
    device runs it before switching to the model. When no runtime here can run the format,
    the package is written without one (devices then install it with a warning).
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
                **artifact.preprocessing,
            },
            "postprocessing": {
                "kind": "yolo_detect",
                "nms_included": artifact.output_layout == "xyxy_score_class",
                "output_layout": artifact.output_layout,
                "box_units": "pixels",
                "conf_threshold": conf_threshold,
                "iou_threshold": iou_threshold,
                "max_det": 300,
                **artifact.postprocessing,
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
    manifest = write_package(out_path, fields, files)
    sample = artifact.model_file.parent / "selftest-input.png"
    _write_sample(sample, sample_image, manifest.model.input.height, manifest.model.input.width)
    expected = expected_detections(out_path, sample)
    if expected is None:
        return manifest
    self_test = {"input": SELF_TEST_INPUT, "expected": expected, "tolerance": SELF_TEST_TOLERANCE}
    return write_package(
        out_path, {**fields, "self_test": self_test}, {**files, SELF_TEST_INPUT: sample}
    )


def _write_sample(dest: Path, source: Path | None, height: int, width: int) -> None:
    """A small PNG for the self-test: ``source`` shrunk to fit the input size, or a synthetic
    scene (a few filled shapes on a textured background, the same every time)."""
    if source is not None:
        img = read_image(source)
        scale = min(1.0, height / img.shape[0], width / img.shape[1])
        if scale < 1.0:
            size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    else:
        rng = np.random.default_rng(0)
        img = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
        for _ in range(4):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
            r = int(rng.integers(max(2, min(height, width) // 16), max(3, min(height, width) // 5)))
            if rng.random() < 0.5:
                cv2.circle(img, (cx, cy), r, color, -1)
            else:
                cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OutpostError(f"cannot encode the self-test image {dest.name}; check OpenCV")
    dest.write_bytes(buf.tobytes())


def expected_detections(package: Path, sample: Path) -> list[dict[str, Any]] | None:
    """What ``package`` detects in ``sample`` with its own runtime (None when none runs here)."""
    try:
        predictor = Predictor.from_path(package)
        try:
            detections, _ = predictor.predict(read_image(sample))
        finally:
            predictor.close()
    except Exception as exc:  # a runtime missing here, or its own error types
        log.warning(
            "%s: its runtime does not run here (%s); the package has no self-test",
            package.name,
            " ".join(str(exc).split())[:200],
        )
        return None
    return [
        {"class_id": int(c), "score": round(float(s), 6), "xyxy": [round(float(v), 3) for v in box]}
        for box, s, c in zip(
            detections.xyxy.tolist(),
            detections.confidence.tolist(),
            detections.class_id.tolist(),
            strict=True,
        )
    ]
