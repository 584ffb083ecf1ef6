"""LiteRT and CoreML backends: probes, output order and units, and CoreML's pre/post-processing
through the predictor with the platform and the coremltools library faked at the boundary."""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtimes.backends import coreml as coreml_backend
from runtimes.backends import default_registry
from runtimes.backends import litert as litert_backend
from runtimes.backends.coreml import CoreMlBackend, tensor_to_image, unpack_mlpackage
from runtimes.backends.litert import HeadFacts, LiteRtBackend, denormalize, read_head_facts
from runtimes.errors import RuntimeUnavailableError
from runtimes.package import PackageReader, write_package
from runtimes.predictor import Predictor
from tests.fakes import manifest_fields


def test_litert_is_registered_for_tflite() -> None:
    registry = default_registry()
    assert registry.get("litert") is LiteRtBackend
    assert registry.get("coreml") is CoreMlBackend


def test_litert_unavailable_without_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    real = litert_backend.importlib.util.find_spec
    monkeypatch.setattr(
        litert_backend.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ai_edge_litert" else real(name, *a),
    )
    info = LiteRtBackend.probe()
    assert not info.available
    assert info.reason == "ai-edge-litert is not installed (pip install 'outpost[litert]')"
    with pytest.raises(RuntimeUnavailableError, match="no runtime here can run format 'tflite'"):
        default_registry().for_format("tflite")


def test_denormalize_scales_boxes_and_keypoints_back_to_pixels() -> None:
    nc, k = 2, 2
    raw = np.zeros((1, 4 + nc + k * 3, 5), np.float32)
    raw[0, :4] = 0.5  # cx, cy, w, h as fractions
    raw[0, 4 : 4 + nc] = 0.25  # scores stay
    raw[0, 4 + nc :] = 0.5  # x, y, visibility per keypoint
    out = denormalize(raw, HeadFacts("pose", nc, (k, 3), True), (32, 64))
    assert np.allclose(out[0, [0, 2]], 32.0) and np.allclose(out[0, [1, 3]], 16.0)
    assert np.allclose(out[0, 4 : 4 + nc], 0.25)
    kpts = out[0, 4 + nc :].reshape(k, 3, -1)
    assert np.allclose(kpts[:, 0], 32.0) and np.allclose(kpts[:, 1], 16.0)
    assert np.allclose(kpts[:, 2], 0.5)  # visibility untouched
    assert np.allclose(raw[0, :4], 0.5)  # the input is not changed in place
    # Pixel outputs (classify, end-to-end heads) are returned as they are.
    assert denormalize(raw, HeadFacts("detect", nc, None, False), (32, 64)) is raw


def test_segment_outputs_come_detections_first() -> None:
    proto = np.zeros((1, 32, 16, 16), np.float32)
    det = np.zeros((1, 38, 84), np.float32)
    ordered = litert_backend.order_outputs([proto, det], "segment")
    assert ordered[0] is det and ordered[1] is proto
    assert litert_backend.order_outputs([det, proto], "segment")[0] is det


def test_head_facts_come_from_the_embedded_metadata(tmp_path: Path) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3" + bytes(64))  # the flatbuffer; the metadata zip is appended
    with zipfile.ZipFile(model, "a") as zf:
        zf.writestr(
            "metadata.json",
            json.dumps({"task": "pose", "names": {"0": "person"}, "kpt_shape": [17, 3]}),
        )
    assert read_head_facts(model) == HeadFacts("pose", 1, (17, 3), True)
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(b"TFL3" + bytes(64))
    assert read_head_facts(plain) == HeadFacts()


# --- CoreML -------------------------------------------------------------------------------


def test_coreml_probe_says_macos_only_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coreml_backend.platform, "system", lambda: "Linux")
    info = CoreMlBackend.probe()
    assert not info.available and info.reason == "CoreML predicts only on macOS (this is Linux)"
    with pytest.raises(RuntimeUnavailableError, match="predicts only on macOS"):
        CoreMlBackend(Path("model.mlpackage.zip"))


def test_tensor_to_image_round_trips_pixels() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    tensor = (img.transpose(2, 0, 1)[None].astype(np.float32)) / 255.0
    assert np.array_equal(tensor_to_image(tensor), img)
    with pytest.raises(ValueError, match=r"expected a \(1, 3, H, W\) tensor"):
        tensor_to_image(np.zeros((3, 8, 8), np.float32))


IMGSZ = 64


