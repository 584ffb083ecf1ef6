"""Training through the job runner, with a fake trainer child that speaks the job protocol.

The fake reads the run's job.json like a real trainer, writes ``train/weights/last.pt``
each epoch and is steered by ``FAKE_MODE`` (ok, crash, hang) and ``FAKE_GATE`` (a file it
waits for after epoch 1), so every test is deterministic and needs no torch.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from desktop_app import cli
from desktop_app.core import jobs, training
from desktop_app.core.dataset_import import import_yolo
from desktop_app.core.executors import LocalExecutor
from desktop_app.core.jobs import JobManager
from desktop_app.core.models import DatasetVersion, Experiment, TrainingRun
from desktop_app.core.training import TrainingError, TrainOptions
from desktop_app.core.workspace import Workspace

FAKE_TRAINER = r"""
import json, os, signal, sys, time
from pathlib import Path

spec = json.loads(Path(sys.argv[sys.argv.index("--spec") + 1]).read_text())
mode = os.environ.get("FAKE_MODE", "ok")
gate = os.environ.get("FAKE_GATE")

def emit(event, **fields):
    print(json.dumps({"v": 1, "event": event, **fields}), flush=True)

weights = Path(spec["run_dir"]) / "train" / "weights"
weights.mkdir(parents=True, exist_ok=True)
first = 1
if spec.get("resume"):
    resume = Path(spec["resume"])
    assert resume.is_file(), resume
    first = int(resume.read_text()) + 1
    print(f"resuming from {resume} at epoch {first}", file=sys.stderr)
emit("start", device="cpu", pid=os.getpid())
emit("train_start", epochs=spec["epochs"], device="cpu", threads=1)
print(f"task={spec['task']} data={spec['data']}", file=sys.stderr)
for epoch in range(first, spec["epochs"] + 1):
    if mode == "crash" and epoch == 2:
        print("RuntimeError: the fake trainer crashed", file=sys.stderr)
        sys.exit(1)
    (weights / "last.pt").write_text(str(epoch))
    emit("epoch_end", epoch=epoch, epochs=spec["epochs"], last=str(weights / "last.pt"),
         metrics={"metrics/mAP50(B)": 0.1 * epoch, "train/box_loss": 1.0 / epoch})
    if mode == "hang":
        try:
            time.sleep(300)
        except KeyboardInterrupt:
            print("interrupted, stopping", file=sys.stderr)
            sys.exit(130)
    if gate and epoch == first:
        while not Path(gate).exists():
            time.sleep(0.02)
(weights / "best.pt").write_text("best")
emit("validation", primary_metric={"key": "metrics/mAP50-95(B)", "value": 0.25},
     per_class=[{"class": "circle", "ap50": 0.5}])
emit("end", status="completed", best=str(weights / "best.pt"), last=str(weights / "last.pt"),
     metrics={"metrics/mAP50(B)": 0.1 * spec["epochs"]}, mlflow_run_id=None, warnings=[],
     device="cpu")
