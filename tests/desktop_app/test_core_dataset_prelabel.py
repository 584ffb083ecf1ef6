from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from desktop_app.cli import main
from desktop_app.core import dataset_edit as de
from desktop_app.core import dataset_prelabel as dp
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import AnnotationEdit, Export, TrainingRun
from desktop_app.core.workspace import Workspace
from runtimes.predictor import Predictor
from tests.desktop_app.test_core_dataset_edit import _image, _make_dataset, _v1
from tests.fakes import make_package


@pytest.fixture
def shapes(ws: Workspace, tmp_path: Path) -> Workspace:
    """The edit tests' dataset plus two unlabelled 64x48 images, n1.png and n2.png."""
    _make_dataset(ws, tmp_path / "src")
    _image(tmp_path / "new" / "n1.png", 40)
    _image(tmp_path / "new" / "n2.png", 41)
    de.add_images(ws, "shapes", tmp_path / "new")
    return ws


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "shapes.outpost.zip")


def _journal(ws: Workspace) -> int:
    with ws.session() as s:
        return int(s.scalar(select(func.count()).select_from(AnnotationEdit)) or 0)


def test_the_fake_package_detects_on_a_stored_image(shapes: Workspace, package: Path) -> None:
    sha = de.get_item(shapes, "shapes", "n1.png")["sha256"]
    predictor = Predictor.from_path(package)
    try:
        dets, _ = predictor.predict_bytes(shapes.blobs.path(sha).read_bytes(), conf=0.25)
    finally:
        predictor.close()
    found = dets.to_list()
    assert [d["class_name"] for d in found] == ["circle", "square"]
    # 64x48 letterboxed into 64x64: 8 rows of padding above the image.
    assert found[0]["xyxy"] == pytest.approx([8, 0, 24, 16], abs=1e-3)


def test_prelabel_proposes_for_unlabelled_images_and_undoes(
    shapes: Workspace, package: Path
) -> None:
    v1 = _v1(shapes)
    labelled_before = de.get_item(shapes, "shapes", "a.png")
    seen: list[tuple[str, int, int]] = []
    out = dp.prelabel(shapes, "shapes", package=package, progress=lambda *a: seen.append(a))
    assert out["images"] == 2 and out["proposals"] == 4 and out["empty_images"] == 0
    assert out["files"] == ["n1.png", "n2.png"] and out["skipped_classes"] == {}
    assert seen[-1] == ("prelabel", 2, 2)
    item = de.get_item(shapes, "shapes", "n1.png")
    assert item["label_status"] == "needs_review"
    assert [(a["class_name"], a["score"]) for a in item["annotations"]] == [
        ("circle", pytest.approx(0.9)),
        ("square", pytest.approx(0.8)),
    ]
    assert item["annotations"][1]["xyxy"] == pytest.approx([34, 26, 54, 46], abs=1e-3)
    assert de.get_item(shapes, "shapes", "a.png") == labelled_before
    assert _v1(shapes) == v1
    assert de.history(shapes, "shapes")[0]["op"] == "prelabel"
    de.undo(shapes, "shapes")
    item = de.get_item(shapes, "shapes", "n1.png")
    assert item["label_status"] == "unlabelled" and item["annotations"] == []
    # A second run over the images under review replaces the proposals, not adds to them.
    dp.prelabel(shapes, "shapes", package=package, limit=1)
    again = dp.prelabel(shapes, "shapes", package=package, only_status=("needs_review",))
    assert again["images"] == 1
    assert len(de.get_item(shapes, "shapes", "n1.png")["annotations"]) == 2
    assert de.get_item(shapes, "shapes", "n2.png")["label_status"] == "unlabelled"


def test_model_classes_missing_from_the_dataset(shapes: Workspace, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "dog.outpost.zip", class_names=("circle", "dog"))
    out = dp.prelabel(shapes, "shapes", package=pkg, limit=1)
    assert out["proposals"] == 1 and out["skipped_classes"] == {"dog": 1}
    de.undo(shapes, "shapes")
    out = dp.prelabel(shapes, "shapes", package=pkg, add_missing_classes=True)
    assert out["added_classes"] == ["dog"] and out["proposals"] == 4
    assert [c["name"] for c in de.list_classes(shapes, "shapes")][-1] == "dog"
    de.undo(shapes, "shapes")
    assert "dog" not in [c["name"] for c in de.list_classes(shapes, "shapes")]


