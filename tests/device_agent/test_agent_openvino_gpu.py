"""An Intel box's GPU under OpenVINO: offered where the host shows one, timed against the CPU,
kept for the restarts, and every way it can go missing reported as a fallback.

No Intel GPU here: the probe reads a fake sysfs tree (``SYSFS_ROOT``), and OpenVINO's own
``Core.compile_model`` for ``GPU`` is faked at the plugin boundary (it compiles for the CPU,
or raises the GPU plugin's error when the compute runtime is missing). Everything else, the
backend, the store's choice and the model's answers, runs for real.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.store import ModelStore
from runtimes.backends import BackendRegistry
from tests.fakes import EXPECTED, make_image_bytes, make_package

ov = pytest.importorskip("openvino")

from runtimes.backends import openvino as ov_backend  # noqa: E402 (after the skip)

MISSING_RUNTIME = (
    "Exception from src/inference/src/cpp/core.cpp:112:\n"
    "Exception from src/plugins/intel_gpu/src/plugin/plugin.cpp:200:\n"
    "[GPU] Can't get OpenCL platform: no OpenCL ICD is installed (intel-opencl-icd)\n"
)


def fake_sysfs(root: Path, vendor: str | None = "0x8086", render_node: bool = True) -> Path:
    """A host's ``/dev/dri`` and ``/sys/class/drm`` with one card of ``vendor`` (and its
    connector, which is not a card)."""
    if render_node:
        (root / "dev" / "dri").mkdir(parents=True)
        (root / "dev" / "dri" / "renderD128").write_text("")
    if vendor is not None:
        device = root / "sys" / "class" / "drm" / "card0" / "device"
        device.mkdir(parents=True)
        (device / "vendor").write_text(f"{vendor}\n")
        (root / "sys" / "class" / "drm" / "card0-HDMI-A-1").mkdir()
    return root


class FakeGpu:
    """OpenVINO's ``compile_model`` with a GPU plugin: ``GPU`` compiles for the CPU (as a
    working iGPU would run the model) or, ``broken``, raises the plugin's own error."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = ov.Core.compile_model
        self.broken = False
        self.calls: list[tuple[str, dict[str, Any]]] = []
        fake = self

        def compile_model(core: Any, model: Any, device: str, config: Any = None) -> Any:
            fake.calls.append((device, dict(config or {})))
            if device != "GPU":
                return fake.real(core, model, device, config)
            if fake.broken:
                raise RuntimeError(MISSING_RUNTIME)
            cpu_config = {k: v for k, v in (config or {}).items() if k != "CACHE_DIR"}
            return fake.real(core, model, "CPU", cpu_config)

        monkeypatch.setattr(ov.Core, "compile_model", compile_model)

    def devices(self) -> list[str]:
        return [device for device, _ in self.calls]


class SlowCpuOpenVino(ov_backend.OpenVinoBackend):
    """The backend with its CPU made 20 ms slower per run: the GPU must win the benchmark."""

    def run(self, tensor: np.ndarray) -> np.ndarray:
        if self.device == ov_backend.CPU:
            time.sleep(0.02)
        return super().run(tensor)


def _registry(backend: type[Any] = SlowCpuOpenVino) -> BackendRegistry:
    registry = BackendRegistry()
    registry.register(backend)  # the only runtime: it runs the package's ONNX file
    return registry


@pytest.fixture
def intel_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = fake_sysfs(tmp_path / "host")
    monkeypatch.setattr(ov_backend, "SYSFS_ROOT", str(root))
    monkeypatch.setattr(ov_backend.sys, "platform", "linux")
    return root


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return make_package(tmp_path / "pkgs" / "shapes-1.outpost.zip")


def test_the_probe_offers_the_gpu_of_an_intel_card_only(tmp_path: Path) -> None:
    intel = fake_sysfs(tmp_path / "intel")
    nvidia = fake_sysfs(tmp_path / "nvidia", vendor="0x10de")
    no_node = fake_sysfs(tmp_path / "headless", render_node=False)
    bare = tmp_path / "bare"
    bare.mkdir()
    assert ov_backend.intel_gpu_present(str(intel)) is True
    for root in (nvidia, no_node, bare):
        assert ov_backend.intel_gpu_present(str(root)) is False


