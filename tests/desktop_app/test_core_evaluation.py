"""Evaluation, batch prediction and pre-labels from stored predictions, with the fake package.

The fake detector always finds a circle (0.9) at [8, 8, 24, 24] and a square (0.8) at
[34, 34, 54, 54] on a 64 x 64 image, so every number below follows from the labels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from desktop_app.cli import main
from desktop_app.core import dataset_edit as de
from desktop_app.core import datasets
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.evaluation import evaluate, get_evaluation, list_evaluations
from desktop_app.core.models import AnnotationEdit, Evaluation, Export, PredictionSet, TrainingRun
from desktop_app.core.predictions import (
    get_prediction_set,
    list_prediction_sets,
    predict_batch,
    read_predictions,
    to_prelabels,
)
from desktop_app.core.workspace import Workspace
from tests.fakes import make_package

CIRCLE = "0 0.25 0.25 0.25 0.25"  # [8, 8, 24, 24] px: where the fake finds its circle
SQUARE = "1 0.6875 0.6875 0.3125 0.3125"  # [34, 34, 54, 54] px: its square
TRIANGLE = "2 0.78125 0.15625 0.3125 0.3125"  # [40, 0, 60, 20] px: never found
SPLITS = {
    "train": {"t": [CIRCLE, SQUARE]},
    # sorted by name: the square found on "a" is a false positive ranked before b's true one
    "val": {"a": [CIRCLE], "b": [CIRCLE, SQUARE], "c": [TRIANGLE]},
}


def _write_image(path: Path, seed: int, size: int = 64) -> Path:
    img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def lab(ws: Workspace, tmp_path: Path) -> Workspace:
    """Dataset "shapes" (v1, train/val as above), run "run1" and its ONNX export "exp1"."""
    root = tmp_path / "src"
    seed = 0
    for split, files in SPLITS.items():
        for stem, lines in files.items():
            seed += 1
            _write_image(root / "images" / split / f"{stem}.png", seed)
            label = root / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{ln}\n" for ln in lines))
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "circle", 1: "square", 2: "triangle"},
    }
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    datasets.import_dataset(ws, root, "shapes", "yolo")
    package = make_package(tmp_path / "pkg" / "shapes.outpost.zip")
    other = make_package(tmp_path / "pkg" / "pets.outpost.zip", class_names=("cat", "dog"))
    with ws.session() as s:
        for run_id in ("run1", "run2"):
            s.add(
                TrainingRun(
                    id=run_id,
                    project_id=ws.default_project_id(),
                    dataset_version_id=1,
                    framework="test",
                    task="detect",
                    model="fake",
                    status="completed",
                    run_dir=f"runs/{run_id}",
                    final_metrics={"metrics/mAP50(B)": 0.5},
                )
            )
        s.flush()
        for exp_id, run_id, pkg in (("exp1", "run1", package), ("exp2", "run2", other)):
            s.add(
                Export(
                    id=exp_id,
                    run_id=run_id,
                    format="onnx",
                    status="completed",
                    package_path=str(pkg),
                )
            )
    return ws


def _count(ws: Workspace, model: Any) -> int:
    with ws.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_evaluate_measures_the_fake_model_on_the_val_split(lab: Workspace) -> None:
    seen: list[tuple[str, int, int]] = []
    ev = evaluate(lab, "run1", "shapes", progress=lambda *a: seen.append(a))
    assert seen[-1] == ("evaluate", 3, 3)
    assert (ev["run_id"], ev["export_id"], ev["dataset"], ev["version"], ev["split"]) == (
        "run1",
        "exp1",
        "shapes",
        "v1",
        "val",
    )
    rows = {r["class"]: r for r in ev["per_class"]}
    # circle: 2 hits, then a false positive on c → AP 1; square: the false positive on "a"
    # outranks b's hit (same score, earlier image) → precision 0.5 at every recall → AP 0.5;
    # triangle: never found → 0.
    assert rows["circle"]["ap50"] == pytest.approx(1.0)
    assert rows["circle"]["ap50_95"] == pytest.approx(1.0)
    assert rows["square"]["ap50"] == pytest.approx(0.5)
    assert rows["triangle"]["ap50"] == 0.0
    assert (rows["circle"]["images"], rows["circle"]["instances"]) == (2, 2)
    assert (rows["square"]["images"], rows["triangle"]["instances"]) == (1, 1)
    assert rows["circle"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert rows["square"]["precision"] == pytest.approx(1 / 3, abs=1e-6)
    assert rows["circle"]["recall"] == 1.0 and rows["triangle"]["recall"] == 0.0
    m = ev["metrics"]
    assert m["map50"] == pytest.approx(0.5) and m["map50_95"] == pytest.approx(0.5)
    # At conf 0.001 the fake's weak square (0.1) comes through too: 3 detections an image.
    assert (m["images"], m["instances"], m["predictions"]) == (3, 4, 9)
    confusion = ev["details"]["confusion"]
    assert confusion["labels"] == ["circle", "square", "triangle", "background"]
    assert confusion["rows"] == "predicted" and confusion["columns"] == "true"
    assert confusion["matrix"] == [[2, 0, 0, 1], [0, 1, 0, 2], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert ev["details"]["warnings"] == [
        "the model has no class triangle: those classes score zero where they have objects"
    ]
    assert ev["details"]["export"]["runtime"] == "onnxruntime"
    assert ev["details"]["run_metrics"] == {"metrics/mAP50(B)": 0.5}
    curves = ev["details"]["curves"]
    assert len(curves["recall"]) == 101 and curves["precision"]["square"][50] == 0.5
    # Stored, listed and read back.
    assert get_evaluation(lab, ev["id"]) == ev
    assert [e["id"] for e in list_evaluations(lab, "run1")] == [ev["id"]]
    assert list_evaluations(lab, "run2") == []
    # The train split: both objects of t found.
    assert evaluate(lab, "run1", "shapes", "v1", "train")["metrics"]["map50"] == 1.0


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("nope", "shapes"), {}, NotFoundError, "no training run 'nope'"),
        (("run1", "nope"), {}, NotFoundError, "no dataset named 'nope'"),
        (("run1", "shapes", "v9"), {}, NotFoundError, "no version v9"),
        (("run1", "shapes", None, "dev"), {}, InvalidArgumentError, "split 'dev' is not valid"),
        (
            ("run1", "shapes", None, "test"),
            {},
            InvalidArgumentError,
            "no labelled images in the test split",
        ),
        (("run1", "shapes"), {"export_id": "nope"}, NotFoundError, "no export 'nope'"),
        (("run1", "shapes"), {"export_id": "exp2"}, InvalidArgumentError, "belongs to run run2"),
        (("run2", "shapes"), {}, InvalidArgumentError, "no class name in common"),
        (("run1", "shapes"), {"conf": 1.5}, InvalidArgumentError, "conf must be"),
    ],
)
def test_evaluate_refuses_bad_input(
    lab: Workspace, args: tuple[Any, ...], kwargs: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        evaluate(lab, *args, **kwargs)
    assert _count(lab, Evaluation) == 0


def test_evaluate_without_an_onnx_export_says_how_to_make_one(lab: Workspace) -> None:
    with lab.session() as s:
        s.get(Export, "exp1").status = "failed"
    with pytest.raises(NotFoundError, match="export it first: outpost export run1 --format onnx"):
        evaluate(lab, "run1", "shapes")


def test_predict_batch_over_a_folder_lists_bad_images(lab: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    _write_image(folder / "one.png", 100)
    _write_image(folder / "nested" / "two.jpg", 101, size=48)
    (folder / "broken.jpg").write_bytes(b"not an image")
    _write_image(folder / ".hidden" / "skip.png", 102)
    (folder / "notes.txt").write_text("not an image either")
    out = predict_batch(lab, run_ref="run1", folder=folder)
    assert (out["run_id"], out["export_id"]) == ("run1", "exp1")
    assert (out["images"], out["detections"]) == (2, 4)
    assert [e["file"] for e in out["errors"]] == ["broken.jpg"]
    records = read_predictions(lab, out["id"])
    assert [r["file"] for r in records] == ["nested/two.jpg", "one.png"]
    two = records[0]
    assert (two["width"], two["height"]) == (48, 48)
    assert two["sha256"] == hashlib.sha256((folder / "nested" / "two.jpg").read_bytes()).hexdigest()
    assert [(d["class"], d["class_id"], d["score"]) for d in records[1]["detections"]] == [
        ("circle", 0, pytest.approx(0.9)),
        ("square", 1, pytest.approx(0.8)),
    ]
    assert records[1]["detections"][1]["xyxy"] == pytest.approx([34, 34, 54, 54], abs=1e-3)
    path = Path(out["path"])
    assert path.parent == lab.root / "predictions" and path.name == f"{out['id']}.jsonl"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    shown = get_prediction_set(lab, out["id"], limit=1)
    assert len(shown["images_shown"]) == 1 and shown["params"]["conf"] == 0.25
    assert [s["id"] for s in list_prediction_sets(lab)] == [out["id"]]


def test_predict_batch_over_a_dataset_split_by_export(lab: Workspace) -> None:
    out = predict_batch(lab, export_id="exp1", dataset="shapes", split="val", conf=0.85)
    assert out["source"] == "shapes@v1:val" and out["dataset_version_id"] == 1
    assert (out["images"], out["detections"]) == (3, 3)  # only the circle clears 0.85
    records = read_predictions(lab, out["id"])
    assert [r["file"] for r in records] == ["a.png", "b.png", "c.png"]
    assert all(r["width"] == r["height"] == 64 for r in records)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"run_ref": "run1"}, InvalidArgumentError, "either a folder or a dataset"),
        ({"dataset": "shapes"}, InvalidArgumentError, "name a run"),
        ({"run_ref": "nope", "dataset": "shapes"}, NotFoundError, "no training run"),
        ({"export_id": "nope", "dataset": "shapes"}, NotFoundError, "no export 'nope'"),
        ({"run_ref": "run1", "dataset": "nope"}, NotFoundError, "no dataset named"),
        (
            {"run_ref": "run1", "dataset": "shapes", "split": "test"},
            InvalidArgumentError,
            "no images",
        ),
        ({"run_ref": "run1", "dataset": "shapes", "split": "x"}, InvalidArgumentError, "split 'x'"),
        ({"run_ref": "run1", "folder": "/no/such/dir"}, NotFoundError, "is not a folder"),
        ({"run_ref": "run1", "folder": "FOLDER", "split": "val"}, InvalidArgumentError, "--split"),
    ],
)
def test_predict_batch_refuses_bad_input(
    lab: Workspace, tmp_path: Path, kwargs: dict[str, Any], error: type, match: str
) -> None:
    if kwargs.get("folder") == "FOLDER":
        kwargs["folder"] = tmp_path
    with pytest.raises(error, match=match):
        predict_batch(lab, **kwargs)
    assert _count(lab, PredictionSet) == 0
    assert not (lab.root / "predictions").exists() or not any((lab.root / "predictions").iterdir())


def test_an_empty_folder_is_refused(lab: Workspace, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="holds no images"):
        predict_batch(lab, run_ref="run1", folder=tmp_path / "empty")


def test_to_prelabels_stores_proposals_in_one_undoable_entry(
    lab: Workspace, tmp_path: Path
) -> None:
    new = tmp_path / "new"
    _write_image(new / "n1.png", 200)
    _write_image(new / "n2.png", 201)
    de.add_images(lab, "shapes", new)
    # Predicted under other names (matched by content), plus an image the dataset lacks.
    folder = tmp_path / "camera"
    (folder / "x").mkdir(parents=True)
    (folder / "x" / "first.png").write_bytes((new / "n1.png").read_bytes())
    (folder / "second.png").write_bytes((new / "n2.png").read_bytes())
    _write_image(folder / "stranger.png", 202)
    pset = predict_batch(lab, run_ref="run1", folder=folder)
    journal = _count(lab, AnnotationEdit)
    out = to_prelabels(lab, pset["id"], "shapes", min_score=0.85)
    assert out["files"] == ["n1.png", "n2.png"] and out["proposals"] == 2
    assert out["unmatched"] == ["stranger.png"] and out["not_in_status"] == 0
    item = de.get_item(lab, "shapes", "n1.png")
    assert item["label_status"] == "needs_review"
    assert [(a["class_name"], a["score"]) for a in item["annotations"]] == [
        ("circle", pytest.approx(0.9))
    ]
    assert item["annotations"][0]["xyxy"] == pytest.approx([8, 8, 24, 24], abs=1e-3)
    assert _count(lab, AnnotationEdit) == journal + 1
    assert de.history(lab, "shapes")[0]["op"] == "prelabel"
    # Images under review are left alone by default; asked for, they are replaced.
    again = to_prelabels(lab, pset["id"], "shapes")
    assert again["images"] == 0 and again["not_in_status"] == 2
    again = to_prelabels(lab, pset["id"], "shapes", only_status=("needs_review",))
    assert again["proposals"] == 4
    assert len(de.get_item(lab, "shapes", "n1.png")["annotations"]) == 2
    de.undo(lab, "shapes")
    de.undo(lab, "shapes")
    item = de.get_item(lab, "shapes", "n1.png")
    assert item["label_status"] == "unlabelled" and item["annotations"] == []


def test_to_prelabels_matches_by_file_name_and_refuses_bad_input(
    lab: Workspace, tmp_path: Path
) -> None:
    new = tmp_path / "new"
    _write_image(new / "n1.png", 300)
    de.add_images(lab, "shapes", new)
    # Same name, different content: found by name.
    _write_image(tmp_path / "other" / "n1.png", 301)
    pset = predict_batch(lab, run_ref="run1", folder=tmp_path / "other")
    assert to_prelabels(lab, pset["id"], "shapes")["files"] == ["n1.png"]
    with pytest.raises(NotFoundError, match="no prediction set"):
        to_prelabels(lab, "pred-nope", "shapes")
    with pytest.raises(NotFoundError, match="no dataset named"):
        to_prelabels(lab, pset["id"], "nope")
    with pytest.raises(InvalidArgumentError, match="min_score"):
        to_prelabels(lab, pset["id"], "shapes", min_score=2)
    with pytest.raises(InvalidArgumentError, match="label status"):
        to_prelabels(lab, pset["id"], "shapes", only_status=("done",))


def test_cli_evaluate_predict_batch_and_listings(
    lab: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    def cli(*argv: str, rc: int = 0) -> Any:
        code = main([*argv, "--workspace", str(lab.root), "--json"])
        out, err = capfd.readouterr()
        assert code == rc, err
        return json.loads(out) if rc == 0 else err

    ev = cli("evaluate", "run1", "--dataset", "shapes@v1", "--split", "val")
    assert ev["metrics"]["map50"] == pytest.approx(0.5)
    assert [r["class"] for r in ev["per_class"]] == ["circle", "square", "triangle"]
    assert cli("evaluations", "list", "--run", "run1")[0]["id"] == ev["id"]
    assert cli("evaluations", "show", ev["id"])["per_class"] == ev["per_class"]
    assert "no class name in common" in cli("evaluate", "run2", "--dataset", "shapes", rc=1)
    # The human table: one row per class and the totals.
    assert main(["evaluations", "show", ev["id"], "--workspace", str(lab.root)]) == 0
    text = capfd.readouterr().out
    for word in ("class", "AP50-95", "circle", "square", "triangle", "all", "0.500"):
        assert word in text

    new = tmp_path / "new"
    _write_image(new / "n1.png", 400)
    de.add_images(lab, "shapes", new)
    out = cli("predict-batch", "--export", "exp1", "--folder", str(new), "--to-prelabels", "shapes")
    assert out["images"] == 1 and out["prelabels"]["proposals"] == 2
    assert cli("predictions", "list")[0]["id"] == out["id"]
    shown = cli("predictions", "show", out["id"], "--limit", "5")
    assert shown["images_shown"][0]["file"] == "n1.png"
    out = cli("predict-batch", "run1", "--dataset", "shapes@v1", "--split", "val")
    assert out["images"] == 3
    assert "name a run" in cli("predict-batch", "--folder", str(new), rc=1)
    assert "no evaluation 'nope'" in cli("evaluations", "show", "nope", rc=1)


def test_evaluate_refuses_a_classification_run(lab: Workspace) -> None:
    with lab.session() as s:
        s.get(TrainingRun, "run1").task = "classify"
    with pytest.raises(InvalidArgumentError, match="classification model"):
        evaluate(lab, "run1", "shapes")
