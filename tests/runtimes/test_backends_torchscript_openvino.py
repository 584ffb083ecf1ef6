"""The TorchScript and OpenVINO backends: same raw output as the model, honest probes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from runtimes.backends import default_registry
from runtimes.backends.openvino import OpenVinoBackend
from runtimes.backends.torchscript import TorchScriptBackend
from runtimes.errors import RuntimeUnavailableError

torch = pytest.importorskip("torch")
# torch marks torch.jit and the TorchScript ONNX exporter deprecated; the tests build tiny models.
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


class _Head(torch.nn.Module):  # type: ignore[misc]
    """A stand-in YOLO head: ``(1, 3, 32, 32)`` → ``(1, 4 + 2, 16)``, returned in a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 8, stride=8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x).flatten(2)
        return y, x


@pytest.fixture(scope="module")
def head() -> _Head:
    torch.manual_seed(0)
    return _Head().eval()


def _input() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)


def test_torchscript_backend_returns_the_first_output(head: _Head, tmp_path: Path) -> None:
    path = tmp_path / "model.torchscript"
    torch.jit.save(torch.jit.trace(head, torch.zeros(1, 3, 32, 32)), str(path))
    backend = TorchScriptBackend(path, threads=1)
    out = backend.run(_input())
    expected = head(torch.from_numpy(_input()))[0].detach().numpy()
    assert out.shape == (1, 6, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert backend.active_providers == ["cpu"]


def test_openvino_backend_runs_onnx_in_f32(head: _Head, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        head, (torch.zeros(1, 3, 32, 32),), str(path), output_names=["y", "x"], dynamo=False
    )
    backend = OpenVinoBackend(path, threads=1)
    out = backend.run(_input())
    expected = head(torch.from_numpy(_input()))[0].detach().numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    first = out.copy()
    backend.run(np.zeros_like(_input()))
    assert np.array_equal(out, first)  # the result is a copy, not the reused output buffer


def test_backends_are_registered_and_onnx_stays_on_onnxruntime() -> None:
    registry = default_registry()
    assert {"onnxruntime", "openvino", "torchscript"} <= set(registry.keys())
    assert registry.for_format("onnx").key == "onnxruntime"
    assert registry.for_format("torchscript").key == "torchscript"


def test_missing_library_makes_a_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("torch", "openvino") else real(name, *a),
    )
    for backend in (TorchScriptBackend, OpenVinoBackend):
        info = backend.probe()
        assert not info.available and "not installed" in (info.reason or "")
    with pytest.raises(RuntimeUnavailableError, match="torchscript: torch is not installed"):
        default_registry().for_format("torchscript")
