"""``outpost predict --provider``: the model runs on the execution provider (device) asked for,
a provider this machine lacks is a loud fallback (a WARNING and ``fallback`` in the JSON, the
detections unchanged), and a name the runtime does not know is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from desktop_app import cli
from runtimes.errors import UnknownProviderError
from runtimes.package import write_package
from runtimes.predictor import Predictor
from tests.fakes import EXPECTED, make_detect_onnx, make_image_bytes, manifest_fields


@pytest.fixture
def package(tmp_path: Path) -> tuple[Path, Path]:
    model = make_detect_onnx(tmp_path / "model.onnx")
    out = tmp_path / "shapes.outpost.zip"
    write_package(out, manifest_fields(), {"model.onnx": model})
    image = tmp_path / "frame.png"
    image.write_bytes(make_image_bytes())
    return out, image


def _predict(
    package: tuple[Path, Path], capfd: pytest.CaptureFixture[str], *extra: str
) -> tuple[dict, str]:
    assert cli.main(["predict", str(package[0]), str(package[1]), "--json", *extra]) == 0
    captured = capfd.readouterr()
    return json.loads(captured.out), captured.err


def test_a_provider_named_in_any_case_runs_the_model(
    package: tuple[Path, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    out, err = _predict(package, capfd, "--provider", "cpuexecutionprovider")
    assert out["providers"][0] == "CPUExecutionProvider" and out["fallback"] is None
    assert "WARNING" not in err
    assert out["results"][0]["detections"] == list(EXPECTED)


def test_a_provider_this_machine_lacks_is_a_loud_fallback(
    package: tuple[Path, Path], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    # the machine's ONNX Runtime build, as a CPU-only one reports itself (the boundary only)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    out, err = _predict(package, capfd, "--provider", "CUDAExecutionProvider")
    assert out["fallback"] == {
        "wanted": "CUDAExecutionProvider",
        "using": "CPUExecutionProvider",
        "reason": "CUDAExecutionProvider is not available here; onnxruntime runs on "
        "CPUExecutionProvider",
    }
    assert (
        "WARNING: CUDAExecutionProvider does not run this model here; running on "
        "CPUExecutionProvider" in err
    )
    assert out["results"][0]["detections"] == list(EXPECTED)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")
def test_openvinos_gpu_without_one_falls_back_in_openvinos_words(
    package: tuple[Path, Path], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import openvino

    real = openvino.Core.compile_model

    def compile_model(self: object, model: object, device: str, config: object) -> object:
        if device == "GPU":  # a host without an Intel GPU (its driver's answer, faked)
            raise RuntimeError("Check 'device_map.size() > 0' failed: no GPU device is found")
        return real(self, model, device, config)

    monkeypatch.setattr(openvino.Core, "compile_model", compile_model)
    out, err = _predict(package, capfd, "--runtime", "openvino", "--provider", "gpu")
    assert out["runtime"] == "openvino" and out["providers"] == ["CPU"]
    assert out["fallback"]["wanted"] == "GPU" and out["fallback"]["using"] == "CPU"
    assert "no GPU device is found" in out["fallback"]["reason"]
    assert "WARNING: GPU does not run this model here; running on CPU" in err
    assert out["results"][0]["detections"] == list(EXPECTED)


def test_a_provider_the_runtime_does_not_know_is_refused(
    package: tuple[Path, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["predict", str(package[0]), str(package[1]), "--provider", "CUDA"]) == 1
    err = capfd.readouterr().err
    assert "runtime onnxruntime knows no provider 'CUDA' (it knows: " in err
    assert "CUDAExecutionProvider" in err  # what it does know
    with pytest.raises(UnknownProviderError, match="knows no provider 'GPU'"):
        Predictor.from_path(package[0], provider="GPU")  # OpenVINO's name, not ONNX Runtime's
    with pytest.raises(UnknownProviderError, match="is a remote endpoint, not a device"):
        Predictor.from_path(package[0], provider="azureexecutionprovider")  # runs on the CPU


def test_a_provider_that_fails_to_load_the_model_falls_back_to_the_cpu(
    package: tuple[Path, Path], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TorchScript's cuda without a GPU, say: the runtime raises for the wanted provider; the
    CPU runs it, with the runtime's words as the reason (as the agent loads a deploy)."""
    from runtimes.backends.onnxruntime import OnnxRuntimeBackend

    real = OnnxRuntimeBackend.__init__

    def init(self: OnnxRuntimeBackend, model_path: Path, **kwargs: Any) -> None:
        if "CUDAExecutionProvider" in (kwargs.get("providers") or []):
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
        real(self, model_path, **kwargs)

    monkeypatch.setattr(OnnxRuntimeBackend, "__init__", init)
    out, err = _predict(package, capfd, "--provider", "CUDAExecutionProvider")
    assert out["providers"][0] == "CPUExecutionProvider"
    assert out["fallback"]["reason"] == (
        "CUDAExecutionProvider failed to load it: CUDA driver version is insufficient for CUDA "
        "runtime version"
    )
    assert "WARNING: CUDAExecutionProvider does not run this model here" in err
    assert out["results"][0]["detections"] == list(EXPECTED)


def test_onnx_runtimes_own_words_on_a_provider_go_to_stderr_not_the_json(
    package: tuple[Path, Path], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime prints "EP Error" to stdout when a listed provider fails and it retries on
    the CPU: that text is the fallback's reason and goes to stderr, so --json stays JSON."""
    import onnxruntime

    real = onnxruntime.InferenceSession

    def session(path: str, sess_options: Any = None, providers: Any = None) -> Any:
        if "CUDAExecutionProvider" in (providers or []):
            print("EP Error: CUDA_PATH is set but CUDA wasnt able to be loaded when using ['CUDA']")
            print("Falling back to ['CPUExecutionProvider'] and retrying.")
            providers = ["CPUExecutionProvider"]
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    out, err = _predict(package, capfd, "--provider", "cudaexecutionprovider")
    assert out["fallback"]["reason"].startswith("EP Error: CUDA_PATH is set but CUDA wasnt")
    assert "Falling back to ['CPUExecutionProvider'] and retrying." in err


def test_a_provider_onnx_runtime_lists_but_drops_silently_is_named_as_such(
    package: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    real = onnxruntime.InferenceSession

    def session(path: str, sess_options: Any = None, providers: Any = None) -> Any:
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    predictor = Predictor.from_path(package[0], provider="CUDAExecutionProvider")
    try:
        assert predictor.fallback is not None
        assert predictor.fallback["reason"].startswith(
            "listed by this ONNX Runtime build, but it did not initialise"
        )
    finally:
        predictor.close()
