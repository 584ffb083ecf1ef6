"""Classification end to end with real tiny models, classes deliberately not alphabetical.

The dataset lists its classes as zebra, apple, mango; Ultralytics orders a classification
model's classes by sorted folder name (apple, mango, zebra). Training, the export's
manifest, predictions and evaluation must agree on one mapping (by name); the evaluation's
top-1 must equal an independent numpy computation from the package's raw probabilities
and Ultralytics' own ``model.val()`` on the same split. Images are PNGs of exactly the
training size, so neither side resizes and both see the same pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from desktop_app.core import datasets
from desktop_app.core.dataset_export import load_version
from desktop_app.core.evaluation import evaluate, resolve_export
from desktop_app.core.exports import export_run
from desktop_app.core.models import TrainingRun
from desktop_app.core.training import TrainOptions, run_training
from desktop_app.core.workspace import Workspace
from runtimes.predictor import Predictor

ORDER = ["zebra", "apple", "mango"]
COLOURS = {"zebra": (230, 230, 230), "apple": (220, 40, 40), "mango": (240, 180, 30)}
IMGSZ = 32


def _image(path: Path, name: str, i: int) -> None:
    rng = np.random.default_rng(hash((name, i)) % 2**32)
    base = rng.integers(0, 60, (IMGSZ, IMGSZ, 3)).astype(np.uint8)
    img = Image.fromarray(base)
    x0 = int(rng.integers(2, 12))
    draw = ImageDraw.Draw(img)
    if name == "zebra":
        for x in range(x0, x0 + 18, 4):
            draw.rectangle((x, 4, x + 1, 28), fill=COLOURS[name])
    elif name == "apple":
        draw.ellipse((x0, x0, x0 + 18, x0 + 18), fill=COLOURS[name])
    else:
        draw.polygon([(x0, 28), (x0 + 9, 4), (x0 + 18, 28)], fill=COLOURS[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.fixture
def fruit(ws: Workspace, tmp_path: Path) -> Workspace:
    root = tmp_path / "fruit"
    for split, n in (("train", 6), ("val", 4)):
        for name in ORDER:
            for i in range(n):
                _image(
                    root / split / name / f"{split}_{name}{i}.png", name, i + 100 * (split == "val")
                )
    (root / "data.yaml").write_text(yaml.safe_dump({"names": ORDER}))
    datasets.import_dataset(ws, root, "fruit", "yolo")
    return ws


def _train(ws: Workspace, framework: str, model: str) -> dict[str, Any]:
    return run_training(
        ws,
        TrainOptions(
            dataset="fruit",
            model=model,
            framework=framework,
            epochs=2,
            imgsz=IMGSZ,
            batch=6,
            device="cpu",
            workers=0,
            seed=0,
            extra={"plots": False} if framework == "ultralytics" else {},
        ),
    )


def _val_images(ws: Workspace) -> tuple[list[bytes], list[int]]:
    data = load_version(ws, "fruit", "v1")
    items = [it for it in data.items if it.split == "val"]
    return (
        [ws.blobs.path(it.sha256).read_bytes() for it in items],
        [int(it.annotations[0].cls) for it in items],
    )


def _ultralytics_val(checkpoint: Path, data: Path, config_dir: Path) -> dict[str, Any]:
    """``model.val()`` in a child with the offline recipe and safe loading: top-1, names."""
    code = f"""
import json, os
from pathlib import Path
from runtimes.offline import apply_offline_env, quiet_ultralytics_settings
apply_offline_env(Path({str(config_dir)!r}))
from ultralytics import YOLO
quiet_ultralytics_settings()
model = YOLO({str(checkpoint)!r})
m = model.val(data={str(data)!r}, split="val", imgsz={IMGSZ}, batch=4, device="cpu",
              workers=0, plots=False, verbose=False)
print("RESULT " + json.dumps({{"top1": float(m.top1), "top5": float(m.top5),
      "names": [model.names[i] for i in sorted(model.names)]}}))
