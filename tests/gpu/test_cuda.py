"""On a real NVIDIA GPU (``make test-gpu``): training on the GPU, TorchScript on CUDA with the
CPU's numbers, and the agent choosing CUDA by its own benchmark.

Skipped where torch sees no GPU. The model is trained from YAML on the sample dataset
(nothing is downloaded); the export is made on the CPU as usual and loaded on the GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtimes.backends import BackendRegistry, TorchScriptBackend
from runtimes.predictor import Predictor
from runtimes.preprocess import read_image
from tests.e2e.conftest import run_outpost

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def test_the_agent_reports_the_gpu_and_the_cuda_provider() -> None:
    from device_agent.platform_info import accelerators

    gpus = [a for a in accelerators() if a["kind"] == "cuda"]
    assert gpus and gpus[0]["name"] != "NVIDIA GPU", gpus  # named by nvidia-smi
    assert TorchScriptBackend.probe().providers == ("cuda", "cpu")


def test_torchscript_on_cuda_gives_the_cpu_numbers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 8, 3, stride=2)
    ).eval()
    path = tmp_path / "model.torchscript"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 64, 64)), str(path))
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    gpu = TorchScriptBackend(path, providers=["cuda", "cpu"])
    cpu = TorchScriptBackend(path, threads=2)
    assert gpu.active_providers == ["cuda"] and cpu.active_providers == ["cpu"]
    np.testing.assert_allclose(gpu.run(x), cpu.run(x), rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A yolov8n trained 5 epochs on the GPU (device 0) and exported to TorchScript."""
    pytest.importorskip("ultralytics")
    from desktop_app.core import datasets
    from desktop_app.core.dataset_sample import write_sample_dataset
    from desktop_app.core.workspace import Workspace

    base = tmp_path_factory.mktemp("gpu")
    ws_path = base / "ws"
    write_sample_dataset(base / "sample", count=48, size=128)
    ws = Workspace.open(ws_path)
    try:
        datasets.import_yolo(ws, base / "sample", "shapes")
    finally:
        ws.close()
    common = ("--workspace", str(ws_path), "--json")
    train = run_outpost(
        "train", "--dataset", "shapes", "--model", "yolov8n.yaml", "--epochs", "5",
        "--imgsz", "128", "--batch", "16", "--device", "0", "--workers", "2", *common,
        timeout=900,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-4000:]
    run = json.loads(train.stdout)
    run = run.get("run", run)
    exported = run_outpost("export", run["id"], "--format", "torchscript", *common, timeout=900)
    assert exported.returncode == 0, exported.stderr[-4000:]
    return {"run": run, "export": json.loads(exported.stdout)[0], "sample": base / "sample"}


def test_a_run_trains_on_the_gpu(gpu_run: dict[str, Any]) -> None:
    run = gpu_run["run"]
    assert run["status"] == "completed", run
    assert "cuda" in str(run.get("device", "")).lower() or str(run.get("device")) == "0", run


def test_the_agent_serves_torchscript_on_cuda_with_the_cpu_detections(
    gpu_run: dict[str, Any], tmp_path: Path
) -> None:
    from device_agent.store import ModelStore

    export = gpu_run["export"]
    assert export["status"] == "completed", export
    package = Path(export["package"])
    registry = BackendRegistry()
    registry.register(TorchScriptBackend)
    store = ModelStore(tmp_path / "data", registry=registry)
    model = store.install(package)
    assert model.fallback is None
    print(f"agent benchmark, ms per image: {model.benchmark}; serving {model.providers}")
    assert model.benchmark is not None and set(model.benchmark) == {"cuda", "cpu"}
    reference = Predictor.from_path(package)  # the CPU, as the export's parity check ran it
    images = sorted((gpu_run["sample"] / "images").glob("*.jpg"))[:8]
    try:
        for image in images:
            want, _ = reference.predict(read_image(image))
            got, _ = model.predict_bytes(image.read_bytes())
            assert len(got) == len(want), image.name
            if len(want):
                np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.5)
                np.testing.assert_allclose(got.confidence, want.confidence, atol=2e-3)
    finally:
        reference.close()
    cuda = TorchScriptBackend(Path(store.get(model.name).folder) / "model.torchscript")
    assert cuda.active_providers == ["cpu"]  # no providers asked: the CPU, whatever the machine


@pytest.mark.parametrize("task", ["segment", "pose", "classify"])
def test_the_agent_serves_segment_pose_and_classify_on_cuda_like_the_cpu(
    task: str, tmp_path: Path
) -> None:
    """Tiny random-weight models of each task, exported to TorchScript, installed on the agent
    with the ``cuda`` provider (self-test included): boxes, masks, keypoints and classes as the
    CPU gives them. Their many near-duplicate boxes make NMS go either way on TF32's rounding,
    so boxes are compared as the self-test does (near-duplicate swaps forgiven)."""
    pytest.importorskip("ultralytics")
    from device_agent.store import ModelStore, compare_self_test
    from runtimes.package import SelfTest
    from tests.exporters.test_tasks_export import export_built

    built = export_built(task, "torchscript", tmp_path)
    registry = BackendRegistry()
    registry.register(TorchScriptBackend)
    store = ModelStore(tmp_path / "data", registry=registry)
    model = store.install(built["package"], provider="cuda")
    assert model.providers == ["cuda"] and model.fallback is None, model.describe()
    reference = Predictor.from_path(built["package"])  # the CPU
    post = reference.manifest.model.postprocessing
    try:
        for image in built["images"]:
            data = image.read_bytes()
            want, _ = reference.predict_bytes(data, conf=0.25)
            got, _ = model.predict_bytes(data, conf=0.25)
            if task == "classify":
                assert want.probs is not None and got.probs is not None
                np.testing.assert_allclose(got.probs, want.probs, atol=2e-3)
                continue
            spec = SelfTest.model_validate(
                {
                    "input": image.name,
                    "expected": [
                        {"class_id": d["class_id"], "score": d["confidence"], "xyxy": d["xyxy"]}
                        for d in want.to_list()
                    ],
                }
            )
            report = compare_self_test(spec, got, 0.25, post.iou_threshold, post.agnostic_nms)
            assert report["passed"] and len(got) > 0, (image.name, report)
            if task == "segment":
                assert want.masks is not None and got.masks is not None
                union_want, union_got = want.masks.any(axis=0), got.masks.any(axis=0)
                assert (union_want != union_got).mean() < 0.01, image.name
            else:
                assert want.keypoints is not None and got.keypoints is not None
        # the raw outputs (boxes, scores, mask coefficients and prototypes, keypoints) on CUDA
        # are the CPU's within TF32's rounding; the post-processing is the same code
        tensor = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
        cpu = TorchScriptBackend(Path(store.get(task).folder) / "model.torchscript", threads=2)
        for on_gpu, on_cpu in zip(
            model.predictor.backend.run_all(tensor), cpu.run_all(tensor), strict=True
        ):
            np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-2, atol=1e-2)
    finally:
        reference.close()
