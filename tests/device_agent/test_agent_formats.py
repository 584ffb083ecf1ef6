"""Runtime choice across the formats of one package (``Manifest.alternates``).

The package carries the fake detector twice: as ONNX and as TorchScript (the same head, so
both answer the same detections). The agent loads and times every (format, provider) pair
its runtimes run, serves the fastest, reports the choice and lists a format it cannot run
with the reason; ``Predictor(format_key=...)`` picks a format directly.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from desktop_app.core import devices
from desktop_app.core.workspace import Workspace
from device_agent.pairing import issue_code
from device_agent.store import ModelStore
from runtimes.backends import (
    BackendRegistry,
    LiteRtBackend,
    OnnxRuntimeBackend,
    TorchScriptBackend,
)
from runtimes.errors import PackageError
from runtimes.package import write_package
from runtimes.predictor import Predictor
from tests.device_agent.conftest import AgentThread
from tests.device_agent.desktop_helpers import record_device
from tests.fakes import (
    DEFAULT_ROWS,
    EXPECTED,
    make_detect_onnx,
    make_image_bytes,
    manifest_fields,
)

torch = pytest.importorskip("torch")

ORT_CPU = "onnx/CPUExecutionProvider"
TS_CPU = "torchscript/cpu"


def make_detect_torchscript(path: Path, imgsz: int = 64) -> Path:
    """The fake detector of ``tests.fakes`` as TorchScript: the same raw head, whatever the
    input (it still reads the input, as the ONNX one does)."""
    nc = 2
    head = np.zeros((1, 4 + nc, len(DEFAULT_ROWS)), np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(DEFAULT_ROWS):
        head[0, :4, a] = (cx, cy, w, h)
        head[0, 4 + int(cls), a] = score

    class Fake(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("head", torch.from_numpy(head))

        def forward(self, images: Any) -> Any:
            return self.head + images.mean() * 0.0

    module = torch.jit.trace(Fake().eval(), torch.zeros(1, 3, imgsz, imgsz))
    torch.jit.save(module, str(path))
    return path


def make_two_format_package(out_zip: Path, version: str = "1") -> Path:
    """A package of model ``shapes`` holding ONNX (primary) and TorchScript (alternate)."""
    with tempfile.TemporaryDirectory(prefix="outpost-2fmt-") as tmp:
        folder = Path(tmp)
        onnx_path = make_detect_onnx(folder / "model.onnx")
        ts_path = make_detect_torchscript(folder / "model.torchscript")
        fields = {
            **manifest_fields("shapes", version),
            "alternates": [
                {"key": "torchscript", "file": "model.torchscript", "runtime": "torchscript"}
            ],
        }
        out_zip.parent.mkdir(parents=True, exist_ok=True)
        write_package(out_zip, fields, {"model.onnx": onnx_path, "model.torchscript": ts_path})
    return out_zip


def _slow(base: type[Any], name: str) -> type[Any]:
    """``base`` made 20 ms slower per run, so the benchmark must prefer the other format."""

    def run(self: Any, tensor: np.ndarray) -> np.ndarray:
        time.sleep(0.02)
        return base.run(self, tensor)  # type: ignore[no-any-return]

    return type(name, (base,), {"run": run})


def _registry(*backends: type[Any]) -> BackendRegistry:
    registry = BackendRegistry()
    for backend in backends:
        registry.register(backend)
    return registry


@pytest.fixture
def two_formats(tmp_path: Path) -> Path:
    return make_two_format_package(tmp_path / "pkgs" / "shapes-1.outpost.zip")


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.open(tmp_path / "ws")
    yield workspace
    workspace.close()


def test_predictor_picks_a_format_of_a_multi_format_package(two_formats: Path) -> None:
    image = make_image_bytes()
    for key, runtime in (("onnx", "onnxruntime"), ("torchscript", "torchscript")):
        predictor = Predictor.from_path(two_formats, format_key=key)
        try:
            assert (predictor.format.key, predictor.backend.key) == (key, runtime)
            assert predictor.predict_bytes(image)[0].to_list() == list(EXPECTED)
        finally:
            predictor.close()
    default = Predictor.from_path(two_formats)  # the primary format
    by_runtime = Predictor.from_path(two_formats, runtime="torchscript")  # the one it runs
    try:
        assert default.format.key == "onnx" and by_runtime.format.key == "torchscript"
    finally:
        default.close()
        by_runtime.close()
    with pytest.raises(PackageError, match="holds no openvino model"):
        Predictor.from_path(two_formats, format_key="openvino")


@pytest.mark.parametrize(
    ("slow_onnx", "chosen", "runtime"),
    [(True, "torchscript", "torchscript"), (False, "onnx", "onnxruntime")],
)
def test_every_format_is_benchmarked_and_the_fastest_serves(
    tmp_path: Path, two_formats: Path, slow_onnx: bool, chosen: str, runtime: str
) -> None:
    ort = _slow(OnnxRuntimeBackend, "SlowOrt") if slow_onnx else OnnxRuntimeBackend
    ts = TorchScriptBackend if slow_onnx else _slow(TorchScriptBackend, "SlowTorchScript")
    registry = _registry(ort, ts)
    store = ModelStore(tmp_path / "data", registry=registry)
    model = store.install(two_formats)

    assert model.benchmark is not None and set(model.benchmark) == {ORT_CPU, TS_CPU}
    slow_key = ORT_CPU if slow_onnx else TS_CPU
    assert min(model.benchmark, key=lambda k: model.benchmark[k]) != slow_key  # type: ignore[index]
    assert (model.format, model.runtime, model.fallback) == (chosen, runtime, None)
    report = {f["format"]: f for f in model.install_result()["formats"]}
    assert set(report) == {"onnx", "torchscript"}
    assert report[chosen]["chosen"] is True and report[chosen]["runnable"] is True
    other = "onnx" if chosen == "torchscript" else "torchscript"
    assert report[other]["chosen"] is False and report[other]["benchmark"]
    got, _ = model.predict_bytes(make_image_bytes())
    assert got.to_list() == list(EXPECTED)

    # a restart serves the same format without benchmarking again
    again = ModelStore(tmp_path / "data", registry=registry)
    assert again.load() == []  # no problems
    reopened = again.get("shapes")
    assert (reopened.format, reopened.runtime) == (chosen, runtime)
    assert reopened.benchmark == model.benchmark and reopened.formats == model.formats


def test_a_format_no_runtime_here_runs_is_listed_with_the_reason(
    tmp_path: Path, two_formats: Path
) -> None:
    store = ModelStore(tmp_path / "data", registry=_registry(OnnxRuntimeBackend))
    model = store.install(two_formats)
    assert (model.format, model.runtime) == ("onnx", "onnxruntime")
    report = {f["format"]: f for f in model.formats or []}
    assert report["onnx"]["runnable"] is True and report["onnx"]["chosen"] is True
    assert report["torchscript"]["runnable"] is False
    assert "no runtime here can run format 'torchscript'" in report["torchscript"]["reason"]


def test_only_unrunnable_formats_refuse_the_install_and_say_why(
    tmp_path: Path, two_formats: Path
) -> None:
    store = ModelStore(tmp_path / "data", registry=_registry())
    with pytest.raises(Exception, match="no runtime here can run any format of shapes") as none:
        store.install(two_formats)
    assert str(none.value).endswith(
        "; install a runtime for it (pip install 'outpost[agent]' brings ONNX Runtime)"
    )
    assert not (tmp_path / "data" / "models" / "shapes").exists()
    # a device that runs other formats says which: the package can be exported as one
    store = ModelStore(tmp_path / "data", registry=_registry(LiteRtBackend))
    with pytest.raises(Exception, match="export it as tflite \\(what this device runs\\)"):
        store.install(two_formats)


def test_the_choice_reaches_v1_models_and_the_desktop_deployments(
    tmp_path: Path, two_formats: Path, ws: Workspace
) -> None:
    registry = _registry(_slow(OnnxRuntimeBackend, "SlowOrt"), TorchScriptBackend)
    agent = AgentThread(tmp_path / "agent", registry=registry).start()
    try:
        from desktop_app.core import datasets
        from desktop_app.core.dataset_sample import write_sample_dataset
        from tests.records import record_export

        write_sample_dataset(tmp_path / "sample", count=4, size=64)
        datasets.import_yolo(ws, tmp_path / "sample", "shapes")
        record_export(ws, two_formats)
        device_id = record_device(ws, agent)
        devices.pair(ws, device_id, issue_code(agent.service.data_dir).code)
        deployed = devices.deploy(ws, "exp1", device_id)
        _, client = devices.connect(ws, device_id)
        with client:
            (row,) = client.models()
    finally:
        agent.stop()
    assert deployed["installed"]["format"] == "torchscript"
    assert (row["format"], row["runtime"]) == ("torchscript", "torchscript")
    assert set(row["benchmark"]) == {ORT_CPU, TS_CPU}
    assert {f["format"]: f["chosen"] for f in row["formats"]} == {
        "onnx": False,
        "torchscript": True,
    }
    (listed,) = devices.list_deployments(ws)
    assert (listed["format"], listed["runtime"]) == ("torchscript", "torchscript")
    assert (
        listed["benchmark"] == row["benchmark"] and listed["details"]["formats"] == row["formats"]
    )


def test_a_format_whose_runtime_went_is_replaced_and_reported_truthfully(
    tmp_path: Path, two_formats: Path
) -> None:
    """TorchScript won at install; after torch is gone from the device the agent serves the
    ONNX format, and says so: the fallback names the format and why (not a provider), and
    the formats report marks what is chosen and what no longer runs."""
    registry = _registry(_slow(OnnxRuntimeBackend, "SlowOrt"), TorchScriptBackend)
    installed = ModelStore(tmp_path / "data", registry=registry).install(two_formats)
    assert installed.format == "torchscript" and installed.fallback is None
    store = ModelStore(tmp_path / "data", registry=_registry(OnnxRuntimeBackend))
    store.load()
    (model,) = store.models()
    assert (model.format, model.runtime) == ("onnx", "onnxruntime")
    assert model.fallback is not None
    assert (model.fallback["wanted"], model.fallback["using"]) == ("torchscript", "onnx")
    assert "torchscript" in model.fallback["reason"] and "provider" not in model.fallback["reason"]
    report = {f["format"]: f for f in model.formats or []}
    assert report["onnx"]["chosen"] is True
    assert report["torchscript"]["chosen"] is False and report["torchscript"]["runnable"] is False
    assert report["torchscript"]["reason"] == model.fallback["reason"]
    assert model.predict_bytes(make_image_bytes())[0].to_list() == list(EXPECTED)


def test_provider_names_match_exactly_first_then_in_any_case() -> None:
    """torch's ``cpu`` is not OpenVINO's ``CPU``; a name a runtime knows but this machine
    lacks (DirectML, CoreML's compute units here on Linux) is a fallback, not a typo."""
    from device_agent.errors import InstallError
    from device_agent.store import _provider_named
    from runtimes.backends import CoreMlBackend, OpenVinoBackend

    registry = _registry(OnnxRuntimeBackend, OpenVinoBackend, TorchScriptBackend, CoreMlBackend)
    runnable = [("onnx", OnnxRuntimeBackend, ["CPUExecutionProvider"])]
    assert _provider_named("cpu", runnable, registry) == "cpu"
    assert _provider_named("CPU", runnable, registry) == "CPU"
    assert _provider_named("cpuexecutionprovider", runnable, registry) == "CPUExecutionProvider"
    assert _provider_named("cuda", runnable, registry) == "cuda"
    assert _provider_named("DmlExecutionProvider", runnable, registry) == "DmlExecutionProvider"
    assert _provider_named("CPU_AND_NE", runnable, registry) == "CPU_AND_NE"
    with pytest.raises(InstallError, match="no runtime knows an execution provider called"):
        _provider_named("FooProvider", runnable, registry)
