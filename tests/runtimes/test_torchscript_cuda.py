"""TorchScript on an NVIDIA GPU: the probe lists ``cuda`` only where it can work, and a GPU
that cannot start is a loud fallback to the CPU, never a silent one.

The CUDA side is faked at the boundary here (the driver files, torch's build string,
``torch.cuda.is_available``); ``tests/gpu`` runs the same paths on a real GPU.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from device_agent.store import ModelStore
from runtimes.backends import BackendRegistry, TorchScriptBackend
from runtimes.backends import torchscript as ts_module
from runtimes.errors import RuntimeUnavailableError
from runtimes.package import write_package
from tests.fakes import EXPECTED, make_image_bytes, manifest_fields

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _fake_torch(tmp_path: Path, cuda_line: str) -> Any:
    folder = tmp_path / "torch"
    folder.mkdir()
    (folder / "version.py").write_text(f"__version__ = '2.5.0'\n{cuda_line}\n")
    return SimpleNamespace(submodule_search_locations=[str(folder)])


@pytest.mark.parametrize(
    ("cuda_line", "driver", "expected"),
    [
        ("cuda: Optional[str] = '12.4'", True, True),
        ("cuda = '11.8'", True, True),
        ("cuda: Optional[str] = None", True, False),  # a CPU build of torch
        ("cuda: Optional[str] = '12.4'", False, False),  # no NVIDIA driver on this machine
    ],
)
def test_cuda_is_offered_only_by_a_cuda_build_with_a_driver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cuda_line: str, driver: bool, expected: bool
) -> None:
    spec = _fake_torch(tmp_path, cuda_line)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setattr(ts_module.os.path, "exists", lambda p: driver)
    monkeypatch.setattr(ts_module.glob, "glob", lambda p: [])
    assert ts_module.cuda_possible() is expected


def test_the_probe_lists_cuda_before_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ts_module, "cuda_possible", lambda: True)
    assert TorchScriptBackend.probe().providers == ("cuda", "cpu")
    monkeypatch.setattr(ts_module, "cuda_possible", lambda: False)
    assert TorchScriptBackend.probe().providers == ("cpu",)


def _model(path: Path) -> Path:
    conv = torch.nn.Conv2d(3, 4, 4, stride=4).eval()
    torch.jit.save(torch.jit.trace(conv, torch.zeros(1, 3, 16, 16)), str(path))
    return path


def test_cuda_without_a_gpu_runs_on_the_cpu_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = _model(tmp_path / "model.torchscript")
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)

    backend = TorchScriptBackend(path, threads=1, providers=["cuda", "cpu"])
    assert backend.active_providers == ["cpu"]  # what the agent compares with what it asked
    reference = TorchScriptBackend(path, threads=1)
    np.testing.assert_array_equal(backend.run(x), reference.run(x))

    with pytest.raises(RuntimeUnavailableError, match="cannot use CUDA here"):
        TorchScriptBackend(path, providers=["cuda"])
    with pytest.raises(RuntimeUnavailableError, match="no provider npu; use cuda or cpu"):
        TorchScriptBackend(path, providers=["npu", "cpu"])


def _torchscript_package(out_zip: Path) -> Path:
    from tests.device_agent.test_agent_formats import make_detect_torchscript

    with tempfile.TemporaryDirectory(prefix="outpost-ts-") as tmp:
        model = make_detect_torchscript(Path(tmp) / "model.torchscript")
        fields = {
            **manifest_fields("shapes", "1"),
            "format": {"key": "torchscript", "file": "model.torchscript", "runtime": "torchscript"},
        }
        write_package(out_zip, fields, {"model.torchscript": model})
    return out_zip


def test_the_agent_reports_a_gpu_that_does_not_start_as_a_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ts_module, "cuda_possible", lambda: True)  # a CUDA build and a driver
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # but the GPU is gone
    registry = BackendRegistry()
    registry.register(TorchScriptBackend)
    store = ModelStore(tmp_path / "data", registry=registry)
    model = store.install(_torchscript_package(tmp_path / "ts.outpost.zip"))
    assert model.providers == ["cpu"]
    assert model.fallback is not None
    assert (model.fallback["wanted"], model.fallback["using"]) == ("cuda", "cpu")
    assert "did not initialise" in model.fallback["reason"]
    got, _ = model.predict_bytes(make_image_bytes())
    assert got.to_list() == list(EXPECTED)


def test_the_default_thread_count_leaves_a_core_to_the_caller(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _model(tmp_path / "model.torchscript")
    before = torch.get_num_threads()
    try:
        for cores, expected in ((1, 1), (2, 1), (8, 7)):
            monkeypatch.setattr(ts_module.os, "cpu_count", lambda c=cores: c)
            assert TorchScriptBackend(path).threads == expected
            assert torch.get_num_threads() == expected
        assert TorchScriptBackend(path, threads=3).threads == 3
    finally:
        torch.set_num_threads(before)
