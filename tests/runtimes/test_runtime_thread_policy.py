"""The LiteRT backend's default thread count; the OpenVINO backend's settings and input path."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtimes.backends import litert
from runtimes.backends.litert import MAX_DEFAULT_THREADS, LiteRtBackend, default_threads
from runtimes.errors import OutpostError


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4), (8, MAX_DEFAULT_THREADS), (64, MAX_DEFAULT_THREADS)],
)
def test_default_threads_leave_a_core_to_the_caller_and_stop_at_the_cap(
    cores: int, expected: int
) -> None:
    assert default_threads(cores) == expected


def test_default_threads_read_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litert.os, "cpu_count", lambda: 6)
    assert default_threads() == 4
    monkeypatch.setattr(litert.os, "cpu_count", lambda: None)  # unknown: one thread
    assert default_threads() == 1


class _Interpreter:
    """Records the thread count it was built with; a model of one NCHW float input."""

    built: list[int] = []

    def __init__(self, model_path: str, num_threads: int) -> None:
        self.built.append(num_threads)
        self.value = np.zeros((1, 3, 8, 8), np.float32)

    def allocate_tensors(self) -> None:
        return None

    def get_input_details(self) -> list[dict[str, Any]]:
        return [{"index": 0, "shape": np.array([1, 3, 8, 8]), "dtype": np.float32}]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [{"index": 1, "shape": np.array([1, 3, 8, 8]), "dtype": np.float32}]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self.value = value

    def invoke(self) -> None:
        return None

    def get_tensor(self, index: int) -> np.ndarray:
        return self.value * 2


@pytest.fixture()
def fake_litert(monkeypatch: pytest.MonkeyPatch) -> type[_Interpreter]:
    package = types.ModuleType("ai_edge_litert")
    module = types.ModuleType("ai_edge_litert.interpreter")
    module.Interpreter = _Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert", package)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", module)
    _Interpreter.built = []
    return _Interpreter


def test_litert_backend_takes_the_default_unless_told(
    fake_litert: type[_Interpreter], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not a zip: no head facts")
    monkeypatch.setattr(litert.os, "cpu_count", lambda: 2)
    backend = LiteRtBackend(model)
    assert backend.threads == 1 and fake_litert.built == [1]
    pinned = LiteRtBackend(model, threads=2)
    assert pinned.threads == 2 and fake_litert.built == [1, 2]
    x = np.ones((1, 3, 8, 8), np.float32)
    np.testing.assert_array_equal(pinned.run(x), x * 2)


def _openvino_model(tmp_path: Path, shape: list[int]) -> Path:
    """A 1x1 convolution (weights 0.5) and, second, the input times 2, saved as an FP32 IR."""
    ov = pytest.importorskip("openvino")
    from openvino import opset13 as ops

    x = ops.parameter(shape, np.float32, name="images")
    weights = ops.constant(np.full((4, 3, 1, 1), 0.5, np.float32))
    conv = ops.convolution(x, weights, [1, 1], [0, 0], [0, 0], [1, 1])
    double = ops.multiply(x, ops.constant(np.float32(2.0)))
    path = tmp_path / "model.xml"
    ov.save_model(ov.Model([conv, double], [x], "tiny"), str(path), compress_to_fp16=False)
    return path


def test_openvino_backend_reports_its_threads_and_f32_precision(tmp_path: Path) -> None:
    from runtimes.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend(_openvino_model(tmp_path, [1, 3, 8, 8]), threads=1)
    assert backend.threads == 1
    assert backend.inference_precision == "f32"  # an FP32 model keeps f32 on every CPU
    out = backend.run(np.ones((1, 3, 8, 8), np.float32))
    np.testing.assert_allclose(out, np.full((1, 4, 8, 8), 1.5, np.float32))


def test_openvino_shared_input_gives_what_a_fresh_request_gives(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from runtimes.backends.openvino import OpenVinoBackend

    path = _openvino_model(tmp_path, [1, 3, 8, 8])
    backend = OpenVinoBackend(path, threads=1)
    rng = np.random.default_rng(0)
    for _ in range(3):  # each call sees its own input, not the previous one's
        x = rng.random((1, 3, 8, 8), dtype=np.float32)
        fresh = backend.compiled.create_infer_request()
        fresh.infer([x])
        outs = backend.run_all(x)
        assert np.array_equal(outs[0], fresh.get_output_tensor(0).data)
        assert np.array_equal(outs[1], x * 2)
    first = backend.run(x)
    backend.run(np.zeros_like(x))
    assert np.array_equal(first, backend.run(x))  # results are copies, not the shared buffers
    # float64 is converted as the wrapper would; a tensor of another shape is refused with
    # the shape to use, and leaves the backend working.
    assert np.array_equal(backend.run(x.astype(np.float64)), first)
    with pytest.raises(OutpostError, match=r"shape \(1, 3, 8, 8\), not \(1, 3, 4, 4\)"):
        backend.run(np.zeros((1, 3, 4, 4), np.float32))
    assert np.array_equal(backend.run(x), first)


def test_openvino_dynamic_input_passes_its_tensor(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from runtimes.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend(_openvino_model(tmp_path, [1, 3, -1, -1]), threads=1)
    for side in (8, 4):
        x = np.full((1, 3, side, side), 2.0, np.float32)
        np.testing.assert_allclose(backend.run(x), np.full((1, 4, side, side), 3.0, np.float32))


def test_onnxruntime_threads_stop_spinning_when_a_run_returns(tmp_path: Path) -> None:
    """The pool spins only during a run: after it, the agent's decode and reply get the cores."""
    pytest.importorskip("onnxruntime")
    from runtimes.backends.onnxruntime import FORCE_SPINNING_STOP, OnnxRuntimeBackend
    from tests.fakes import make_detect_onnx

    backend = OnnxRuntimeBackend(make_detect_onnx(tmp_path / "m.onnx", 64), threads=2)
    options = backend.session.get_session_options()
    assert options.get_session_config_entry(FORCE_SPINNING_STOP) == "1"
    assert options.intra_op_num_threads == 2
    out = backend.run(np.zeros((1, 3, 64, 64), np.float32))
    assert out.ndim == 3