"""


@pytest.fixture
def shapes(ws: Workspace, sample: Path) -> Workspace:
    import_yolo(ws, sample, "shapes", seed=42)
    return ws


@pytest.fixture
def fake_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)

    def command(framework: str, spec_path: Path) -> list[str]:
        return [sys.executable, str(script), "train", "--spec", str(spec_path)]

    monkeypatch.setattr(training, "trainer_command", command)
    monkeypatch.setenv("FAKE_MODE", "ok")
    monkeypatch.delenv("FAKE_GATE", raising=False)
    monkeypatch.delenv(training.MIN_FREE_ENV, raising=False)
    yield script


def _opts(**kw: Any) -> TrainOptions:
    return TrainOptions(dataset="shapes", epochs=3, imgsz=32, batch=2, device="cpu", **kw)


def _run(ws: Workspace, run_id: str) -> TrainingRun:
    with ws.session() as s:
        run = s.get(TrainingRun, run_id)
        assert run is not None
        s.expunge(run)
        return run


def _until(predicate: Any, limit_s: float = 60.0) -> None:
    """Loop until ``predicate()`` holds; a guard against hanging, not a timing assertion."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_run_training_goes_through_a_job(shapes: Workspace, fake_trainer: Path) -> None:
    seen: list[str] = []
    summary = training.run_training(
        shapes, _opts(experiment="sweep"), on_event=lambda e: seen.append(e["event"])
    )
    assert summary["status"] == "completed"
    assert seen == [
        "start",
        "train_start",
        "epoch_end",
        "epoch_end",
        "epoch_end",
        "validation",
        "end",
    ]
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3]
    assert summary["epochs"][2]["metrics"]["metrics/mAP50(B)"] == pytest.approx(0.3)
    assert summary["dataset"] == "shapes" and summary["dataset_version"] == "v1"
    assert summary["task"] == "detect" and summary["experiment"] == "sweep"
    assert summary["primary_metric"] == {"key": "metrics/mAP50-95(B)", "value": 0.25}
    assert summary["validation"]["per_class"] == [{"class": "circle", "ap50": 0.5}]
    assert summary["job_status"] == "completed"
    assert summary["progress"]["epoch"] == 3 and summary["progress"]["last"].endswith("last.pt")
    assert summary["best_checkpoint"].endswith("best.pt")
    run_dir = Path(summary["run_dir"])
    spec = json.loads((run_dir / "job.json").read_text())
    assert spec["task"] == "detect" and spec["data"].endswith("data.yaml")
    assert spec["mlflow_experiment"] == "sweep" and spec.get("resume") is None
    assert len((run_dir / "events.jsonl").read_text().splitlines()) == 7
    with shapes.session() as s:
        assert s.scalar(select(Experiment.name)) == "sweep"
    row = training.list_runs(shapes)[0]
    assert row["experiment"] == "sweep" and row["job_status"] == "completed"
    assert row["starred"] is False and row["tags"] == [] and row["notes"] is None


def test_a_crash_fails_the_run_with_its_log_tail(
    shapes: Workspace, fake_trainer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "crash")
    with pytest.raises(TrainingError, match="the fake trainer crashed"):
        training.run_training(shapes, _opts())
    run = _run(shapes, training.list_runs(shapes)[0]["id"])
    assert run.status == "failed" and run.error is not None
    assert "exited with code 1" in run.error and "fake trainer crashed" in run.error


def test_resume_continues_the_same_run(
    shapes: Workspace, fake_trainer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "crash")
    with pytest.raises(TrainingError):
        training.run_training(shapes, _opts())
    run_id = training.list_runs(shapes)[0]["id"]
    first_job = jobs.latest_job_for_run(shapes, run_id)
    assert first_job is not None and first_job.progress["last"].endswith("last.pt")
    monkeypatch.setenv("FAKE_MODE", "ok")
    job_id = training.resume_run(shapes, run_id)
    job = jobs.get_job(shapes, job_id)
    assert job.spec["resume"] == first_job.progress["last"] and job.run_id == run_id
    assert _run(shapes, run_id).status == "queued"
    assert _run(shapes, run_id).resumed_from == first_job.id
    summary = training.wait_resumed(shapes, job_id)
    assert summary["id"] == run_id and summary["status"] == "completed"
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3]
    assert summary["resumed_from"] == first_job.id
    log = (Path(summary["run_dir"]) / "train.log").read_text()
    assert "at epoch 2" in log  # the child resumed after the epoch its checkpoint holds
    with pytest.raises(TrainingError, match="completed"):
        training.resume_run(shapes, run_id)


def test_resume_needs_a_checkpoint(shapes: Workspace, fake_trainer: Path) -> None:
    submitted = training.submit_training(shapes, _opts())
    with JobManager(shapes, resources=["cpu"]) as manager:
        with pytest.raises(TrainingError, match="queued"):
            training.resume_run(shapes, submitted["run"])
        manager.cancel(submitted["job"])
    assert _run(shapes, submitted["run"]).status == "cancelled"
    with pytest.raises(TrainingError, match="no checkpoint"):
        training.resume_run(shapes, submitted["run"])


