"""A timm classifier converted to CoreML in the ``coreml`` toolchain (``outpost export setup
coreml``): an ``.mlpackage`` with an RGB image input whose mean/std normalisation is inside the
model, parity recorded as ``not_run`` (CoreML predicts only on macOS), and a package whose
preprocessing is the run's letterbox and 1/255 only. Skipped where the toolchain is not set up.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from exporters.base import ExportError, ExportRequest, try_export
from exporters.formats.timm_common import capability_matrix
from exporters.package import build_package
from exporters.registry import default_registry
from exporters.toolenv import ToolEnv
from runtimes.package import PackageReader

pytest.importorskip("torch")
pytest.importorskip("timm")

from tests.exporters.test_timm_export import NAMES, timm_checkpoint  # noqa: E402

IMGSZ = 40


def test_capabilities_list_timm_classify_for_coreml() -> None:
    caps = {c.key: c for c in default_registry().capabilities()}
    pairs = {(p["framework"], p["task"]) for p in capability_matrix(caps["coreml"])}
    assert ("timm", "classify") in pairs and ("ultralytics", "detect") in pairs
    assert not {("timm", t) for t in ("detect", "segment", "pose")} & pairs


def test_timm_coreml_detect_is_refused_before_any_file(tmp_path: Path) -> None:
    checkpoint = timm_checkpoint(tmp_path, imgsz=IMGSZ)
    out = tmp_path / "build"
    with pytest.raises(ExportError, match="coreml export of timm models supports classify only"):
        try_export(
            default_registry().get("coreml"),
            ExportRequest(checkpoint, "timm", "detect", IMGSZ, out),
        )
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_timm_classifier_converts_to_coreml_with_parity_not_run(
    precision: str, tmp_path: Path
) -> None:
    if not ToolEnv.for_name("coreml").exists():
        pytest.skip("the coreml toolchain is not set up (outpost export setup coreml)")
    checkpoint = timm_checkpoint(tmp_path, imgsz=IMGSZ)
    artifact = try_export(
        default_registry().get("coreml"),
        ExportRequest(checkpoint, "timm", "classify", IMGSZ, tmp_path / "build", precision),
    )
    assert artifact.model_file.name == "model.mlpackage.zip"
    assert artifact.input_shape == (1, 3, IMGSZ, IMGSZ)
    assert artifact.output_layout == "class_probs"
    assert artifact.class_names == tuple(NAMES)
    assert artifact.architecture == "resnet10t"
    details = artifact.details
    assert details["parity"]["status"] == "not_run" and "macOS" in details["parity"]["reason"]
    assert details["outputs"] == ["probs"]
    assert details["normalisation"]["inside_model"] is True
    assert details["weights"] == {"fp32": "float32", "int8": "8-bit palettized"}[precision]
    assert artifact.tools["coremltools"] and artifact.tools["timm"]
    # mean/std live in the graph: the runtime only letterboxes and scales to 0..1.
    assert "mean" not in artifact.preprocessing and "std" not in artifact.preprocessing
    assert artifact.preprocessing["interpolation"] == "pil_bilinear"
    with zipfile.ZipFile(artifact.model_file) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("model.mlpackage/Manifest.json"))
    assert any(n.endswith("model.mlmodel") for n in names)
    assert manifest["itemInfoEntries"]
    assert not (tmp_path / "build" / "model.mlpackage").exists()  # only the zip is left

    package = tmp_path / "timm-coreml.outpost.zip"
    build_package(
        artifact,
        name="timm",
        version="1",
        out_path=package,
        framework="timm",
        task="classify",
        provenance={},
    )
    with PackageReader(package) as reader:
        reader.verify()
        spec = reader.manifest
    assert spec.format.key == "coreml" and spec.model.framework == "timm"
    assert spec.model.preprocessing.mean is None and spec.self_test is None
    assert spec.model.postprocessing.output_layout == "class_probs"
