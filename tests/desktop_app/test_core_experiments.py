"""Experiments, run annotations (star, notes, tags), run search and run comparison."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from desktop_app import cli
from desktop_app.core import datasets
from desktop_app.core import experiments as ex
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from desktop_app.core.models import RunMetric, TrainingRun
from desktop_app.core.workspace import Workspace

MAP50 = "metrics/mAP50(B)"
MAP = "metrics/mAP50-95(B)"
LOSS = "val/box_loss"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("experiments") / "shapes"
    write_sample_dataset(out, seed=3, count=6, size=48)
    return out


def add_run(
    ws: Workspace,
    run_id: str,
    *,
    minute: int,
    curves: dict[str, list[float]],
    params: dict[str, Any] | None = None,
    status: str = "completed",
    model: str = "yolo11n.yaml",
    validation: dict[str, Any] | None = None,
) -> None:
    """A recorded run: params, per-epoch metrics, and final metrics = each curve's last value."""
    with ws.session() as s:
        _, version = datasets.find_version(s, "shapes")
        s.add(
            TrainingRun(
                id=run_id,
                project_id=ws.default_project_id(),
                dataset_version_id=version.id,
                framework="ultralytics",
                task="detect",
                model=model,
                status=status,
                params=params or {},
                run_dir=f"runs/{run_id}",
                final_metrics={k: v[-1] for k, v in curves.items()},
                validation=validation or {},
                created_at=T0 + timedelta(minutes=minute),
            )
        )
        s.flush()
        for key, values in curves.items():
            for epoch, value in enumerate(values, start=1):
                s.add(RunMetric(run_id=run_id, epoch=epoch, key=key, value=value))


def per_class(aps: dict[str, float]) -> dict[str, Any]:
    return {
        "primary_metric": {"key": MAP, "value": sum(aps.values()) / len(aps)},
        "per_class": [
            {"class": c, "images": 3, "instances": 4, "precision": 0.5, "recall": 0.5, "ap": ap}
            for c, ap in aps.items()
        ],
    }


@pytest.fixture
def runs(ws: Workspace, source: Path) -> Workspace:
    """Three runs: a (good mAP, middling loss), b (best loss, worse mAP), c (failed, no metrics)."""
    datasets.import_yolo(ws, source, "shapes")
    add_run(
        ws,
        "run-a",
        minute=1,
        curves={MAP50: [0.2, 0.6, 0.7], MAP: [0.1, 0.4, 0.5], LOSS: [2.0, 1.5, 1.2]},
        params={"epochs": 3, "imgsz": 64, "lr0": 0.01, "mosaic": 1.0},
        validation=per_class({"circle": 0.6, "square": 0.4}),
    )
    add_run(
        ws,
        "run-b",
        minute=2,
        curves={MAP50: [0.3, 0.5], MAP: [0.2, 0.3], LOSS: [1.8, 0.9], "lr/pg0": [0.01, 0.005]},
        params={"epochs": 2, "imgsz": 64, "lr0": 0.005},
        model="yolo11s.yaml",
        validation=per_class({"circle": 0.35, "square": 0.25}),
    )
    add_run(ws, "run-c", minute=3, curves={}, params={"epochs": 3, "imgsz": 64}, status="failed")
    return ws


class Cli:
    """``outpost ...`` in this process against one workspace, reading fd-level output."""

    def __init__(self, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
        self.root, self.capfd = str(ws.root), capfd

    def text(self, *argv: str) -> str:
        self.capfd.readouterr()
        code = cli.main([*argv, "--workspace", self.root])
        out, err = self.capfd.readouterr()
        assert code == 0, err
        return out

    def json(self, *argv: str) -> Any:
        return json.loads(self.text(*argv, "--json"))


# ---- metric rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "direction"),
    [
        ("val/box_loss", "min"),
        ("train/cls_loss", "min"),
        ("loss", "min"),
        ("metrics/mAP50(B)", "max"),
        ("metrics/mAP50-95(M)", "max"),
        ("metrics/precision(B)", "max"),
        ("metrics/recall(B)", "max"),
        ("metrics/accuracy_top1", "max"),
        ("fitness", "max"),
        ("ap50", "max"),
        ("val/iou_loss", "min"),
        ("lr/pg0", None),
        ("approx_time", None),
    ],
)
def test_metric_direction_from_the_key(key: str, direction: str | None) -> None:
    assert ex.metric_direction(key) == direction


# ---- experiments -----------------------------------------------------------------------


