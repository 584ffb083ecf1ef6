"""Build an ``.outpost.zip`` package from an export artifact and its provenance."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from exporters.base import ExportArtifact, ExportError
from runtimes.errors import OutpostError
from runtimes.package import (
    SELF_TEST_OUTPUTS,
    SELF_TEST_TASK_DETECTIONS,
    Manifest,
    utc_now,
    write_package,
)
from runtimes.predictor import Predictor
from runtimes.preprocess import read_image

log = logging.getLogger(__name__)

SELF_TEST_INPUT = "selftest/input.png"
SELF_TEST_TOLERANCE = {"iou": 0.9, "score": 0.05}

README_TEMPLATE = """# {name} ({fmt})

An Outpost model package (schema v{schema}).

- task: {task}, architecture: {arch}, precision: {precision}
- input: {input_name} {shape} float32 NCHW, {preprocessing}
- classes: {classes}
- formats: {formats}

Run it with `outpost predict {file_name} IMAGE` (`--runtime` picks the format of a package
holding several), or deploy it to a device with `outpost deploy EXPORT --device ID`.
`manifest.json` lists every file with its sha256. `wrappers/` holds standalone clients
generated from this manifest (Python, C++, Swift, Kotlin); see `wrappers/README.md`.
"""


def describe_preprocessing(pre: dict[str, Any]) -> str:
    """One line saying how an image becomes the model input."""
    resize = pre.get("resize", "letterbox")
    how = (
        "shortest side resized, centre-cropped"
        if resize == "center_crop"
        else f"letterboxed with pad {pre.get('pad_value', 114)}"
    )
    if pre.get("interpolation") == "pil_bilinear":
        how += " (Pillow bilinear resize)"
    text = f"{pre.get('color', 'RGB')}, {how}, scaled {pre.get('scale', 1 / 255.0):.6g}"
    if pre.get("mean") is not None:
        text += f", then (x - mean {pre['mean']}) / std {pre.get('std')}"
    return text


def _format_fields(
    artifact: ExportArtifact, file: str, validation: dict[str, Any] | None
) -> dict[str, Any]:
    details = {**artifact.details, **({"validation": validation} if validation else {})}
    return {
        "key": artifact.format_key,
        "file": file,
        "runtime": artifact.runtime,
        "details": {**details, "precision": artifact.precision},
    }


def _check_bundle(artifacts: list[ExportArtifact]) -> None:
    """Formats in one package must be the same model: classes, input, output layout."""
    first = artifacts[0]
    keys = [a.format_key for a in artifacts]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate:
        raise ExportError(
            f"a package holds one model per format; {duplicate} is asked for twice "
            "(export the other precision as its own package)"
        )
    for other in artifacts[1:]:
        if (other.class_names, other.input_shape, other.output_layout) != (
            first.class_names,
            first.input_shape,
            first.output_layout,
        ):
            raise ExportError(
                f"the {other.format_key} export differs from the {first.format_key} one "
                "(classes, input or output layout); package them separately"
            )


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
    alternates: list[tuple[ExportArtifact, dict[str, Any] | None]] | None = None,
    wrappers: bool = True,
) -> Manifest:
    """Write ``out_path`` (a ``.outpost.zip``) holding the model, a README and the manifest.

    ``validation`` (the parity report against the PyTorch model) goes into
    ``format.details.validation``: a free-form field every schema-1 reader already accepts.

    ``alternates`` makes a multi-format package: the same model in more formats, each with
    its own parity report. The manifest's ``format`` is ``artifact``'s and ``alternates``
    the others'; every format's files then sit in a folder named by its key
    (``onnx/model.onnx``, ``openvino/model.xml`` + ``model.bin``). A single-format package
    keeps its model at the root, as before.

    ``wrappers`` adds the standalone clients generated from the manifest
    (:mod:`exporters.wrappers`) under ``wrappers/``, each listed in the manifest's files.

    The package also carries a self-test: ``sample_image`` (a validation image of the run;
    a synthetic one when None), shrunk to the model's input size and stored as
    ``selftest/input.png``, with the detections the package's own runtime gives on it. A
    device runs it before switching to the model. When no runtime here can run the format,
    the package is written without one (devices then install it with a warning).

    Raises:
        ExportError: bundled formats that are not the same model, or a format given twice.
    """
    bundle = [(artifact, validation), *(alternates or [])]
    arts = [a for a, _ in bundle]
    _check_bundle(arts)
    multi = len(bundle) > 1
    build = artifact.model_file.parent
    files: dict[str, Path] = {}
    specs = []
    for art, report in bundle:
        prefix = f"{art.format_key}/" if multi else ""
        for path in (art.model_file, *art.extra_files):
            files[prefix + path.name] = path
        specs.append(_format_fields(art, prefix + art.model_file.name, report))
    preprocessing = {
        "resize": "letterbox",
        "pad_value": 114,
        "scale": 1 / 255.0,
        "color": "RGB",
        **artifact.preprocessing,
    }
    fields: dict[str, Any] = {
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
            "preprocessing": preprocessing,
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
        "format": specs[0],
        **({"alternates": specs[1:]} if multi else {}),
        "provenance": {
            **provenance,
            "tools": {k: v for a in reversed(arts) for k, v in a.tools.items()},
        },
    }
    readme = build / "README.md"
    readme.write_text(
        README_TEMPLATE.format(
            name=name,
            fmt=", ".join(a.format_key for a in arts),
            schema=1,
            task=task,
            arch=artifact.architecture,
            precision=artifact.precision,
            input_name=artifact.input_name,
            shape=list(artifact.input_shape),
            preprocessing=describe_preprocessing(preprocessing),
            classes=", ".join(artifact.class_names),
            formats=", ".join(f"{s['key']} ({s['file']}, {s['runtime']})" for s in specs),
            file_name=out_path.name,
        ),
        encoding="utf-8",
    )
    files["README.md"] = readme
    if wrappers:
        from exporters.wrappers import write_wrappers

        draft = Manifest.model_validate({**fields, "schema_version": 1, "files": {}})
        files.update(write_wrappers(draft, build / "wrappers"))
    manifest = write_package(out_path, fields, files)
    sample = build / "selftest-input.png"
    _write_sample(sample, sample_image, manifest.model.input.height, manifest.model.input.width)
    answered = expected_outputs(out_path, sample)
    if answered is None:
        return manifest
    expected, outputs = answered
    self_test = {"input": SELF_TEST_INPUT, "expected": expected, "tolerance": SELF_TEST_TOLERANCE}
    files = {**files, SELF_TEST_INPUT: sample}
    if outputs is not None:
        files[SELF_TEST_OUTPUTS] = build / "selftest-outputs.json"
        files[SELF_TEST_OUTPUTS].write_text(json.dumps(outputs), encoding="utf-8")
    return write_package(out_path, {**fields, "self_test": self_test}, files)


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


def expected_outputs(
    package: Path, sample: Path
) -> tuple[list[dict[str, Any]], dict[str, Any] | None] | None:
    """What ``package`` answers on ``sample`` with its own runtime: the self-test's expected
    detections, and what its task gives beyond boxes (``selftest/outputs.json``: a
    classifier's ``top_k`` most probable classes; the masks or keypoints of the first
    :data:`SELF_TEST_TASK_DETECTIONS` detections), or None for a detector; None when its
    runtime does not run here."""
    try:
        predictor = Predictor.from_path(package)
        try:
            detections, _ = predictor.predict(read_image(sample))
            top_k = predictor.manifest.model.postprocessing.top_k
        finally:
            predictor.close()
    except Exception as exc:  # a runtime missing here, or its own error types
        log.warning(
            "%s: its runtime does not run here (%s); the package has no self-test",
            package.name,
            " ".join(str(exc).split())[:200],
        )
        return None
    items = detections.to_list()
    expected = [
        {"class_id": d["class_id"], "score": d["confidence"], "xyxy": d["xyxy"]} for d in items
    ]
    if detections.probs is not None:
        classes = detections.top_k(top_k)
        outputs: dict[str, Any] | None = {
            "classes": [{"class_id": c["class_id"], "score": c["confidence"]} for c in classes]
        }
    elif detections.masks is not None or detections.keypoints is not None:
        key = "mask" if detections.masks is not None else "keypoints"
        per = [d[key] if i < SELF_TEST_TASK_DETECTIONS else None for i, d in enumerate(items)]
        outputs = {"masks" if key == "mask" else "keypoints": per}
    else:
        outputs = None
    return expected, outputs