class _FakeMLModel:
    """coremltools' ``MLModel`` at the library boundary: it reads the image it is given and
    answers one box centred on the image's brightest pixel (input pixels, xywh), like a raw
    Ultralytics head, plus a prototype output listed first for a segmentation model."""

    loaded: list[str] = []
    units: list[Any] = []

    def __init__(self, path: str, compute_units: Any = None) -> None:
        assert Path(path).name == "model.mlpackage" and (Path(path) / "Manifest.json").is_file()
        type(self).loaded.append(path)
        type(self).units.append(compute_units)

    def get_spec(self) -> Any:
        desc = types.SimpleNamespace(
            input=[types.SimpleNamespace(name="image")],
            output=[types.SimpleNamespace(name="p"), types.SimpleNamespace(name="var_1")],
        )
        return types.SimpleNamespace(description=desc)

    def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        img = np.asarray(inputs["image"])
        assert img.shape == (IMGSZ, IMGSZ, 3) and img.dtype == np.uint8
        y, x = np.unravel_index(int(np.argmax(img.sum(axis=2))), img.shape[:2])
        head = np.zeros((1, 4 + 2, 3), np.float32)
        head[0, :4, 0] = (x, y, 10, 10)
        head[0, 4 + 1, 0] = 0.9
        return {"var_1": head, "p": np.zeros((1, 32, 16, 16), np.float32)}


@pytest.fixture
def fake_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ct = types.ModuleType("coremltools")
    fake_ct.models = types.SimpleNamespace(MLModel=_FakeMLModel)  # type: ignore[attr-defined]
    fake_ct.ComputeUnit = types.SimpleNamespace(  # type: ignore[attr-defined]
        ALL="units.ALL", CPU_ONLY="units.CPU_ONLY", CPU_AND_NE="units.CPU_AND_NE"
    )
    monkeypatch.setitem(sys.modules, "coremltools", fake_ct)
    monkeypatch.setattr(coreml_backend.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(coreml_backend, "coremltools_installed", lambda: True)


def _coreml_package(tmp_path: Path) -> Path:
    from exporters.formats.coreml import zip_mlpackage

    folder = tmp_path / "src.mlpackage"
    (folder / "Data").mkdir(parents=True)
    (folder / "Manifest.json").write_text("{}")
    (folder / "Data" / "weights.bin").write_bytes(b"\x00" * 8)
    archive = tmp_path / "model.mlpackage.zip"
    zip_mlpackage(folder, archive)
    fields = manifest_fields()
    fields["format"] = {"key": "coreml", "file": archive.name, "runtime": "coreml"}
    write_package(tmp_path / "c.outpost.zip", fields, {archive.name: archive})
    with PackageReader(tmp_path / "c.outpost.zip") as reader:
        return reader.extract(tmp_path / "pkg")


def test_coreml_runs_through_the_predictor_when_available(fake_macos: None, tmp_path: Path) -> None:
    info = CoreMlBackend.probe()
    assert info.available and info.providers == ("ALL",)
    folder = _coreml_package(tmp_path)
    _FakeMLModel.loaded = []
    predictor = Predictor(folder)
    assert predictor.backend.key == "coreml"
    assert (folder / "model.mlpackage" / "Manifest.json").is_file()  # unpacked beside the zip
    # A 128x64 image: letterboxed to 64x64 (scale 0.5, 16 px bars top and bottom).
    img = np.zeros((64, 128, 3), np.uint8)
    img[36:44, 96:104] = 255  # a white square around (100, 40)
    dets, _ = predictor.predict(img)
    assert len(dets) == 1 and int(dets.class_id[0]) == 1
    assert dets.confidence[0] == pytest.approx(0.9)
    cx = (dets.xyxy[0, 0] + dets.xyxy[0, 2]) / 2
    cy = (dets.xyxy[0, 1] + dets.xyxy[0, 3]) / 2
    assert abs(cx - 100) <= 4 and abs(cy - 40) <= 4  # back on the original image
    assert dets.xyxy[0, 2] - dets.xyxy[0, 0] == pytest.approx(20, abs=0.01)
    # The outputs come detections first, whatever order the model declares.
    outputs = predictor.backend.run_all(np.zeros((1, 3, IMGSZ, IMGSZ), np.float32))
    assert outputs[0].shape == (1, 6, 3) and outputs[1].shape == (1, 32, 16, 16)
    Predictor(folder)  # a second load reuses the unpacked folder
    assert len(_FakeMLModel.loaded) == 2


def test_coreml_loads_with_the_compute_units_asked_for(fake_macos: None, tmp_path: Path) -> None:
    folder = _coreml_package(tmp_path)
    _FakeMLModel.units = []
    assert Predictor(folder).backend.active_providers == ["ALL"]
    on_ne = Predictor(folder, provider="cpu_and_ne")
    assert on_ne.backend.active_providers == ["CPU_AND_NE"] and on_ne.fallback is None
    assert _FakeMLModel.units == ["units.ALL", "units.CPU_AND_NE"]
    older = Predictor(folder, provider="CPU_AND_GPU")  # not in this (faked, older) coremltools
    assert older.backend.active_providers == ["CPU_ONLY"]  # the CPU runs it, said loudly
    assert older.fallback == {
        "wanted": "CPU_AND_GPU",
        "using": "CPU_ONLY",
        "reason": "CPU_AND_GPU failed to load it: this coremltools has no compute units "
        "CPU_AND_GPU; upgrade it",
    }


def test_unpack_refuses_unsafe_paths(tmp_path: Path) -> None:
    archive = tmp_path / "model.mlpackage.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(RuntimeUnavailableError, match="unsafe path"):
        unpack_mlpackage(archive)
    assert not (tmp_path.parent / "escape.txt").exists()