def test_experiment_crud_and_membership(runs: Workspace) -> None:
    ws = runs
    created = ex.create_experiment(ws, "backbone sweep", "# Sweep\nn vs s")
    assert created["runs"] == 0 and created["name"] == "backbone sweep"
    with pytest.raises(AlreadyExistsError, match="already exists"):
        ex.create_experiment(ws, "Backbone Sweep")
    with pytest.raises(InvalidArgumentError, match="1-128 characters"):
        ex.create_experiment(ws, "  ")

    added = ex.add_runs(ws, "backbone sweep", ["run-a", "run-b", "run-a"])
    assert added["added"] == ["run-a", "run-b"] and added["already"] == []
    assert ex.add_runs(ws, "backbone sweep", ["run-a"])["already"] == ["run-a"]

    # A run belongs to one experiment: refused without --move, moved with it.
    ex.create_experiment(ws, "lr sweep")
    with pytest.raises(InvalidArgumentError, match="run-b is in experiment 'backbone sweep'"):
        ex.add_runs(ws, "lr sweep", ["run-c", "run-b"])
    assert ex.get_experiment(ws, "lr sweep")["runs"] == []  # nothing half-done
    moved = ex.add_runs(ws, "lr sweep", ["run-b"], move=True)
    assert moved["moved"] == {"run-b": "backbone sweep"}
    assert [r["id"] for r in ex.get_experiment(ws, "backbone sweep")["runs"]] == ["run-a"]

    with pytest.raises(InvalidArgumentError, match="not in experiment"):
        ex.remove_runs(ws, "backbone sweep", ["run-b"])
    assert ex.remove_runs(ws, "lr sweep", ["run-b"])["removed"] == ["run-b"]

    renamed = ex.rename_experiment(ws, "backbone sweep", "backbones")
    assert renamed == {"name": "backbones", "renamed_from": "backbone sweep"}
    with pytest.raises(AlreadyExistsError):
        ex.rename_experiment(ws, "backbones", "LR sweep")
    assert ex.describe_experiment(ws, "backbones", "new *text*")["description"] == "new *text*"
    assert ex.describe_experiment(ws, "backbones", "  ")["description"] is None

    listed = {e["name"]: e for e in ex.list_experiments(ws)}
    assert listed["backbones"]["runs"] == 1 and listed["lr sweep"]["runs"] == 0
    assert listed["backbones"]["best"] == {"key": MAP, "value": 0.5, "run": "run-a"}
    assert listed["lr sweep"]["best"] is None

    deleted = ex.delete_experiment(ws, "backbones")
    assert deleted["ungrouped_runs"] == ["run-a"]
    assert [e["name"] for e in ex.list_experiments(ws)] == ["lr sweep"]
    with ws.session() as s:
        run = s.get(TrainingRun, "run-a")
        assert run is not None and run.experiment_id is None

    with pytest.raises(NotFoundError, match="no experiment named 'backbones'"):
        ex.get_experiment(ws, "backbones")
    with pytest.raises(NotFoundError, match="no training run 'run-zz'"):
        ex.add_runs(ws, "lr sweep", ["run-zz"])


def test_best_metrics_kept_loss_lower_map_higher(runs: Workspace) -> None:
    ws = runs
    ex.create_experiment(ws, "sweep")
    ex.add_runs(ws, "sweep", ["run-a", "run-b", "run-c"])
    exp = ex.get_experiment(ws, "sweep")
    best = exp["best_metrics"]
    assert best[MAP50] == {"value": 0.7, "run": "run-a", "direction": "max"}
    assert best[MAP] == {"value": 0.5, "run": "run-a", "direction": "max"}
    assert best[LOSS] == {"value": 0.9, "run": "run-b", "direction": "min"}
    assert "lr/pg0" not in best  # not ranked
    assert exp["best"] == {"key": MAP, "value": 0.5, "run": "run-a"}
    rows = {r["id"]: r for r in exp["runs"]}
    assert rows["run-b"]["model"] == "yolo11s.yaml"
    assert rows["run-b"]["dataset"] == "shapes" and rows["run-b"]["version"] == "v1"
    assert rows["run-c"]["status"] == "failed" and rows["run-c"]["primary_metric"] is None
    assert rows["run-a"]["final_metrics"][LOSS] == 1.2


# ---- annotations -----------------------------------------------------------------------


