"""Split settings: the pure split function, the dataset's setting, and training versions."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from desktop_app import cli
from desktop_app.core import datasets, training
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.dataset_split import (
    compute_split,
    normalize_split_settings,
    parse_split_arg,
    stratified_split,
)
from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.models import Dataset, DatasetItem, DatasetVersion, TrainingRun
from desktop_app.core.workspace import Workspace

COUNT, SIZE = 12, 64


def make_items(per_class: dict[int, int]) -> list[tuple[str, list[list[float]]]]:
    """Images named img_000.jpg...; each has one box of its class (-1: a background image)."""
    items: list[tuple[str, list[list[float]]]] = []
    for cls, n in per_class.items():
        for _ in range(n):
            boxes = [] if cls < 0 else [[cls, 0.5, 0.5, 0.2, 0.2]]
            items.append((f"img_{len(items):03d}.jpg", boxes))
    return items


ITEMS = make_items({0: 30, 1: 20, 2: 10, -1: 10})


# ---- the pure split function ------------------------------------------------------------


def test_auto_split_is_deterministic_and_order_independent() -> None:
    settings = {"val": 0.2, "test": 0.1, "seed": 3}
    first = compute_split(ITEMS, settings)
    assert compute_split(ITEMS, settings) == first
    shuffled = list(reversed(ITEMS))
    again = dict(zip([fn for fn, _ in shuffled], compute_split(shuffled, settings), strict=True))
    assert again == dict(zip([fn for fn, _ in ITEMS], first, strict=True))
    assert compute_split(ITEMS, {**settings, "seed": 4}) != first


def test_auto_split_fractions_and_stratification() -> None:
    splits = compute_split(ITEMS, {"val": 0.2, "test": 0.1, "seed": 42})
    assert Counter(splits) == {"train": 49, "val": 14, "test": 7}
    per_class: dict[int, Counter[str]] = {}
    for (_, boxes), split in zip(ITEMS, splits, strict=True):
        cls = int(boxes[0][0]) if boxes else -1
        per_class.setdefault(cls, Counter())[split] += 1
    # each class gets its proportional share of val (20%) and test (10%)
    assert per_class[0] == {"train": 21, "val": 6, "test": 3}
    assert per_class[1] == {"train": 14, "val": 4, "test": 2}
    assert per_class[2]["val"] == 2 and per_class[2]["test"] == 1
    assert per_class[-1]["val"] == 2 and per_class[-1]["test"] == 1


def test_two_way_split_is_unchanged_by_the_test_option() -> None:
    strata = [i % 3 for i in range(40)]
    assert stratified_split(strata, 0.25, 9) == stratified_split(strata, 0.25, 9, 0.0)
    assert "test" not in stratified_split(strata, 0.25, 9)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_tiny_sets_keep_a_train_image(n: int) -> None:
    out = stratified_split([0] * n, 0.5, 1, 0.4)
    assert out.count("train") >= 1
    if n >= 3:
        assert out.count("val") >= 1 and out.count("test") >= 1


def test_manual_split_needs_every_image() -> None:
    names = [fn for fn, _ in ITEMS]
    assignments = {fn: ("val" if i % 5 == 0 else "train") for i, fn in enumerate(names)}
    assert compute_split(ITEMS, {"method": "manual", "assignments": assignments}) == [
        assignments[fn] for fn in names
    ]
    del assignments[names[3]], assignments[names[8]]
    with pytest.raises(InvalidArgumentError, match=r"2 of 70 have no split \(e.g. 'img_003.jpg'\)"):
        compute_split(ITEMS, {"method": "manual", "assignments": assignments})


def test_partial_split_keeps_assigned_images() -> None:
    assigned = {"img_000.jpg": "test", "img_001.jpg": "test", "img_069.jpg": "val"}
    out = dict(
        zip(
            [fn for fn, _ in ITEMS],
            compute_split(ITEMS, {"method": "partial", "assignments": assigned, "seed": 1}),
            strict=True,
        )
    )
    assert all(out[fn] == split for fn, split in assigned.items())
    rest = Counter(split for fn, split in out.items() if fn not in assigned)
    assert rest == {"train": 54, "val": 13}  # 67 drawn with val 0.2 and no test


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"method": "random"}, "method"),
        ({"val": 0}, "val_fraction"),
        ({"val": 1.5}, "val_fraction"),
        ({"test": -0.1}, "test fraction"),
        ({"val": 0.6, "test": 0.4}, "nothing to train"),
        ({"seed": "x"}, "seed"),
        ({"seed": True}, "seed"),
        ({"assignments": {"img_000.jpg": "holdout"}}, "use train, val or test"),
        ({"assignments": ["img_000.jpg"]}, "map file names"),
        ({"ratio": 0.2}, "unknown split setting"),
        ({"method": "partial", "assignments": {"missing.jpg": "val"}}, "not in the dataset"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        compute_split(ITEMS, settings)


def test_settings_merge_over_base_and_default() -> None:
    base = {"method": "auto", "val": 0.3, "seed": 7}
    assert normalize_split_settings({"test": 0.1}, base=base) == {
        "method": "auto",
        "val": 0.3,
        "test": 0.1,
        "seed": 7,
        "assignments": {},
    }
    assert normalize_split_settings({})["val"] == 0.2


def test_parse_split_arg() -> None:
    assert parse_split_arg("val=0.1, test=0.1,seed=7,method=partial") == {
        "val": 0.1,
        "test": 0.1,
        "seed": 7,
        "method": "partial",
    }
    for bad in ("val", "val=abc", "ratio=2", "", "seed=1.5"):
        with pytest.raises(InvalidArgumentError):
            parse_split_arg(bad)


# ---- the dataset's setting --------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("splits") / "shapes"
    write_sample_dataset(out, seed=11, count=COUNT, size=SIZE)
    return out


@pytest.fixture
def shapes(ws: Workspace, source: Path) -> Workspace:
    datasets.import_yolo(ws, source, "shapes")
    return ws


def draft_splits(ws: Workspace, version: str = "draft") -> dict[str, str]:
    info = datasets.get_version(ws, "shapes", version)
    with ws.session() as s:
        rows = s.execute(
            select(DatasetItem.file_name, DatasetItem.split).where(
                DatasetItem.version_id == info.id
            )
        )
        return {fn: split for fn, split in rows}


def count_versions(ws: Workspace) -> int:
    with ws.session() as s:
        return int(
            s.scalar(
                select(func.count()).where(DatasetVersion.number > 0).select_from(DatasetVersion)
            )
            or 0
        )


def test_set_split_stores_the_setting_and_applies_it_to_the_draft(shapes: Workspace) -> None:
    ws = shapes
    shown = datasets.split_settings(ws, "shapes")
    assert shown["level"] == "default" and shown["version"] == "v1"
    r = datasets.set_split(ws, "shapes", {"val": 0.25, "test": 0.25, "seed": 5})
    assert r["version"] == "draft" and r["splits"] == {"train": 6, "val": 3, "test": 3}
    draft = datasets.get_version(ws, "shapes", "draft")
    assert draft.splits == r["splits"] and draft.split_method == "auto"
    assert draft.test_fraction == 0.25 and draft.split_seed == 5
    with ws.session() as s:
        dataset = s.scalar(select(Dataset))
        assert dataset is not None and dataset.split_settings == r["settings"]
        assert dataset.updated_at is not None
    assert datasets.get_version(ws, "shapes", "v1").splits["test"] == 0  # v1 unchanged
    shown = datasets.split_settings(ws, "shapes")
    assert shown["level"] == "dataset" and shown["settings"]["test"] == 0.25
    # applying the same setting again moves nothing
    assert datasets.set_split(ws, "shapes", r["settings"])["moved"] == 0


def test_set_split_manual_and_partial(shapes: Workspace) -> None:
    ws = shapes
    names = sorted(draft_splits(ws, "v1"))
    manual = {fn: "val" if i < 4 else "train" for i, fn in enumerate(names)}
    r = datasets.set_split(ws, "shapes", {"method": "manual", "assignments": manual})
    assert draft_splits(ws) == manual and r["splits"]["val"] == 4
    r = datasets.set_split(
        ws, "shapes", {"method": "partial", "assignments": {names[0]: "test"}, "val": 0.5}
    )
    splits = draft_splits(ws)
    assert splits[names[0]] == "test"
    assert Counter(splits.values()) == {"test": 1, "val": 6, "train": 5}


def test_invalid_set_split_leaves_nothing_behind(shapes: Workspace) -> None:
    ws = shapes
    names = sorted(draft_splits(ws, "v1"))
    with pytest.raises(InvalidArgumentError, match="manual split must assign every image"):
        datasets.set_split(ws, "shapes", {"method": "manual", "assignments": {names[0]: "val"}})
    with pytest.raises(InvalidArgumentError, match="not in the dataset"):
        datasets.set_split(ws, "shapes", {"method": "partial", "assignments": {"x.jpg": "val"}})
    with pytest.raises(NotFoundError):
        datasets.set_split(ws, "nope", {})
    with ws.session() as s:
        dataset = s.scalar(select(Dataset))
        assert dataset is not None and dataset.split_settings is None
        assert s.scalar(select(func.count()).where(DatasetVersion.number == 0)) == 0


# ---- training versions ------------------------------------------------------------------


def test_training_version_without_a_draft_is_the_latest(shapes: Workspace) -> None:
    v = datasets.resolve_training_version(shapes, "shapes", None, None)
    assert v.label == "v1" and count_versions(shapes) == 1


def test_training_snapshots_a_changed_draft_once(shapes: Workspace) -> None:
    ws = shapes
    datasets.set_split(ws, "shapes", {"val": 0.25, "test": 0.25})
    v = datasets.resolve_training_version(ws, "shapes", None, None)
    assert v.label == "v2" and v.origin == "training" and v.splits["test"] == 3
    assert datasets.resolve_training_version(ws, "shapes", None, None).label == "v2"
    assert datasets.resolve_training_version(ws, "shapes", "draft", None).label == "v2"
    assert datasets.resolve_training_version(ws, "shapes", "v1", None).label == "v1"
    assert count_versions(ws) == 2


def test_split_override_creates_then_reuses_a_version(shapes: Workspace) -> None:
    ws = shapes
    v1 = datasets.get_version(ws, "shapes", "v1")
    override = {"val": 0.25, "test": 0.25, "seed": 7}
    v = datasets.resolve_training_version(ws, "shapes", "v1", override)
    assert v.label == "v2" and v.origin == "training"
    assert v.message is not None and v.message.startswith("split override") and "v1" in v.message
    assert v.splits == {"train": 6, "val": 3, "test": 3}
    assert (v.split_seed, v.val_fraction, v.test_fraction) == (7, 0.25, 0.25)
    assert v.num_annotations == v1.num_annotations
    with ws.session() as s:
        rows = s.execute(
            select(DatasetItem.file_name, DatasetItem.boxes).where(DatasetItem.version_id == v1.id)
        ).all()
    expected = compute_split([(fn, boxes) for fn, boxes in rows], override)
    assert draft_splits(ws, "v2") == dict(zip([fn for fn, _ in rows], expected, strict=True))
    again = datasets.resolve_training_version(ws, "shapes", "v1", override)
    assert again.id == v.id and count_versions(ws) == 2
    # an override that gives the version's own split keeps the version
    same = datasets.resolve_training_version(ws, "shapes", "v2", override)
    assert same.id == v.id
    assert datasets.get_version(ws, "shapes", "v1").content_hash == v1.content_hash


def test_override_keys_win_over_the_dataset_setting(shapes: Workspace) -> None:
    ws = shapes
    datasets.set_split(ws, "shapes", {"val": 0.25, "seed": 3})
    base = datasets.resolve_training_version(ws, "shapes", None, None)
    v = datasets.resolve_training_version(ws, "shapes", None, {"test": 0.25})
    assert v.id != base.id
    assert (v.split_seed, v.val_fraction, v.test_fraction) == (3, 0.25, 0.25)
    names = sorted(draft_splits(ws))
    manual = dict.fromkeys(names, "train") | {names[0]: "val"}
    datasets.set_split(ws, "shapes", {"method": "manual", "assignments": manual})
    # a manual dataset setting with a val override still assigns from the setting
    v = datasets.resolve_training_version(ws, "shapes", None, {"val": 0.5})
    assert draft_splits(ws, v.label) == manual


def test_bad_override_makes_no_version(shapes: Workspace) -> None:
    with pytest.raises(InvalidArgumentError):
        datasets.resolve_training_version(shapes, "shapes", "v1", {"val": 2.0})
    with pytest.raises(NotFoundError):
        datasets.resolve_training_version(shapes, "shapes", "v4", {"val": 0.3})
    assert count_versions(shapes) == 1


def test_run_training_trains_on_the_resolved_version(
    shapes: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = shapes

    class Launched(Exception):
        pass

    def launch(*args: Any, **kwargs: Any) -> None:
        raise Launched

    monkeypatch.setattr(subprocess, "Popen", launch)
    opts = training.TrainOptions(dataset="shapes", epochs=1, split={"val": 0.5, "seed": 2})
    with pytest.raises(Launched):
        training.run_training(ws, opts)
    with ws.session() as s:
        run = s.scalar(select(TrainingRun))
        assert run is not None
        version = s.get(DatasetVersion, run.dataset_version_id)
        assert version is not None and version.number == 2 and version.origin == "training"
        assert version.val_fraction == 0.5


def test_cli_split_and_train_parsing(
    shapes: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ws = shapes
    root = ["--workspace", str(ws.root)]
    assert cli.main(["dataset", "split", "shapes", "--show", *root, "--json"]) == 0
    shown = json.loads(capfd.readouterr().out)
    assert shown["level"] == "default" and shown["version"] == "v1"
    names = sorted(draft_splits(ws, "v1"))
    file = tmp_path / "assign.json"
    file.write_text(json.dumps({names[1]: "val"}))
    code = cli.main(
        [
            "dataset",
            "split",
            "shapes",
            "--method",
            "partial",
            "--test",
            "0.2",
            "--assign",
            f"{names[0]}=test",
            "--assignments",
            str(file),
            *root,
            "--json",
        ]
    )
    r = json.loads(capfd.readouterr().out)
    assert code == 0 and r["settings"]["assignments"] == {names[0]: "test", names[1]: "val"}
    splits = draft_splits(ws)
    assert splits[names[0]] == "test" and splits[names[1]] == "val"
    # flags not given keep the stored setting
    assert cli.main(["dataset", "split", "shapes", "--seed", "9", *root]) == 0
    text = capfd.readouterr().out
    assert "method=partial" in text and "seed=9" in text and "test=0.2" in text
    assert cli.main(["dataset", "split", "shapes", "--method", "manual", *root]) == 1
    assert "manual split must assign every image" in capfd.readouterr().err
    assert cli.main(["train", "--dataset", "shapes", "--split", "val=x", *root]) == 1
    assert "needs a number" in capfd.readouterr().err
