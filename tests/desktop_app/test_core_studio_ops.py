"""desktop_app.core.studio_ops: the composed operations the Studio pages call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop_app.core import datasets, studio_ops
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.devices import PIN_KEY, deploy, desktop_key
from desktop_app.core.errors import NotFoundError
from desktop_app.core.jobs import JobManager
from desktop_app.core.models import Device
from desktop_app.core.workspace import Workspace
from device_agent.auth import b64
from tests.device_agent.conftest import AgentThread
from tests.device_agent.desktop_helpers import record_device
from tests.fakes import EXPECTED
from tests.ui.fixtures_s2 import add_fake_export, seed_runs, write_image
from trainers.protocol import SpecError
from trainers.registry import default_registry


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("studio-ops") / "shapes"
    write_sample_dataset(out, seed=4, count=8, size=64)
    return out


@pytest.fixture
def ws(tmp_path: Path, source: Path) -> Iterator[Workspace]:
    workspace = Workspace.open(tmp_path / "ws")
    datasets.import_dataset(workspace, source, "shapes")
    yield workspace
    workspace.close()


def test_trainer_schema_models_and_option_checks() -> None:
    keys = [f["key"] for f in studio_ops.trainer_frameworks()]
    assert keys[:2] == ["ultralytics", "timm"]
    assert studio_ops.trainer_schema("ultralytics") == (
        default_registry().get("ultralytics").schema().to_json()
    )
    with pytest.raises(SpecError, match="unknown framework 'nope'"):
        studio_ops.trainer_schema("nope")
    detect = studio_ops.trainable_models("ultralytics", "detect")
    assert "yolo11n.yaml" in detect and detect == sorted(detect)
    assert not set(detect) & set(studio_ops.trainable_models("ultralytics", "classify"))
    assert studio_ops.check_train_option("ultralytics", "imgsz", "64") == 64
    assert studio_ops.check_train_option("ultralytics", "cos_lr", "yes") is True
    with pytest.raises(SpecError, match="option 'imgsz' must be between 32 and 4096, got 16"):
        studio_ops.check_train_option("ultralytics", "imgsz", "16")
    with pytest.raises(SpecError, match="has no option 'colour'"):
        studio_ops.check_train_option("ultralytics", "colour", 1)
    resolved = studio_ops.check_train_options("ultralytics", "easy", {"epochs": "3"})
    assert resolved["epochs"] == 3 and resolved["imgsz"] == 320  # the preset's imgsz


def test_dataset_choices_and_run_curves(ws: Workspace) -> None:
    assert studio_ops.dataset_choices(ws) == [
        {"name": "shapes", "task": "detect", "versions": ["auto", "v1"]}
    ]
    seed_runs(ws)
    curves = studio_ops.run_curves(ws, "run-beta")
    assert curves["status"] == "completed" and curves["job_id"] is None
    assert curves["series"]["metrics/mAP50-95(B)"] == [(1.0, 0.05), (2.0, 0.15), (3.0, 0.35)]
    assert curves["series"]["train/box_loss"][-1] == (3.0, 1.1)
    with pytest.raises(NotFoundError, match="no training run 'run-x'"):
        studio_ops.run_curves(ws, "run-x")


def test_export_capabilities_say_what_runs_here() -> None:
    caps = {c["key"]: c for c in studio_ops.export_capabilities()}
    assert caps["onnx"]["available"] and caps["onnx"]["missing"] == []
    assert caps["onnx"]["precisions"] == ["fp32"]
    for cap in caps.values():
        assert cap["available"] == (not cap["missing"])


def test_local_inference_and_annotations(ws: Workspace, tmp_path: Path) -> None:
    seed_runs(ws)
    add_fake_export(ws, "exp-ops1", "run-alpha")
    image = write_image(tmp_path / "probe.png")
    result = studio_ops.infer_locally(ws, "exp-ops1", image)
    assert result["where"] == "local" and result["model"] == "shapes"
    assert [d["class_name"] for d in result["detections"]] == [e["class_name"] for e in EXPECTED]
    boxes = studio_ops.to_annotations(result["detections"])
    assert boxes[0] == {
        "xyxy": pytest.approx(EXPECTED[0]["xyxy"], abs=0.5),
        "class_id": 0,
        "class_name": "circle",
        "score": pytest.approx(0.9, abs=1e-3),
    }
    # prediction-set records use "class" and "score"
    assert studio_ops.to_annotations(
        [{"class": "square", "class_id": 1, "score": 0.5, "xyxy": [1, 2, 3, 4]}, {"xyxy": []}]
    ) == [{"xyxy": [1.0, 2.0, 3.0, 4.0], "class_id": 1, "class_name": "square", "score": 0.5}]
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(studio_ops.StudioOpError, match="notes.txt is not an image"):
        studio_ops.infer_locally(ws, "exp-ops1", text)
    with pytest.raises(NotFoundError, match="cannot read image"):
        studio_ops.infer_locally(ws, "exp-ops1", tmp_path / "gone.png")
    with pytest.raises(NotFoundError, match="no export 'exp-none'"):
        studio_ops.infer_locally(ws, "exp-none", image)


def test_sample_predictions_of_a_run(ws: Workspace) -> None:
    seed_runs(ws)
    assert studio_ops.prediction_samples(ws, "run-alpha") == []
    add_fake_export(ws, "exp-ops2", "run-alpha")
    samples = studio_ops.predict_samples(ws, "run-alpha", limit=2)
    assert 0 < len(samples) <= 2
    for sample in samples:
        assert Path(sample["image"]).is_file()
        assert sample["annotations"] and all(len(a["xyxy"]) == 4 for a in sample["annotations"])
    assert studio_ops.prediction_samples(ws, "run-alpha", limit=2) == samples


def test_infer_on_a_paired_device(ws: Workspace, tmp_path: Path) -> None:
    seed_runs(ws)
    add_fake_export(ws, "exp-ops3", "run-alpha")
    agent = AgentThread(tmp_path / "agent").start()
    try:
        device_id = record_device(ws, agent)
        agent.service.pairing.add(desktop_key(ws).public_raw, "studio ops test")
        with ws.session() as s:
            s.get(Device, device_id).info = {PIN_KEY: b64(agent.service.identity.key.public_raw)}
        deploy(ws, "exp-ops3", device_id)
        assert studio_ops.installed_models(ws, device_id) == ["shapes"]
        image = write_image(tmp_path / "probe.png")
        result = studio_ops.infer_on_device(ws, device_id, image)
        assert result["where"] == "device" and result["model"] == "shapes"
        assert len(result["detections"]) == len(EXPECTED)
        named = studio_ops.infer_on_device(ws, device_id, image, model="shapes", conf=0.85)
        assert [d["class_name"] for d in named["detections"]] == ["circle"]
    finally:
        agent.stop()


def test_ensure_worker_leaves_led_jobs_alone(ws: Workspace) -> None:
    assert not studio_ops.jobs_led(ws)
    with JobManager(ws, resources=["cpu"]) as manager:
        assert manager.lead()
        assert studio_ops.jobs_led(ws)
        assert studio_ops.ensure_worker(ws) is None
    assert not studio_ops.jobs_led(ws)
