"""ONNX shipped for TensorRT: the manifest's ``tensorrt_build`` reaches ONNX Runtime's TensorRT
execution provider as engine-cache and fp16 options. The provider list is faked at the
boundary (``onnxruntime.get_available_providers``); the package, its manifest and the
session's model are real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.formats.tensorrt import tensorrt_build_request as build_request
from runtimes.backends import onnxruntime as ort_backend
from runtimes.backends.onnxruntime import (
    OnnxRuntimeBackend,
    session_providers,
    tensorrt_build_request,
)
from runtimes.package import PackageReader, write_package
from runtimes.predictor import Predictor
from tests.fakes import make_detect_onnx, manifest_fields

ort = pytest.importorskip("onnxruntime")
TRT_AND_CPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _package(tmp_path: Path, fp16: bool | None) -> Path:
    """An extracted ONNX package; ``fp16`` None = a plain one without ``tensorrt_build``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx_path = make_detect_onnx(tmp_path / "model.onnx")
    fields = manifest_fields()
    if fp16 is not None:
        fields["format"]["details"] = {"tensorrt_build": build_request(fp16, 512)}
    package = write_package(tmp_path / "p.outpost.zip", fields, {"model.onnx": onnx_path})
    assert package.format.key == "onnx"
    with PackageReader(tmp_path / "p.outpost.zip") as reader:
        return reader.extract(tmp_path / "pkg")


def test_session_providers_pass_the_engine_options(tmp_path: Path) -> None:
    build = build_request(True, 512)
    chosen = session_providers(ort_backend.PROVIDER_PREFERENCE, TRT_AND_CPU, build, tmp_path)
    assert chosen[0] == (
        "TensorrtExecutionProvider",
        {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(tmp_path / "trt_cache"),
            "trt_fp16_enable": True,
            "trt_max_workspace_size": 512 * 2**20,
        },
    )
    assert chosen[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # Without the request the TensorRT provider gets no options; without TensorRT, none either.
    assert session_providers(ort_backend.PROVIDER_PREFERENCE, TRT_AND_CPU, None, tmp_path)[0] == (
        "TensorrtExecutionProvider"
    )
    assert session_providers(
        ort_backend.PROVIDER_PREFERENCE, ["CPUExecutionProvider"], build, tmp_path
    ) == ["CPUExecutionProvider"]
    assert session_providers(["NoSuchProvider"], TRT_AND_CPU, build, tmp_path) == [
        "CPUExecutionProvider"
    ]


def test_the_manifest_request_is_found_for_its_model(tmp_path: Path) -> None:
    folder = _package(tmp_path, fp16=False)
    assert tensorrt_build_request(folder / "model.onnx") == {
        "fp16": False,
        "workspace_mb": 512,
        "engine_cache": "trt_cache",
    }
    assert tensorrt_build_request(tmp_path / "model.onnx") is None  # no manifest beside it
    plain = _package(tmp_path / "plain", fp16=None)
    assert tensorrt_build_request(plain / "model.onnx") is None


class _RecordingSession:
    """Stands in for ``InferenceSession`` when a TensorRT build is asked for: it records
    the providers argument and runs the model on the real CPU session."""

    seen: list[Any] = []

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        type(self).seen.append(providers)
        self._real = _REAL_SESSION(
            path, sess_options=sess_options, providers=["CPUExecutionProvider"]
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_REAL_SESSION = ort.InferenceSession


def test_backend_asks_onnxruntime_for_a_cached_fp16_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _package(tmp_path, fp16=True)
    _RecordingSession.seen = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(TRT_AND_CPU))
    monkeypatch.setattr(ort, "InferenceSession", _RecordingSession)
    predictor = Predictor(folder)
    assert isinstance(predictor.backend, OnnxRuntimeBackend)
    providers = _RecordingSession.seen[0]
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_engine_cache_enable"] is True and options["trt_fp16_enable"] is True
    assert Path(options["trt_engine_cache_path"]) == folder / "trt_cache"
    assert (folder / "trt_cache").is_dir()  # made before the session builds into it
    assert predictor.backend.tensorrt_build == build_request(True, 512)
    dets, _ = predictor.predict(np.full((64, 64, 3), 114, np.uint8))
    assert len(dets) > 0  # the model still answers (on the real CPU session here)


def test_plain_onnx_package_is_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _package(tmp_path, fp16=None)
    _RecordingSession.seen = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(TRT_AND_CPU))
    monkeypatch.setattr(ort, "InferenceSession", _RecordingSession)
    predictor = Predictor(folder)
    assert _RecordingSession.seen[0][0] == "TensorrtExecutionProvider"
    assert predictor.backend.tensorrt_build is None
    assert not (folder / "trt_cache").exists()


def test_tensorrt_leaves_what_it_cannot_build_to_cuda_then_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for TensorRT, `outpost predict --provider` and the agent's install both give ONNX
    Runtime CUDA after it (the nodes TensorRT does not take run on the GPU, not the CPU);
    any other provider is followed by the CPU only."""
    from device_agent.store import ModelStore
    from tests.fakes import make_package

    folder = _package(tmp_path / "p", fp16=None)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(TRT_AND_CPU))
    monkeypatch.setattr(ort, "InferenceSession", _RecordingSession)
    _RecordingSession.seen = []
    Predictor(folder, provider="tensorrtexecutionprovider")
    Predictor(folder, provider="CUDAExecutionProvider")
    assert _RecordingSession.seen == [
        TRT_AND_CPU,
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
    ]

    _RecordingSession.seen = []
    store = ModelStore(tmp_path / "data")
    store.install(make_package(tmp_path / "v1.outpost.zip"), provider="TensorrtExecutionProvider")
    assert _RecordingSession.seen[0] == TRT_AND_CPU