def test_disk_space_refusal_leaves_nothing_behind(
    shapes: Workspace, fake_trainer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with shapes.session() as s:
        versions = s.scalar(select(func.count()).select_from(DatasetVersion))
    monkeypatch.setenv(training.MIN_FREE_ENV, str(1 << 60))
    with pytest.raises(TrainingError, match="GiB free in"):
        training.run_training(shapes, _opts())
    assert not (shapes.root / "runs").exists() or not any((shapes.root / "runs").iterdir())
    with shapes.session() as s:
        assert s.scalar(select(func.count()).select_from(TrainingRun)) == 0
        assert s.scalar(select(func.count()).select_from(DatasetVersion)) == versions
    assert jobs.list_jobs(shapes) == []


def test_cancel_a_running_training_job(
    shapes: Workspace, fake_trainer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    submitted = training.submit_training(shapes, _opts())
    with JobManager(shapes, resources=["cpu"]) as manager:
        manager.step()
        _until(
            lambda: (
                (manager.poll() or True)
                and bool(jobs.get_job(shapes, submitted["job"]).progress.get("epoch"))
            )
        )
        final = manager.cancel(submitted["job"], grace_s=10)
    assert final.status == "cancelled"
    run = _run(shapes, submitted["run"])
    assert run.status == "cancelled" and run.finished_at is not None
    assert (
        "interrupted, stopping"
        in (Path(training.run_summary(shapes, run.id)["run_dir"]) / "train.log").read_text()
    )


def test_reattach_after_a_restart_follows_the_child_to_its_end(
    shapes: Workspace, fake_trainer: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv("FAKE_GATE", str(gate))
    submitted = training.submit_training(shapes, _opts())
    first = JobManager(shapes, resources=["cpu"])
    first.step()
    _until(
        lambda: (
            (first.poll() or True)
            and bool(jobs.get_job(shapes, submitted["job"]).progress.get("epoch"))
        )
    )
    first.close()  # the desktop goes away; the child keeps running in its own session
    second = JobManager(shapes, resources=["cpu"])  # a new desktop, same workspace
    assert second.lead()
    assert jobs.get_job(shapes, submitted["job"]).status == "running"
    gate.touch()
    final = second.wait(submitted["job"])
    second.close()
    assert final.status == "completed" and final.exit_code is None  # not its parent: unknown
    summary = training.run_summary(shapes, submitted["run"])
    assert summary["status"] == "completed" and [e["epoch"] for e in summary["epochs"]] == [1, 2, 3]
    _reap(first)


def test_a_child_gone_while_nobody_watched_is_orphaned(
    shapes: Workspace, fake_trainer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    submitted = training.submit_training(shapes, _opts())
    first = JobManager(shapes, resources=["cpu"])
    first.step()
    _until(
        lambda: (
            (first.poll() or True)
            and bool(jobs.get_job(shapes, submitted["job"]).progress.get("epoch"))
        )
    )
    first.close()
    pid = jobs.get_job(shapes, submitted["job"]).handle.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _until(lambda: not first.executor.is_alive(jobs.get_job(shapes, submitted["job"]).handle))
    with JobManager(shapes, resources=["cpu"]) as second:
        assert second.lead()
    job = jobs.get_job(shapes, submitted["job"])
    assert job.status == "orphaned"
    run = _run(shapes, submitted["run"])
    assert run.status == "failed" and run.error is not None
    assert f"outpost runs resume {run.id}" in run.error and "no desktop was watching" in run.error
    assert training.resume_run(shapes, run.id).startswith("job-")  # its last.pt resumes it
    _reap(first)


def test_cli_jobs_and_runs_commands(
    shapes: Workspace, fake_trainer: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = ["--workspace", str(shapes.root), "--json"]
    submitted = training.submit_training(shapes, _opts())
    assert cli.main(["jobs", "list", *root]) == 0
    listed = json.loads(capfd.readouterr().out)
    assert [(j["id"], j["status"]) for j in listed] == [(submitted["job"], "queued")]
    assert cli.main(["jobs", "work", "--until-idle", *root]) == 0
    capfd.readouterr()
    assert cli.main(["jobs", "show", submitted["job"], *root]) == 0
    shown = json.loads(capfd.readouterr().out)
    assert shown["status"] == "completed" and shown["run_id"] == submitted["run"]
    assert cli.main(["jobs", "logs", submitted["job"], "--tail", "1", *root]) == 0
    assert json.loads(capfd.readouterr().out)["lines"] == [
        f"task=detect data={shapes.root / 'runs' / submitted['run'] / 'data' / 'data.yaml'}"
    ]
    assert cli.main(["runs", "resume", submitted["run"], *root]) == 1
    assert "completed" in capfd.readouterr().err


def _reap(manager: JobManager) -> None:
    """Collect the exit status of children a closed manager started (no zombies left)."""
    executor = manager.executor
    assert isinstance(executor, LocalExecutor)
    for proc in executor._procs.values():
        proc.wait(timeout=60)