def test_prelabel_by_export_id(shapes: Workspace, package: Path) -> None:
    with shapes.session() as s:
        run = TrainingRun(
            id="run1",
            project_id=shapes.default_project_id(),
            dataset_version_id=1,
            framework="test",
            task="detect",
            model="fake",
            status="completed",
            run_dir="runs/run1",
        )
        s.add(run)
        s.flush()
        s.add(
            Export(
                id="exp1",
                run_id="run1",
                format="onnx",
                status="completed",
                package_path=str(package),
            )
        )
    assert dp.prelabel(shapes, "shapes", export_id="exp1")["proposals"] == 4
    with pytest.raises(NotFoundError, match="no export 'nope'"):
        dp.prelabel(shapes, "shapes", export_id="nope")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, InvalidArgumentError, "either an export id or a package"),
        ({"package": "p", "export_id": "e"}, InvalidArgumentError, "either"),
        ({"package": "/no/such.outpost.zip"}, NotFoundError, "does not exist"),
        ({"package": "PKG", "conf": 2.0}, InvalidArgumentError, "conf must be"),
        ({"package": "PKG", "only_status": ("done",)}, InvalidArgumentError, "label status"),
    ],
)
def test_prelabel_refuses_bad_arguments(
    shapes: Workspace, package: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    if kwargs.get("package") == "PKG":
        kwargs["package"] = package
    journal = _journal(shapes)
    with pytest.raises(error, match=match):
        dp.prelabel(shapes, "shapes", **kwargs)
    assert _journal(shapes) == journal


def test_prelabel_refuses_a_classification_dataset(shapes: Workspace, package: Path) -> None:
    from desktop_app.core.models import Dataset

    with shapes.session() as s:
        s.scalar(select(Dataset)).task = "classify"  # type: ignore[union-attr]
    with pytest.raises(InvalidArgumentError, match="classification"):
        dp.prelabel(shapes, "shapes", package=package)


def test_review_accept_and_reject(shapes: Workspace, package: Path) -> None:
    dp.prelabel(shapes, "shapes", package=package)
    # Editing a proposal is ordinary editing: it stays a proposal under review.
    moved = de.move_box(shapes, "shapes", "n2.png", 0, 1, 0)
    assert moved["label_status"] == "needs_review" and moved["annotations"][0]["score"]
    item = dp.review(shapes, "shapes", "n1.png", accept=True)
    assert item["label_status"] == "labelled"
    assert [a["score"] for a in item["annotations"]] == [None, None]
    with pytest.raises(InvalidArgumentError, match="not under review"):
        dp.review(shapes, "shapes", "n1.png")
    de.add_box(shapes, "shapes", "n2.png", "triangle", [1, 1, 5, 5])
    item = dp.review(shapes, "shapes", "n2.png", accept=False)
    assert [a["class_name"] for a in item["annotations"]] == ["triangle"]
    assert item["label_status"] == "labelled"
    de.undo(shapes, "shapes")
    de.undo(shapes, "shapes")
    item = dp.review(shapes, "shapes", "n2.png", accept=False)
    assert item["label_status"] == "unlabelled" and item["annotations"] == []


def test_accept_all_with_min_score(shapes: Workspace, package: Path) -> None:
    dp.prelabel(shapes, "shapes", package=package)
    out = dp.accept_all(shapes, "shapes", min_score=0.85)
    assert out == {"dataset": "shapes", "accepted": 0, "left": 2, "files": []}
    de.delete_annotation(shapes, "shapes", "n2.png", 1)  # drop the 0.8 square
    out = dp.accept_all(shapes, "shapes", min_score=0.85)
    assert out["files"] == ["n2.png"] and out["left"] == 1
    out = dp.accept_all(shapes, "shapes")
    assert out["files"] == ["n1.png"]
    assert de.list_items(shapes, "shapes", status="needs_review") == []
    assert all(
        a["score"] is None for i in de.list_items(shapes, "shapes") for a in i["annotations"]
    )
    with pytest.raises(InvalidArgumentError, match="min_score"):
        dp.accept_all(shapes, "shapes", min_score=1.5)


def test_cli_prelabel_and_review(
    shapes: Workspace, package: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    def cli(*argv: str) -> Any:
        rc = main(["dataset", *argv, "--workspace", str(shapes.root), "--json"])
        out, err = capfd.readouterr()
        assert rc == 0, err
        return json.loads(out)

    out = cli("prelabel", "shapes", "--package", str(package), "--conf", "0.5")
    assert out["proposals"] == 4
    assert cli("review", "shapes", "--reject", "n1.png")["label_status"] == "unlabelled"
    assert cli("review", "shapes", "--accept", "n2.png")["label_status"] == "labelled"
    cli("undo", "shapes")
    assert cli("review", "shapes", "--accept-all", "--min-score", "0.5")["accepted"] == 1
    with pytest.raises(SystemExit):  # neither --export nor --package
        main(["dataset", "prelabel", "shapes", "--workspace", str(shapes.root)])
    assert "--export" in capfd.readouterr().err
