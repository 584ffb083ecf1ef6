"""User weights are loaded with weights_only=True and an allow-list; anything else is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.trainers.test_ultralytics_tasks import base_spec, run_child, write_dataset
from trainers.protocol import EXIT_FAILURE, EXIT_OK, SpecError
from trainers.registry import ULTRALYTICS, default_registry
from trainers.ultralytics.weights import WeightsError, allowed_globals, check_weights


class _Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved the way Ultralytics saves one: the model object pickled."""
    from ultralytics.nn.tasks import DetectionModel

    path = tmp_path_factory.mktemp("weights") / "yolo11n-outpost.pt"
    model = DetectionModel("yolo11n.yaml", nc=2, verbose=False)
    torch.save({"model": model.half(), "epoch": -1, "train_args": {"imgsz": 32}}, path)
    return path


def test_genuine_checkpoint_loads(genuine: Path) -> None:
    from ultralytics.nn.tasks import DetectionModel

    ckpt = check_weights(genuine, "detect")
    assert isinstance(ckpt["model"], DetectionModel)
    assert ckpt["train_args"] == {"imgsz": 32}


def test_allow_list_is_computed_from_the_model_modules() -> None:
    allowed = allowed_globals()
    assert "ultralytics.nn.tasks.SegmentationModel" in allowed
    assert "ultralytics.nn.modules.head.Pose" in allowed
    assert "torch.nn.modules.conv.Conv2d" in allowed
    assert not any(name.startswith(("os.", "posix.", "subprocess.")) for name in allowed)
    assert "builtins.eval" not in allowed and "builtins.exec" not in allowed


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "X"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    with pytest.raises(
        WeightsError,
        match=r"contains code outside the model classes Outpost allows \(posix\.system\)",
    ):
        check_weights(evil)
    assert not marker.exists()


def test_pickled_eval_is_refused(tmp_path: Path) -> None:
    class Eval:
        def __reduce__(self):  # noqa: ANN204 - pickle protocol
            return (eval, ("1 + 1",))

    path = tmp_path / "eval.pt"
    torch.save({"model": Eval()}, path)
    with pytest.raises(
        WeightsError, match=r"\(builtins\.eval\); use weights exported by Ultralytics or Outpost"
    ):
        check_weights(path)


def test_truncated_and_foreign_files_are_refused(tmp_path: Path, genuine: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(genuine.read_bytes()[: genuine.stat().st_size // 2])
    with pytest.raises(WeightsError, match="is not a readable PyTorch checkpoint"):
        check_weights(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="is not a readable PyTorch checkpoint"):
        check_weights(text)


def test_weights_of_another_task_are_refused(genuine: Path) -> None:
    with pytest.raises(WeightsError, match="is a detect model but the dataset is segment"):
        check_weights(genuine, "segment")


def test_child_refuses_malicious_weights_before_training(tmp_path: Path) -> None:
    marker = tmp_path / "X"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    data = write_dataset(tmp_path / "data", "detect")
    code, events = run_child(
        "trainers.ultralytics", base_spec(tmp_path, "detect", data, model=str(evil)), tmp_path
    )
    assert code == EXIT_FAILURE
    assert [e["event"] for e in events] == ["error"]  # nothing started
    assert events[0]["message"] == (
        f"{evil} contains code outside the model classes Outpost allows (posix.system); "
        "use weights exported by Ultralytics or Outpost"
    )
    assert not marker.exists()


def test_registry_trains_every_task_and_refuses_other_task_models() -> None:
    assert ULTRALYTICS.tasks == ("detect", "segment", "classify", "pose")
    assert {p.key for p in default_registry().plugins()} >= {"ultralytics", "timm"}
    ULTRALYTICS.check_model("yolo11n-pose.yaml", "pose")
    with pytest.raises(
        SpecError, match="'yolo11n-cls.yaml' is a classify model but the dataset is pose"
    ):
        ULTRALYTICS.check_model("yolo11n-cls.yaml", "pose")


def test_child_trains_from_a_genuine_weights_file(tmp_path: Path, genuine: Path) -> None:
    data = write_dataset(tmp_path / "data", "detect")
    spec = base_spec(tmp_path, "detect", data, model=str(genuine))
    code, events = run_child("trainers.ultralytics", spec, tmp_path)
    assert code == EXIT_OK, events[-1]
    assert [e["event"] for e in events] == [
        "start",
        "train_start",
        "epoch_end",
        "validation",
        "end",
    ]
    best = Path(events[-1]["best"])
    assert check_weights(best, "detect")["model"] is not None  # its own output passes the check
