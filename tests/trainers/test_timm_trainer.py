"""The timm classification trainer: a real tiny training through the child, its checkpoints,
the validation event, resume, the schema, and ``outpost models list``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from tests.trainers.test_ultralytics_tasks import NAMES, run_child, write_dataset
from trainers.protocol import EXIT_FAILURE, EXIT_OK, VALIDATION_KEYS, SpecError
from trainers.registry import default_registry
from trainers.timm.schema import SCHEMA
from trainers.timm.train import CHECKPOINT_KEYS, class_names_of


def _spec(tmp_path: Path, data: Path, **fields: object) -> dict[str, object]:
    return {
        "framework": "timm",
        "task": "classify",
        "model": "resnet10t",
        "data": str(data),
        "epochs": 2,
        "imgsz": 32,
        "batch": 4,
        "device": "cpu",
        "workers": 0,
        "run_dir": str(tmp_path / "run"),
        "config_dir": str(tmp_path / "config"),
        **fields,
    }


def test_two_epochs_report_checkpoint_and_validation(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", "classify", n=6)
    code, events = run_child("trainers.timm", _spec(tmp_path, data), tmp_path)
    assert code == EXIT_OK, events[-1]
    assert [e["event"] for e in events] == [
        "start",
        "train_start",
        "epoch_end",
        "epoch_end",
        "validation",
        "end",
    ]
    epochs = [e for e in events if e["event"] == "epoch_end"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert set(e["metrics"]) == {
            "train/loss",
            "val/loss",
            "metrics/accuracy_top1",
            "metrics/accuracy_top5",
            "lr/pg0",
        }
        assert Path(e["last"]).name == "last.pt"

    last = torch.load(epochs[-1]["last"], map_location="cpu", weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(last)
    assert (last["arch"], last["num_classes"], last["imgsz"], last["epoch"]) == (
        "resnet10t",
        2,
        32,
        2,
    )
    assert last["class_names"] == sorted(NAMES) and last["optimizer"]["state"]
    end = events[-1]
    best = torch.load(end["best"], map_location="cpu", weights_only=True)
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    model.load_state_dict(best["state_dict"])  # the weights fit the architecture

    validation = events[-2]
    assert set(VALIDATION_KEYS) <= set(validation)
    assert validation["primary_metric"] == {
        "key": "metrics/accuracy_top1",
        "value": end["metrics"]["metrics/accuracy_top1"],
    }
    assert validation["confusion_matrix"]["names"] == sorted(NAMES)
    assert sum(map(sum, validation["confusion_matrix"]["matrix"])) == 6
    assert [row["images"] for row in validation["per_class"]] == [3, 3]
    assert [Path(p).name for p in validation["plots"]] == ["confusion_matrix.png"]
    assert validation["top5"] == 1.0  # two classes: the true one is always in the top 5


@pytest.mark.slow
def test_interrupted_run_resumes(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", "classify", n=6)
    spec = _spec(tmp_path, data, epochs=3)
    code, events = run_child(
        "trainers.timm", spec, tmp_path, env={"OUTPOST_TEST_STOP_AFTER_EPOCH": "1"}
    )
    assert code == EXIT_FAILURE and "OUTPOST_TEST_STOP_AFTER_EPOCH" in events[-1]["message"]
    last = next(e for e in events if e["event"] == "epoch_end")["last"]
    code, events = run_child("trainers.timm", {**spec, "resume": last}, tmp_path)
    assert code == EXIT_OK, events[-1]
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [2, 3]
    assert any(e["event"] == "validation" for e in events)
    assert Path(events[-1]["best"]).parent == Path(last).parent
    csv_rows = (Path(last).parent.parent / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 4  # header + epochs 1..3


def test_unknown_architecture_and_wrong_data_are_reported(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", "classify", n=2)
    code, events = run_child("trainers.timm", _spec(tmp_path, data, model="resnet_nope"), tmp_path)
    assert code == EXIT_FAILURE
    assert "unknown timm model 'resnet_nope'" in events[-1]["message"]
    code, events = run_child("trainers.timm", _spec(tmp_path, tmp_path / "nowhere"), tmp_path)
    assert code == EXIT_FAILURE and "has no train/ folder" in events[-1]["message"]


def test_class_order_follows_data_yaml(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", "classify", n=2)
    assert class_names_of(data) == ["disc", "square"]
    (data / "data.yaml").write_text("train: train\nval: val\nnames:\n  0: square\n  1: disc\n")
    assert class_names_of(data) == ["square", "disc"]


def test_schema_groups_presets_and_messages() -> None:
    groups = {f.group for f in SCHEMA.fields}
    assert {"optimizer", "scheduler", "augmentation", "optimization", "validation"} <= groups
    assert any(f.advanced for f in SCHEMA.fields)
    assert set(SCHEMA.presets) == {"easy", "medium", "advanced"}
    assert SCHEMA.resolve("easy")["epochs"] == 20
    with pytest.raises(SpecError, match="option 'optimizer' must be one of AdamW, SGD, got 'Lion'"):
        SCHEMA.resolve(values={"optimizer": "Lion"})
    with pytest.raises(SpecError, match="option 'label_smoothing' must be between 0 and 0.5"):
        SCHEMA.resolve(values={"label_smoothing": 0.9})
    with pytest.raises(SpecError, match="timm has no option 'mosaic'"):
        SCHEMA.field("mosaic")


def test_registry_lists_timm_architectures() -> None:
    timm_plugin = default_registry().get("timm")
    archs = timm_plugin.architectures()
    assert len(archs) > 1000 and set(archs.values()) == {"classify"}
    timm_plugin.check_model("resnet10t", "classify")
    with pytest.raises(SpecError, match="is a classify model but the dataset is detect"):
        timm_plugin.check_model("resnet10t", "detect")


def test_models_list_counts_and_search() -> None:
    from desktop_app.cli import cmd_models_list

    def run(**kw: object) -> object:
        args = {"framework": None, "task": None, "search": None, "json": True, **kw}
        return cmd_models_list(argparse.Namespace(**args))

    out = run()
    counts = {f["framework"]: f["architectures"] for f in out["frameworks"]}
    assert counts["timm"] > 1000 and counts["ultralytics"] > 0
    assert {r["framework"] for r in out["models"]} == {"ultralytics"}  # timm only on request
    found = run(search="resnet10t")["models"]
    assert {
        "framework": "timm",
        "task": "classify",
        "model": "resnet10t",
        "trainable": True,
    } in found
    pose = run(framework="ultralytics", task="pose")["models"]
    assert pose and {r["task"] for r in pose} == {"pose"}
    text = run(json=False)
    assert "timm architectures not shown" in text and "--search TEXT" in text