"""
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1"}
    out = subprocess.run(  # noqa: S603 - this interpreter
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return dict(json.loads(line.removeprefix("RESULT ")))


@pytest.mark.slow
def test_ultralytics_classify_run_keeps_one_class_mapping(fruit: Workspace) -> None:
    summary = _train(fruit, "ultralytics", "yolov8n-cls.yaml")
    run_id = summary["id"]
    assert summary["status"] == "completed"
    with fruit.session() as s:
        run = s.get(TrainingRun, run_id)
        assert run is not None
        validation = dict(run.validation)
        run_dir = fruit.resolve(run.run_dir)
        best = fruit.resolve(run.best_checkpoint)
    # the materialized copy keeps the dataset's order in data.yaml; folders hold each class
    data_dir = run_dir / "data"
    assert list(yaml.safe_load((data_dir / "data.yaml").read_text())["names"].values()) == ORDER
    for name in ORDER:
        assert len(list((data_dir / "val" / name).glob("*.png"))) == 4
    # the run's validation names its classes; the export's manifest too (sorted by Ultralytics)
    assert [r["class"] for r in validation["per_class"]] == sorted(ORDER)
    (export,) = export_run(fruit, run_id, ["onnx"])
    assert export["status"] == "completed", export.get("error")
    ev = evaluate(fruit, run_id, "fruit", "v1", "val")
    assert ev["details"]["model_classes"] == sorted(ORDER)
    assert ev["details"]["class_mapping"] == {n: n for n in ORDER}
    assert [r["class"] for r in ev["per_class"]] == ORDER
    assert sum(r["images"] for r in ev["per_class"]) == ev["metrics"]["images"] == 12

    # independent: the package's raw probabilities, mapped by name, top-1/top-5 with numpy
    images, truth = _val_images(fruit)
    _, _, package = resolve_export(fruit, run_id)
    predictor = Predictor.from_path(package)
    try:
        names = list(predictor.class_names)
        probs = np.stack([predictor.predict_bytes(b)[0].probs for b in images])
    finally:
        predictor.close()
    truth_model = np.array([names.index(ORDER[t]) for t in truth])
    ranked = np.argsort(-probs, axis=1, kind="stable")
    assert ev["metrics"]["top1"] == pytest.approx(float((ranked[:, 0] == truth_model).mean()))
    assert ev["metrics"]["top5"] == pytest.approx(
        float((ranked[:, :5] == truth_model[:, None]).any(axis=1).mean())
    )
    matrix = np.zeros((3, 3), int)
    for p, t in zip(ranked[:, 0], truth, strict=True):
        matrix[ORDER.index(names[p]), t] += 1
    assert ev["details"]["confusion"]["matrix"] == matrix.tolist()

    # Ultralytics' own validation of the checkpoint on the same split
    theirs = _ultralytics_val(best, data_dir, Path(fruit.root) / "yolo_config")
    assert theirs["names"] == sorted(ORDER)
    assert abs(theirs["top1"] - ev["metrics"]["top1"]) <= 0.01, (theirs, ev["metrics"])


def _timm_run(ws: Workspace, tmp_path: Path) -> str:
    """A timm run trained by its child on the dataset's copy, recorded like the runner does.

    (The trainer runs directly: ``run_training`` passes Ultralytics-only options to timm.)
    """
    data = datasets.materialize_yolo(ws, "fruit", 1, tmp_path / "timm-data")
    spec = {
        "framework": "timm",
        "task": "classify",
        "model": "resnet10t",
        "data": str(data.parent),
        "epochs": 2,
        "imgsz": IMGSZ,
        "batch": 6,
        "device": "cpu",
        "workers": 0,
        "run_dir": str(tmp_path / "timm-run"),
        "config_dir": str(tmp_path / "cfg"),
    }
    spec_path = tmp_path / "timm.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(  # noqa: S603 - the trainer entry point
        [sys.executable, "-m", "trainers.timm", "train", "--spec", str(spec_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0, proc.stderr[-2000:]
    end = events[-1]
    validation = next(e for e in events if e["event"] == "validation")
    with ws.session() as s:
        s.add(
            TrainingRun(
                id="run-timm",
                project_id=ws.default_project_id(),
                dataset_version_id=datasets.get_version(ws, "fruit", "v1").id,
                framework="timm",
                task="classify",
                model="resnet10t",
                status="completed",
                run_dir=str(tmp_path / "timm-run"),
                best_checkpoint=str(end["best"]),
                final_metrics=end["metrics"],
                validation={k: v for k, v in validation.items() if k not in ("v", "event")},
            )
        )
    return "run-timm"


@pytest.mark.slow
def test_timm_classify_run_is_evaluated_from_its_checkpoint(
    fruit: Workspace, tmp_path: Path
) -> None:
    run_id = _timm_run(fruit, tmp_path)
    with fruit.session() as s:
        run = s.get(TrainingRun, run_id)
        assert run is not None
        validation = dict(run.validation)
    ev = evaluate(fruit, run_id, "fruit", "v1", "val")
    assert ev["export_id"] is None
    assert ev["details"]["export"]["format"] == "checkpoint"
    # timm keeps the dataset's order
    assert ev["details"]["model_classes"] == ORDER
    assert [r["class"] for r in validation["per_class"]] == ORDER
    # the trainer validated best.pt's epoch on the same images, with the same preparation
    assert abs(ev["metrics"]["top1"] - float(validation["top1"])) <= 0.01, (
        ev["metrics"],
        validation["top1"],
    )
    truth = np.array([ORDER.index(p["true"]) for p in ev["details"]["predictions"]])
    pred = np.array([ORDER.index(p["predicted"]) for p in ev["details"]["predictions"]])
    assert ev["metrics"]["top1"] == pytest.approx(float((truth == pred).mean()))
    assert validation["confusion_matrix"]["matrix"] == ev["details"]["confusion"]["matrix"]
