"""Classification evaluation with a fake classifier package, classes not in sorted order.

The fake classifier scores each class by one colour channel of the image (apple: red,
mango: green, zebra: blue), and its classes are in Ultralytics' sorted order while the
dataset lists them as zebra, apple, mango: only a mapping by name gets them right.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from desktop_app.cli import main
from desktop_app.core import datasets
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.evaluation import classification_metrics, evaluate, get_evaluation
from desktop_app.core.models import Export, TrainingRun
from desktop_app.core.predictions import predict_batch, read_predictions
from desktop_app.core.workspace import Workspace
from runtimes.package import utc_now, write_package

DATASET_ORDER = ["zebra", "apple", "mango"]
MODEL_ORDER = ("apple", "mango", "zebra")  # sorted folder names, as Ultralytics orders them
BGR = {"apple": (0, 0, 255), "mango": (0, 255, 0), "zebra": (255, 0, 0)}
# (file, true class, colour shown): c and f are shown in another class's colour
VAL = [
    ("a", "zebra", "zebra"),
    ("b", "apple", "apple"),
    ("c", "apple", "mango"),
    ("d", "mango", "mango"),
    ("e", "zebra", "zebra"),
    ("f", "mango", "zebra"),
]


def _classifier_onnx(path: Path, imgsz: int, weights: np.ndarray) -> Path:
    """ONNX: mean of each RGB channel, times ``weights`` (3 x C), softmax."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_classify",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_classifier_package(out_zip: Path, class_names: tuple[str, ...], imgsz: int = 32) -> Path:
    """A classify package whose class ``i`` follows the channel of its colour in ``BGR``."""
    rgb_channel = {"apple": 0, "mango": 1, "zebra": 2}
    weights = np.zeros((3, len(class_names)), np.float32)
    for i, name in enumerate(class_names):
        if name in rgb_channel:
            weights[rgb_channel[name], i] = 8.0
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = _classifier_onnx(Path(tmp) / "model.onnx", imgsz, weights)
        manifest = {
            "name": "fruit",
            "version": "1",
            "created_at": utc_now(),
            "model": {
                "framework": "test",
                "task": "classify",
                "architecture": "fake-cls",
                "class_names": list(class_names),
                "input": {
                    "name": "images",
                    "shape": [1, 3, imgsz, imgsz],
                    "dtype": "float32",
                    "layout": "NCHW",
                },
                "preprocessing": {"resize": "center_crop"},
                "postprocessing": {"kind": "classify", "output_layout": "class_probs"},
            },
            "format": {"key": "onnx", "file": "model.onnx", "runtime": "onnxruntime"},
        }
        write_package(out_zip, manifest, {"model.onnx": onnx_path})
    return out_zip