def test_star_notes_and_tags(runs: Workspace) -> None:
    ws = runs
    assert ex.star_run(ws, "run-a") == {"run": "run-a", "starred": True}
    assert ex.star_run(ws, "run-a", starred=False)["starred"] is False
    assert ex.star_run(ws, "latest")["run"] == "run-b"  # the newest completed run

    assert ex.set_notes(ws, "run-a", "## Why\nmosaic off")["notes"] == "## Why\nmosaic off"
    with pytest.raises(InvalidArgumentError, match="over the 64 KiB limit"):
        ex.set_notes(ws, "run-a", "x" * (ex.MAX_TEXT_BYTES + 1))
    with ws.session() as s:
        run = s.get(TrainingRun, "run-a")
        assert run is not None and run.notes == "## Why\nmosaic off"  # unchanged by the refusal
    assert ex.set_notes(ws, "run-a", "")["notes"] is None

    tagged = ex.add_tags(ws, "run-a", ["Baseline", "sweep:lr/0.01", "baseline", "v1.2_x-y"])
    assert tagged["tags"] == ["Baseline", "sweep:lr/0.01", "v1.2_x-y"]
    again = ex.add_tags(ws, "run-a", ["BASELINE", "new"])
    assert again["tags"] == ["Baseline", "sweep:lr/0.01", "v1.2_x-y", "new"]
    assert again["added"] == ["new"]
    for bad in ["", "has space", "x" * 65, "semi;colon", "ünï"]:
        with pytest.raises(InvalidArgumentError, match="letters, digits"):
            ex.add_tags(ws, "run-a", [bad])
    removed = ex.remove_tags(ws, "run-a", ["baseline", "absent"])
    assert removed["removed"] == ["Baseline"]
    assert removed["tags"] == ["sweep:lr/0.01", "v1.2_x-y", "new"]
    with pytest.raises(InvalidArgumentError, match="over the limit"):
        ex.add_tags(ws, "run-b", [f"t{i}" for i in range(ex.MAX_TAGS + 1)])
    with pytest.raises(NotFoundError, match="no training run"):
        ex.star_run(ws, "run-nope")


