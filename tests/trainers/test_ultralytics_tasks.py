"""The Ultralytics trainer child for detect, segment, classify and pose: events, metric keys,
the end-of-run validation event, and resuming an interrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from trainers.protocol import EXIT_FAILURE, EXIT_OK, VALIDATION_KEYS, parse_event

NAMES = ("square", "disc")
MODELS = {
    "detect": "yolo11n.yaml",
    "segment": "yolo11n-seg.yaml",
    "classify": "yolo11n-cls.yaml",
    "pose": "yolo11n-pose.yaml",
}
TASK_KEYS = {
    "detect": ("metrics/mAP50(B)", "train/box_loss"),
    "segment": ("metrics/mAP50(M)", "metrics/mAP50-95(M)", "train/seg_loss"),
    "classify": ("metrics/accuracy_top1", "metrics/accuracy_top5", "train/loss"),
    "pose": ("metrics/mAP50(P)", "metrics/mAP50-95(P)", "train/pose_loss"),
}
PRIMARY = {
    "detect": "metrics/mAP50-95(B)",
    "segment": "metrics/mAP50-95(M)",
    "classify": "metrics/accuracy_top1",
    "pose": "metrics/mAP50-95(P)",
}


def _shape_image(path: Path, cls: int, box: tuple[int, int, int, int], size: int) -> None:
    img = Image.new("RGB", (size, size), (30, 30, 30))
    draw = ImageDraw.Draw(img)
    if cls == 0:
        draw.rectangle(box, fill=(220, 120, 40))
    else:
        draw.ellipse(box, fill=(40, 200, 220))
    img.save(path)


def write_dataset(root: Path, task: str, n: int = 8, size: int = 64) -> Path:
    """A tiny Ultralytics dataset of the task; returns what ``spec.data`` takes."""
    rng = np.random.default_rng(0)
    if task == "classify":
        for split in ("train", "val"):
            for cls, name in enumerate(NAMES):
                folder = root / split / name
                folder.mkdir(parents=True)
                for i in range(n // 2):
                    x0 = int(rng.integers(4, 20))
                    _shape_image(folder / f"{name}{i}.jpg", cls, (x0, x0, x0 + 32, x0 + 32), size)
        return root
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cls = i % 2
            x0, y0, w = (
                int(rng.integers(4, 24)),
                int(rng.integers(4, 24)),
                int(rng.integers(20, 36)),
            )
            x1, y1 = min(x0 + w, size - 2), min(y0 + w, size - 2)
            _shape_image(root / "images" / split / f"im{i}.jpg", cls, (x0, y0, x1, y1), size)
            cx, cy = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size
            bw, bh = (x1 - x0) / size, (y1 - y0) / size
            if task == "segment":
                corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
                coords = " ".join(f"{x / size:.5f} {y / size:.5f}" for x, y in corners)
                line = f"{cls} {coords}"
            elif task == "pose":
                points = [(x0, y0), (x1, y1), ((x0 + x1) / 2, (y0 + y1) / 2)]
                kpts = " ".join(f"{x / size:.5f} {y / size:.5f} 2" for x, y in points)
                line = f"{cls} {cx:.5f} {cy:.5f} {bw:.5f} {bh:.5f} {kpts}"
            else:
                line = f"{cls} {cx:.5f} {cy:.5f} {bw:.5f} {bh:.5f}"
            (root / "labels" / split / f"im{i}.txt").write_text(line + "\n")
    doc = f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: square\n  1: disc\n"
    if task == "pose":
        doc += "kpt_shape: [3, 3]\nflip_idx: [1, 0, 2]\n"
    (root / "data.yaml").write_text(doc)
    return root / "data.yaml"


def run_child(
    package: str, spec: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """Run ``python -m <package> train --spec`` and return its exit code and events."""
    path = tmp_path / f"spec{len(list(tmp_path.glob('spec*.json')))}.json"
    path.write_text(json.dumps(spec))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("OUTPOST_")}
    child_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", package, "train", "--spec", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env,
    )
    events = [parse_event(line) for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode not in (EXIT_OK, EXIT_FAILURE):
        raise AssertionError(proc.stderr[-3000:])
    return proc.returncode, events


def base_spec(tmp_path: Path, task: str, data: Path, **fields: Any) -> dict[str, Any]:
    return {
        "task": task,
        "model": MODELS[task],
        "data": str(data),
        "epochs": 1,
        "imgsz": 32,
        "batch": 4,
        "device": "cpu",
        "workers": 0,
        "run_dir": str(tmp_path / "run"),
        "config_dir": str(tmp_path / "config"),
        **fields,
    }


def _by_name(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


@pytest.mark.parametrize("task", ["detect", "segment", "classify", "pose"])
def test_each_task_trains_and_reports_validation(tmp_path: Path, task: str) -> None:
    data = write_dataset(tmp_path / "data", task)
    code, events = run_child("trainers.ultralytics", base_spec(tmp_path, task, data), tmp_path)
    assert code == EXIT_OK, events[-1]
    names = [e["event"] for e in events]
    assert names == ["start", "train_start", "epoch_end", "validation", "end"]
    (epoch,) = _by_name(events, "epoch_end")
    for key in TASK_KEYS[task]:
        assert key in epoch["metrics"], (key, sorted(epoch["metrics"]))
    assert epoch["last"] and Path(epoch["last"]).name == "last.pt" and Path(epoch["last"]).exists()

    (validation,) = _by_name(events, "validation")
    assert set(VALIDATION_KEYS) <= set(validation)
    assert validation["primary_metric"]["key"] == PRIMARY[task]
    end = events[-1]
    assert validation["primary_metric"]["value"] == end["metrics"][PRIMARY[task]]
    classes = [row["class"] for row in validation["per_class"]]
    assert sorted(classes) == sorted(NAMES)
    matrix = validation["confusion_matrix"]["matrix"]
    if task == "classify":
        assert validation["confusion_matrix"]["names"] == sorted(NAMES)
        assert sum(map(sum, matrix)) == 8  # every val image counted once
        assert all({"precision", "recall", "images"} <= set(row) for row in validation["per_class"])
        assert [row["images"] for row in validation["per_class"]] == [4, 4]
    else:
        assert validation["confusion_matrix"]["names"] == [*NAMES, "background"]
        assert len(matrix) == len(NAMES) + 1
        assert [row["instances"] for row in validation["per_class"]] == [4, 4]
        curve = validation["curves"]["pr"]
        assert len(curve["recall"]) == 101
        assert all(len(points) == 101 for points in curve["precision"].values())
        run_dir = Path(end["best"]).parent.parent
        assert json.loads((run_dir / "confusion_matrix.json").read_text())["matrix"] == matrix
    assert Path(end["best"]).exists()


def test_model_of_another_task_is_refused_before_training(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", "detect")
    spec = base_spec(tmp_path, "detect", data, model="yolo11n-seg.yaml")
    code, events = run_child("trainers.ultralytics", spec, tmp_path)
    assert code == EXIT_FAILURE
    assert [e["event"] for e in events] == ["error"]
    assert "is a segment model but the dataset is detect" in events[0]["message"]


@pytest.mark.slow
def test_interrupted_run_resumes_in_the_same_folder(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", "detect")
    spec = base_spec(tmp_path, "detect", data, epochs=3)
    code, events = run_child(
        "trainers.ultralytics", spec, tmp_path, env={"OUTPOST_TEST_STOP_AFTER_EPOCH": "1"}
    )
    assert code == EXIT_FAILURE
    assert [e["epoch"] for e in _by_name(events, "epoch_end")] == [1]
    assert "OUTPOST_TEST_STOP_AFTER_EPOCH" in events[-1]["message"]
    last = Path(_by_name(events, "epoch_end")[0]["last"])

    resumed = {**spec, "resume": str(last), "plots": True}
    code, events = run_child("trainers.ultralytics", resumed, tmp_path)
    assert code == EXIT_OK, events[-1]
    assert _by_name(events, "train_start")[0]["start_epoch"] == 2
    assert [e["epoch"] for e in _by_name(events, "epoch_end")] == [2, 3]
    (validation,) = _by_name(events, "validation")
    plots = [Path(p).name for p in validation["plots"]]  # plots on: the run's PNGs are named
    assert "confusion_matrix.png" in plots and "results.png" in plots
    assert any(Path(p).name.startswith("val_batch") for p in validation["samples"])
    end = events[-1]
    assert Path(end["best"]).exists() and Path(end["best"]).parent == last.parent

    # The run is finished now: its checkpoint has nothing left to resume.
    code, events = run_child("trainers.ultralytics", {**spec, "resume": str(last)}, tmp_path)
    assert code == EXIT_FAILURE and "finished run" in events[-1]["message"]
