"""Option resolution per trainer: options one trainer has never leak into another's spec."""

from __future__ import annotations

from desktop_app.core.training import SMALL_DATASET_IMAGES, TrainOptions, resolve_options
from trainers.registry import default_registry as trainer_registry


def test_small_dataset_sets_nbs_for_ultralytics_only() -> None:
    yolo = resolve_options(TrainOptions(dataset="d", batch=8), SMALL_DATASET_IMAGES - 1)
    assert yolo["nbs"] == 8

    timm_model = sorted(trainer_registry().get("timm").architectures())[0]
    timm = resolve_options(
        TrainOptions(dataset="d", framework="timm", model=timm_model, batch=8),
        SMALL_DATASET_IMAGES - 1,
        task="classify",
    )
    assert "nbs" not in timm
    assert timm["batch"] == 8


def test_large_dataset_keeps_the_nominal_batch() -> None:
    options = resolve_options(TrainOptions(dataset="d", batch=8), SMALL_DATASET_IMAGES)
    assert options["nbs"] == 64


def test_trainer_children_use_the_configured_python(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from desktop_app.core.training import trainer_command

    python = tmp_path / "python3"
    python.write_text("")
    monkeypatch.setenv("OUTPOST_TRAINER_PYTHON", str(python))
    cmd = trainer_command("ultralytics", tmp_path / "spec.json")
    assert cmd[0] == str(python)
    assert cmd[1:3] == ["-m", "trainers.ultralytics"]