# ---- search ----------------------------------------------------------------------------


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def test_search_filters_and_sort(runs: Workspace) -> None:
    ws = runs
    ex.create_experiment(ws, "Backbone Sweep")
    ex.add_runs(ws, "Backbone Sweep", ["run-b"])
    ex.star_run(ws, "run-a")
    ex.add_tags(ws, "run-a", ["baseline", "mosaic"])
    ex.add_tags(ws, "run-c", ["Mosaic"])
    ex.set_notes(ws, "run-c", "Diverged at epoch 2 (50% lr)")

    assert ids(ex.search_runs(ws)) == ["run-c", "run-b", "run-a"]  # newest first
    assert ids(ex.search_runs(ws, status="completed")) == ["run-b", "run-a"]
    assert ids(ex.search_runs(ws, starred=True)) == ["run-a"]
    assert ids(ex.search_runs(ws, starred=False)) == ["run-c", "run-b"]
    assert ids(ex.search_runs(ws, tags=["MOSAIC"])) == ["run-c", "run-a"]
    assert ids(ex.search_runs(ws, tags=["mosaic", "baseline"])) == ["run-a"]
    assert ids(ex.search_runs(ws, experiment="backbone sweep")) == ["run-b"]
    assert ids(ex.search_runs(ws, model="11S")) == ["run-b"]
    assert ids(ex.search_runs(ws, task="detect", framework="ultralytics")) == [
        "run-c",
        "run-b",
        "run-a",
    ]
    assert ids(ex.search_runs(ws, dataset="shapes@v1")) == ["run-c", "run-b", "run-a"]
    assert ids(ex.search_runs(ws, dataset="shapes", limit=1)) == ["run-c"]

    # Text: id, model, notes, tags, experiment name; case-insensitive; LIKE wildcards literal.
    assert ids(ex.search_runs(ws, text="RUN-A")) == ["run-a"]
    assert ids(ex.search_runs(ws, text="diverged")) == ["run-c"]
    assert ids(ex.search_runs(ws, text="50%")) == ["run-c"]
    assert ids(ex.search_runs(ws, text="basel")) == ["run-a"]
    assert ids(ex.search_runs(ws, text="sweep")) == ["run-b"]
    assert ids(ex.search_runs(ws, text='"')) == []  # not the JSON quoting of the tag list
    assert ids(ex.search_runs(ws, text="%")) == ["run-c"]

    # Metric filters on the final metrics; a run without the key is left out.
    assert ids(ex.search_runs(ws, metric_filters=[f"{MAP50}>=0.6"])) == ["run-a"]
    assert ids(ex.search_runs(ws, metric_filters=[f"{MAP50} > 0.4", f"{LOSS}<1"])) == ["run-b"]
    assert ids(ex.search_runs(ws, metric_filters=[f"{MAP}=0.3"])) == ["run-b"]
    assert ids(ex.search_runs(ws, metric_filters=[f"{LOSS}<=1.2"], sort="created_at")) == [
        "run-a",
        "run-b",
    ]

    # Sort by a metric: runs without it come last either way.
    assert ids(ex.search_runs(ws, sort=LOSS)) == ["run-b", "run-a", "run-c"]
    assert ids(ex.search_runs(ws, sort=f"-{MAP50}")) == ["run-a", "run-b", "run-c"]

    row = ex.search_runs(ws, text="run-b")[0]
    assert row["experiment"] == "Backbone Sweep" and row["primary_metric"]["value"] == 0.3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metric_filters": ["metrics/mAP50(B)=>0.5"]}, InvalidArgumentError, "unknown operator"),
        ({"metric_filters": ["metrics/mAP50(B)!=0.5"]}, InvalidArgumentError, "unknown operator"),
        ({"metric_filters": ["metrics/mAP50(B)>=high"]}, InvalidArgumentError, "not a number"),
        ({"metric_filters": ["metrics/mAP50(B)"]}, InvalidArgumentError, "KEY OP VALUE"),
        ({"status": "done"}, InvalidArgumentError, "not one of"),
        ({"limit": 0}, InvalidArgumentError, "1 or more"),
        ({"tags": ["a b"]}, InvalidArgumentError, "letters, digits"),
        ({"sort": "-"}, InvalidArgumentError, "names no key"),
        ({"experiment": "nope"}, NotFoundError, "no experiment named"),
        ({"dataset": "nope"}, NotFoundError, "no dataset named"),
    ],
)
def test_search_refuses_bad_filters(
    runs: Workspace, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ex.search_runs(runs, **kwargs)


# ---- compare ---------------------------------------------------------------------------


def test_compare_runs(runs: Workspace) -> None:
    cmp = ex.compare_runs(runs, ["run-a", "run-b"])
    assert [r["id"] for r in cmp["runs"]] == ["run-a", "run-b"]
    assert [(r["dataset"], r["version"]) for r in cmp["runs"]] == [("shapes", "v1")] * 2

    assert cmp["params"]["shared"] == {"imgsz": 64}
    assert cmp["params"]["differing"] == {
        "epochs": {"run-a": 3, "run-b": 2},
        "lr0": {"run-a": 0.01, "run-b": 0.005},
        "mosaic": {"run-a": 1.0, "run-b": None},
    }

    fm = cmp["final_metrics"]
    assert fm[MAP50] == {
        "values": {"run-a": 0.7, "run-b": 0.5},
        "best_run": "run-a",
        "direction": "max",
    }
    assert fm[LOSS]["best_run"] == "run-b"
    assert fm["lr/pg0"] == {
        "values": {"run-a": None, "run-b": 0.005},
        "best_run": None,
        "direction": None,
    }

    map50 = cmp["curves"][MAP50]["series"]
    assert map50["run-a"]["epochs"] == [1, 2, 3]
    assert map50["run-a"]["values"] == [0.2, 0.6, 0.7]
    assert map50["run-b"]["values"] == [0.3, 0.5]
    assert (map50["run-b"]["last"], map50["run-b"]["best"], map50["run-b"]["best_epoch"]) == (
        0.5,
        0.5,
        2,
    )
    loss = cmp["curves"][LOSS]["series"]["run-a"]
    assert (loss["best"], loss["best_epoch"], loss["last"]) == (1.2, 3, 1.2)
    assert list(cmp["curves"]["lr/pg0"]["series"]) == ["run-b"]

    val = cmp["validation"]
    assert val["per_class"]["circle"]["run-a"]["ap"] == 0.6
    assert val["per_class"]["square"]["run-b"]["ap"] == 0.25
    assert val["primary_metric"]["run-a"]["key"] == MAP

    # "latest" is the newest completed run; the order asked is kept.
    assert [r["id"] for r in ex.compare_runs(runs, ["latest", "run-a"])["runs"]] == [
        "run-b",
        "run-a",
    ]
    with pytest.raises(InvalidArgumentError, match="at least two"):
        ex.compare_runs(runs, ["run-a", "run-a"])
    with pytest.raises(NotFoundError, match="no training run 'nope'"):
        ex.compare_runs(runs, ["run-a", "nope"])
    failed = ex.compare_runs(runs, ["run-a", "run-c"])
    assert failed["final_metrics"][MAP]["values"]["run-c"] is None


# ---- CLI -------------------------------------------------------------------------------


def test_cli_round_trip(runs: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    run = Cli(runs, capfd)
    assert run.json("experiments", "create", "sweep", "--description", "# S")["name"] == "sweep"
    assert run.json("experiments", "add", "sweep", "run-a", "run-b")["added"] == [
        "run-a",
        "run-b",
    ]
    shown = run.json("experiments", "show", "sweep")
    assert shown["best_metrics"][LOSS]["run"] == "run-b"
    assert [e["runs"] for e in run.json("experiments", "list")] == [2]
    assert run.json("experiments", "remove", "sweep", "run-b")["removed"] == ["run-b"]
    assert run.json("experiments", "rename", "sweep", "sweep2")["name"] == "sweep2"
    md = tmp_path / "notes.md"
    md.write_text("# Findings\nlonger warmup helps\n", encoding="utf-8")
    described = run.json("experiments", "describe", "sweep2", "--file", str(md))
    assert described["description"].startswith("# Findings")

    assert run.json("runs", "star", "run-a")["starred"] is True
    assert run.json("runs", "unstar", "run-a")["starred"] is False
    assert run.json("runs", "star", "run-b")["starred"] is True
    assert run.json("runs", "note", "run-a", "--file", str(md))["notes"].startswith("# F")
    assert run.json("runs", "note", "run-b", "--text", "try s")["notes"] == "try s"
    assert run.json("runs", "tag", "run-a", "keep", "x:1")["tags"] == ["keep", "x:1"]
    assert run.json("runs", "tag", "run-a", "x:1", "--remove")["tags"] == ["keep"]

    found = run.json(
        "runs", "search", "--metric", f"{MAP50}>=0.4", f"--sort=-{MAP50}", "--limit", "5"
    )
    assert ids(found) == ["run-a", "run-b"]
    assert ids(run.json("runs", "search", "--starred")) == ["run-b"]
    assert ids(run.json("runs", "search", "--tag", "keep", "--experiment", "sweep2")) == ["run-a"]
    assert ids(run.json("runs", "search", "--text", "warmup", "--status", "completed")) == ["run-a"]

    cmp = run.json("runs", "compare", "run-a", "run-b")
    assert cmp["curves"][MAP50]["series"]["run-a"]["values"] == [0.2, 0.6, 0.7]

    # The readable forms.
    text = run.text("runs", "compare", "run-a", "run-b")
    assert "parameters that differ (3; 1 same)" in text
    assert "0.7000*" in text and "0.9000*" in text  # best mAP50 (a) and best loss (b)
    assert "1.2000 / 1.2000@3" in text
    assert "circle" in text
    listing = run.text("experiments", "list")
    assert "sweep2" in listing and f"{MAP}=0.5000 (run-a)" in listing
    assert "best metrics kept" in run.text("experiments", "show", "sweep2")
    assert "run-a" in run.text("runs", "search", "--sort", LOSS)

    assert run.json("experiments", "delete", "sweep2")["ungrouped_runs"] == ["run-a"]


def test_cli_errors(runs: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(runs.root)
    cases = [
        (["experiments", "show", "nope"], "no experiment named 'nope'"),
        (["runs", "star", "run-zz"], "no training run 'run-zz'"),
        (["runs", "search", "--metric", "metrics/mAP50(B)~0.5"], "unknown operator"),
        (["runs", "compare", "run-a"], "at least two"),
        (["runs", "tag", "run-a", "bad tag"], "letters, digits"),
    ]
    for argv, message in cases:
        assert cli.main([*argv, "--workspace", root, "--json"]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    cli.main(["experiments", "create", "dup", "--workspace", root])
    capsys.readouterr()
    assert cli.main(["experiments", "create", "DUP", "--workspace", root]) == 1
    assert "already exists" in capsys.readouterr().err


def test_ensure_experiment_reuses_a_name_in_any_case(ws: Workspace) -> None:
    ex.create_experiment(ws, "Sweep")
    with ws.session() as s:
        first = ex.ensure_experiment(s, "sweep", ws.default_project_id()).id
        second = ex.ensure_experiment(s, " new one ", ws.default_project_id())
        assert second.name == "new one"
    with ws.session() as s:
        assert ex.ensure_experiment(s, "SWEEP", ws.default_project_id()).id == first
    assert [e["name"] for e in ex.list_experiments(ws)] == ["Sweep", "new one"]
