"""Trainer schemas, presets and the registry: what `outpost train` validates before starting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.protocol import SpecError
from trainers.registry import default_registry
from trainers.schema import ConfigSchema, OptionField

SCHEMA = default_registry().get("ultralytics").schema()


def test_defaults_preset_and_values_in_order() -> None:
    resolved = SCHEMA.resolve("easy", {"mosaic": "0.8", "lr0": 0.005, "epochs": 7})
    assert resolved["mosaic"] == 0.8  # --set beats the preset's 0.5
    assert resolved["lr0"] == 0.005
    assert resolved["epochs"] == 7
    assert resolved["imgsz"] == 320  # from the preset
    assert resolved["weight_decay"] == 0.0005  # schema default


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr0": 5}, "option 'lr0' must be between"),
        ({"epochs": 0}, "option 'epochs' must be between 1 and 10000"),
        ({"epochs": 2.5}, "option 'epochs' must be a int"),
        ({"cos_lr": "maybe"}, "option 'cos_lr' must be a bool"),
        ({"optimizer": "Adagrad"}, "option 'optimizer' must be one of"),
        ({"bogus": 1}, "has no option 'bogus'"),
    ],
)
def test_bad_values_name_the_field_and_range(values: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        SCHEMA.resolve(None, values)


def test_unknown_preset() -> None:
    with pytest.raises(SpecError, match="unknown preset 'hard'"):
        SCHEMA.resolve("hard")


def test_every_preset_is_valid() -> None:
    for preset in SCHEMA.presets:
        SCHEMA.resolve(preset)


def test_schema_json_for_the_gui() -> None:
    doc = json.loads(json.dumps(SCHEMA.to_json()))
    assert set(doc["presets"]) == {"easy", "medium", "advanced"}
    fields = {f["name"]: f for f in doc["fields"]}
    assert fields["lr0"]["type"] == "float" and fields["lr0"]["group"] == "optimizer"
    assert fields["optimizer"]["choices"][0] == "auto"
    assert fields["momentum"]["advanced"] is True
    assert {f["group"] for f in doc["fields"]} <= set(doc["groups"])


def test_bool_and_select_coercion() -> None:
    schema = ConfigSchema(
        "t",
        (
            OptionField("flag", "bool", False, "d"),
            OptionField("mode", "select", "a", "d", choices=("a", "b")),
        ),
    )
    assert schema.resolve(None, {"flag": "yes", "mode": "b"}) == {"flag": True, "mode": "b"}


def test_architectures_come_from_the_installed_package() -> None:
    plugin = default_registry().get("ultralytics")
    archs = plugin.architectures()
    for name in ("yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml", "yolo11x.yaml"):
        assert archs[name] == "detect"
    assert archs["yolo11n-seg.yaml"] == "segment"
    assert archs["yolov8n-cls.yaml"] == "classify"
    plugin.check_model("yolo11n.yaml", "detect")
    with pytest.raises(SpecError, match="unknown model 'yolo99n.yaml'"):
        plugin.check_model("yolo99n.yaml", "detect")
    with pytest.raises(SpecError, match="is a pose model"):
        plugin.check_model("yolo11n-pose.yaml", "detect")


def test_unknown_framework() -> None:
    with pytest.raises(SpecError, match="unknown framework 'keras'"):
        default_registry().get("keras")


def test_bad_train_options_stop_before_anything_is_written(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "desktop_app.cli"]
    ws = tmp_path / "ws"
    subprocess.run(
        [*cli, "dataset", "sample", "--out", str(tmp_path / "s"), "--count", "8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*cli, "dataset", "import", str(tmp_path / "s"), "--name", "s", "--workspace", str(ws)],
        check=True,
        capture_output=True,
    )
    for extra in (
        ["--model", "yolo99n.yaml"],
        ["--set", "lr0=5"],
        ["--preset", "hard"],
        ["--set", "nope"],
    ):
        proc = subprocess.run(
            [*cli, "train", "--dataset", "s", "--workspace", str(ws), *extra],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1, extra
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())
    runs = subprocess.run(
        [*cli, "runs", "list", "--workspace", str(ws), "--json"], capture_output=True, text=True
    )
    assert json.loads(runs.stdout) == []