def test_the_gpu_is_timed_against_the_cpu_and_serves_when_faster(
    tmp_path: Path, intel_gpu: Path, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = FakeGpu(monkeypatch)
    assert ov_backend.OpenVinoBackend.probe().providers == ("CPU", "GPU")
    store = ModelStore(tmp_path / "data", registry=_registry())
    model = store.install(package)

    assert model.runtime == "openvino" and model.providers == ["GPU"]
    assert model.benchmark is not None and set(model.benchmark) == {"CPU", "GPU"}
    assert model.benchmark["GPU"] < model.benchmark["CPU"] and model.fallback is None
    got, _ = model.predict_bytes(make_image_bytes())
    assert got.to_list() == list(EXPECTED)
    config = next(c for d, c in gpu.calls if d == "GPU")
    # f32 for an FP32 model (the GPU plugin would pick f16), kernels cached in the model folder
    assert config["INFERENCE_PRECISION_HINT"] == "f32" and "INFERENCE_NUM_THREADS" not in config
    # (compiled in the staging folder, which becomes the version's folder)
    assert Path(config["CACHE_DIR"]).name == ov_backend.GPU_CACHE_DIR
    assert (model.folder / ov_backend.GPU_CACHE_DIR).is_dir()

    # a restart loads it on the GPU again, without a benchmark
    gpu.calls.clear()
    again = ModelStore(tmp_path / "data", registry=_registry())
    assert again.load() == []
    reopened = again.get("shapes")
    assert reopened.providers == ["GPU"] and reopened.fallback is None
    assert gpu.devices() == ["GPU"]
    assert gpu.calls[0][1]["CACHE_DIR"] == str(reopened.folder / ov_backend.GPU_CACHE_DIR)


def test_a_gpu_that_fails_at_install_is_a_fallback_in_openvinos_words(
    tmp_path: Path, intel_gpu: Path, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = FakeGpu(monkeypatch)
    gpu.broken = True
    for provider, folder in ((None, "auto"), ("GPU", "asked")):
        store = ModelStore(tmp_path / folder, registry=_registry())
        model = store.install(package, provider=provider)
        assert model.providers == ["CPU"]
        assert model.fallback is not None
        assert (model.fallback["wanted"], model.fallback["using"]) == ("GPU", "CPU")
        reason = model.fallback["reason"]
        assert reason.startswith("GPU failed to initialise: [GPU] Can't get OpenCL platform")
        assert "Exception from src/" not in reason and "\n" not in reason
        result = model.install_result()
        assert any("wanted GPU, using CPU" in w for w in result["warnings"])
        got, _ = model.predict_bytes(make_image_bytes())
        assert got.to_list() == list(EXPECTED)


def test_a_gpu_lost_after_the_install_is_reported_at_the_next_start(
    tmp_path: Path, intel_gpu: Path, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = FakeGpu(monkeypatch)
    ModelStore(tmp_path / "data", registry=_registry()).install(package)

    gpu.broken = True  # the compute runtime was removed
    broken = ModelStore(tmp_path / "data", registry=_registry())
    assert broken.load() == []  # still serving
    model = broken.get("shapes")
    assert model.providers == ["CPU"] and model.fallback is not None
    assert model.fallback["wanted"] == "GPU" and model.fallback["using"] == "CPU"
    assert "failed to initialise on this start: [GPU] Can't get OpenCL" in model.fallback["reason"]
    got, _ = model.predict_bytes(make_image_bytes())
    assert got.to_list() == list(EXPECTED)

    gpu.broken = False  # the card itself is gone
    monkeypatch.setattr(ov_backend, "SYSFS_ROOT", str(tmp_path / "no-gpu"))
    gone = ModelStore(tmp_path / "data", registry=_registry())
    assert gone.load() == []
    model = gone.get("shapes")
    assert model.providers == ["CPU"] and model.fallback is not None
    assert model.fallback["reason"] == "GPU is no longer available on this device"


def test_a_cpu_only_host_offers_the_cpu_and_loads_nothing_else(
    tmp_path: Path, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ov_backend, "SYSFS_ROOT", str(tmp_path / "no-gpu"))
    gpu = FakeGpu(monkeypatch)
    assert ov_backend.OpenVinoBackend.probe().providers == ("CPU",)
    model = ModelStore(tmp_path / "data", registry=_registry(ov_backend.OpenVinoBackend)).install(
        package
    )
    assert model.providers == ["CPU"] and model.benchmark is None and model.fallback is None
    assert set(gpu.devices()) == {"CPU"}
    assert not (model.folder / ov_backend.GPU_CACHE_DIR).exists()