def _write_image(path: Path, bgr: tuple[int, int, int], seed: int) -> None:
    noise = np.random.default_rng(seed).integers(0, 40, (40, 48, 3))
    img = np.clip(np.array(bgr)[None, None, :] * 0.8 + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


@pytest.fixture
def fruit(ws: Workspace, tmp_path: Path) -> Workspace:
    """Dataset "fruit" (zebra, apple, mango), run "cls1" with ONNX export "ecls1"."""
    root = tmp_path / "fruit"
    seed = 0
    for name in DATASET_ORDER:
        for k in range(2):
            seed += 1
            _write_image(root / "train" / name / f"t{name}{k}.png", BGR[name], seed)
    for stem, true, shown in VAL:
        seed += 1
        _write_image(root / "val" / true / f"{stem}.png", BGR[shown], seed)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": DATASET_ORDER}))
    datasets.import_dataset(ws, root, "fruit", "yolo")
    package = make_classifier_package(tmp_path / "pkg" / "fruit.outpost.zip", MODEL_ORDER)
    with ws.session() as s:
        s.add(
            TrainingRun(
                id="cls1",
                project_id=ws.default_project_id(),
                dataset_version_id=1,
                framework="ultralytics",
                task="classify",
                model="fake-cls",
                status="completed",
                run_dir="runs/cls1",
                final_metrics={"metrics/accuracy_top1": 0.5},
            )
        )
        s.flush()
        s.add(
            Export(
                id="ecls1",
                run_id="cls1",
                format="onnx",
                status="completed",
                package_path=str(package),
            )
        )
    return ws


def _independent(true: list[int], probs: np.ndarray, nc: int) -> dict[str, Any]:
    """The same measures, computed separately with plain loops over the raw scores."""
    pred = [int(np.argmax(p)) for p in probs]
    top5 = [t in list(np.argsort(-p)[:5]) for t, p in zip(true, probs, strict=True)]
    out: dict[str, Any] = {
        "top1": sum(p == t for p, t in zip(pred, true, strict=True)) / len(true),
        "top5": sum(top5) / len(true),
        "per_class": [],
    }
    for c in range(nc):
        tp = sum(p == c and t == c for p, t in zip(pred, true, strict=True))
        fp = sum(p == c and t != c for p, t in zip(pred, true, strict=True))
        fn = sum(p != c and t == c for p, t in zip(pred, true, strict=True))
        tn = len(true) - tp - fp - fn
        out["per_class"].append(
            {
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "accuracy": (tp + tn) / len(true),
            }
        )
    return out


def test_classification_metrics_match_an_independent_computation() -> None:
    rng = np.random.default_rng(7)
    nc, n = 7, 300
    true = rng.integers(0, nc, n)
    probs = rng.random((n, nc))
    probs[np.arange(n), true] += rng.random(n) * 1.5  # better than chance, not perfect
    metrics, per_class, matrix = classification_metrics(true, probs, [f"c{i}" for i in range(nc)])
    ref = _independent(true.tolist(), probs, nc)
    assert metrics["top1"] == pytest.approx(ref["top1"])
    assert metrics["top5"] == pytest.approx(ref["top5"])
    assert 0 < metrics["top1"] < metrics["top5"] < 1
    for ours, theirs in zip(per_class, ref["per_class"], strict=True):
        for key in ("precision", "recall", "accuracy"):
            assert ours[key] == pytest.approx(theirs[key])
    m = np.asarray(matrix)
    assert m.sum() == n and np.trace(m) == round(ref["top1"] * n)
    assert m.sum(axis=0).tolist() == np.bincount(true, minlength=nc).tolist()


def test_top_k_shrinks_with_few_classes_and_ties_are_stable() -> None:
    metrics, per_class, matrix = classification_metrics(
        np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["x", "y"]
    )
    # equal scores: the first class wins, like a stable sort
    assert (metrics["top1"], metrics["top5"], metrics["top_k"]) == (0.5, 1.0, 2)
    assert matrix == [[1, 1], [0, 0]]
    assert per_class[1]["precision"] is None and per_class[1]["recall"] == 0.0


def test_evaluate_a_classifier_maps_classes_by_name(fruit: Workspace) -> None:
    assert list(datasets.get_version(fruit, "fruit", "v1").class_names) == DATASET_ORDER
    ev = evaluate(fruit, "cls1", "fruit", "v1", "val")
    m = ev["metrics"]
    # a, b, d, e right; c (apple shown as mango) and f (mango shown as zebra) wrong
    assert (m["images"], m["top1"], m["top5"], m["top_k"]) == (6, 4 / 6, 1.0, 3)
    rows = {r["class"]: r for r in ev["per_class"]}
    assert [r["class"] for r in ev["per_class"]] == DATASET_ORDER
    assert rows["zebra"] == {
        "class": "zebra",
        "images": 2,
        "predicted": 3,
        "precision": 2 / 3,
        "recall": 1.0,
        "accuracy": 5 / 6,
    }
    assert (rows["apple"]["precision"], rows["apple"]["recall"]) == (1.0, 0.5)
    assert (rows["mango"]["precision"], rows["mango"]["recall"]) == (0.5, 0.5)
    details = ev["details"]
    assert details["kind"] == "classify"
    assert details["confusion"]["labels"] == DATASET_ORDER
    # rows predicted, columns true (zebra, apple, mango)
    assert details["confusion"]["matrix"] == [[2, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert details["class_mapping"] == {n: n for n in MODEL_ORDER}
    assert details["model_classes"] == list(MODEL_ORDER)
    assert {p["file"]: p["predicted"] for p in details["predictions"]}["f.png"] == "zebra"
    assert details["export"]["id"] == "ecls1" and details["run_metrics"] == {
        "metrics/accuracy_top1": 0.5
    }
    assert get_evaluation(fruit, ev["id"])["metrics"] == m


def test_a_model_with_other_classes_counts_them_wrong(fruit: Workspace, tmp_path: Path) -> None:
    # the model knows apple and zebra and a "kiwi" the dataset lacks; it has no mango
    package = make_classifier_package(tmp_path / "p2.outpost.zip", ("kiwi", "zebra", "apple"))
    with fruit.session() as s:
        s.add(
            Export(
                id="ecls2",
                run_id="cls1",
                format="onnx",
                status="completed",
                package_path=str(package),
            )
        )
    ev = evaluate(fruit, "cls1", "fruit", "v1", "val", export_id="ecls2")
    assert ev["details"]["confusion"]["labels"] == [*DATASET_ORDER, "kiwi"]
    rows = {r["class"]: r for r in ev["per_class"]}
    assert rows["mango"]["recall"] == 0.0 and rows["mango"]["predicted"] == 0
    # kiwi scores zero on every image (no channel): a, b, e right; c, d, f wrong
    assert ev["metrics"]["top1"] == pytest.approx(3 / 6)
    assert any("no class mango" in w for w in ev["details"]["warnings"])
    assert any("kiwi" in w for w in ev["details"]["warnings"])


def test_classification_bad_input(fruit: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no labelled images in the test split"):
        evaluate(fruit, "cls1", "fruit", "v1", "test")
    with fruit.session() as s:
        s.add(
            TrainingRun(
                id="cls2",
                project_id=fruit.default_project_id(),
                dataset_version_id=1,
                framework="ultralytics",
                task="classify",
                model="fake-cls",
                status="completed",
                run_dir="runs/cls2",
            )
        )
    with pytest.raises(NotFoundError, match="export it first: outpost export cls2 --format onnx"):
        evaluate(fruit, "cls2", "fruit", "v1", "val")
    with fruit.session() as s:
        s.get(TrainingRun, "cls2").framework = "timm"
    with pytest.raises(NotFoundError, match="no best checkpoint"):
        evaluate(fruit, "cls2", "fruit", "v1", "val")
    other = make_classifier_package(tmp_path / "p3.outpost.zip", ("cat", "dog"))
    with fruit.session() as s:
        s.add(
            Export(
                id="ecls3",
                run_id="cls1",
                format="onnx",
                status="completed",
                package_path=str(other),
            )
        )
    with pytest.raises(InvalidArgumentError, match="no class name in common"):
        evaluate(fruit, "cls1", "fruit", "v1", "val", export_id="ecls3")


def test_cli_evaluate_prints_the_classification_table(
    fruit: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = ["--workspace", str(fruit.root)]
    assert main([*ws, "evaluate", "cls1", "--dataset", "fruit@v1"]) == 0
    text = capsys.readouterr().out
    assert "top-1 0.6667  top-3 1.0000  on 6 images" in text
    assert text.index("zebra") < text.index("apple") < text.index("mango")
    assert main([*ws, "evaluations", "list"]) == 0
    assert "0.667" in capsys.readouterr().out


def test_predict_batch_of_a_classifier_names_its_classes(fruit: Workspace) -> None:
    out = predict_batch(fruit, run_ref="cls1", dataset="fruit", version="v1", split="val")
    assert out["images"] == 6 and out["detections"] == 0
    records = {r["file"]: r for r in read_predictions(fruit, out["id"])}
    top = records["a.png"]["classes"]
    # the model's own order is sorted; names, not indices, say which class it is
    assert [c["class"] for c in top] == ["zebra", "apple", "mango"]
    assert [c["class_id"] for c in top] == [MODEL_ORDER.index(c["class"]) for c in top]
    assert top[0]["score"] > 0.5 and records["a.png"]["detections"] == []
    assert records["c.png"]["classes"][0]["class"] == "mango"  # shown in mango's colour
