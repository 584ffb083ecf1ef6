"""Export jobs: a run's export queued, run by the JobManager in a child process, followed,
cancelled (nothing left) and failed (one-line error); the CLI's ``--detach`` and ``jobs``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop_app import cli
from desktop_app.core import datasets, export_jobs, jobs
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.errors import NotFoundError
from desktop_app.core.export_jobs import export_progress, submit_export
from desktop_app.core.export_worker import PAUSE_ENV, parity_summary
from desktop_app.core.exports import list_exports
from desktop_app.core.jobs import JobManager, format_event, get_job, job_logs, list_jobs
from desktop_app.core.models import Export, Job, TrainingRun
from desktop_app.core.training import TrainOptions, run_training
from desktop_app.core.workspace import Workspace
from exporters.base import ExportError


def _until(predicate: Any, limit_s: float = 120.0) -> None:
    """Loop until ``predicate()`` holds; a guard against hanging, not a timing assertion."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, str]]:
    """A workspace with one tiny trained detector (1 epoch at 32 px on 8 images)."""
    root = tmp_path_factory.mktemp("export_jobs")
    write_sample_dataset(root / "shapes", seed=1, count=8, size=48)
    ws = Workspace.open(root / "ws")
    datasets.import_dataset(ws, root / "shapes", "shapes")
    summary = run_training(
        ws,
        TrainOptions(
            dataset="shapes",
            model="yolov8n.yaml",
            epochs=1,
            imgsz=32,
            batch=4,
            device="cpu",
            workers=0,
            seed=0,
            extra={"plots": False},
        ),
    )
    assert summary["status"] == "completed"
    yield ws, str(summary["id"])
    ws.close()


@pytest.fixture
def broken(ws: Workspace, sample: Path) -> tuple[Workspace, str]:
    """A workspace whose completed run's checkpoint is not a checkpoint (its export fails)."""
    datasets.import_dataset(ws, sample, "shapes")
    weights = Path(ws.root) / "runs" / "run-broken" / "best.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not a checkpoint")
    with ws.session() as s:
        _, version = datasets.find_version(s, "shapes")
        s.add(
            TrainingRun(
                id="run-broken",
                project_id=ws.default_project_id(),
                dataset_version_id=version.id,
                framework="ultralytics",
                task="detect",
                model="yolov8n.yaml",
                status="completed",
                params={"imgsz": 32},
                run_dir="runs/run-broken",
                best_checkpoint="runs/run-broken/best.pt",
                final_metrics={},
            )
        )
    return ws, "run-broken"


def _exports_of(ws: Workspace, run_id: str) -> list[str]:
    return [e["id"] for e in list_exports(ws) if e["run_id"] == run_id]


@pytest.mark.slow  # trains a tiny detector once, then exports it (~30 s each here)
def test_an_export_job_runs_in_a_child_and_records_the_export(
    trained: tuple[Workspace, str],
) -> None:
    ws, run_id = trained
    before = set(_exports_of(ws, run_id))
    job = submit_export(ws, run_id, ["onnx"])
    assert (job.kind, job.status, job.resource) == ("export", "queued", "cpu")
    assert job.spec["run_id"] == run_id and job.run_id is None
    seen: list[dict[str, Any]] = []
    with JobManager(ws, resources=["cpu"]) as manager:
        final = manager.wait(job.id, on_event=seen.append)
    assert final.status == "completed", final.error
    assert [e["event"] for e in seen] == ["start", "format_start", "format_end", "end"]
    final = get_job(ws, job.id)
    assert export_progress(final) == (1, 1)
    assert final.handle.pid is not None and final.exit_code == 0
    (new,) = set(_exports_of(ws, run_id)) - before
    row = next(e for e in list_exports(ws) if e["id"] == new)
    assert row["status"] == "completed" and row["format"] == "onnx"
    assert Path(row["package"]).is_file()
    assert seen[1]["export_id"] == new and seen[3]["exports"][0]["id"] == new
    assert seen[2]["status"] == "completed" and "matched" in seen[2]["parity"]
    lines = [format_event(e) for e in seen]
    assert lines[1] == f"[job] exporting onnx (fp32), format 1/1, as {new}"
    assert lines[2] is not None and lines[2].startswith("[job] onnx (fp32) completed, parity ")
    assert lines[3] == f"[job] export finished (completed): {new} onnx completed"
    logs = job_logs(ws, job.id)
    assert logs["events_path"].endswith(f"jobs/{job.id}/events.jsonl")
    spec = json.loads((Path(ws.root) / "jobs" / job.id / "export.json").read_text())
    assert spec["formats"] == ["onnx"]


@pytest.mark.slow  # trains a tiny detector once, then exports it (~30 s each here)
def test_a_cancelled_export_job_leaves_no_package_and_no_record(
    trained: tuple[Workspace, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, run_id = trained
    before = set(_exports_of(ws, run_id))
    monkeypatch.setenv(PAUSE_ENV, "120")  # the child waits after recording its format
    job = submit_export(ws, run_id, ["onnx"])
    with JobManager(ws, resources=["cpu"]) as manager:

        def recorded() -> bool:
            manager.step()
            return export_progress(get_job(ws, job.id))[0] == 1

        _until(recorded)
        (new,) = set(_exports_of(ws, run_id)) - before
        with ws.session() as s:
            assert s.get(Export, new).status == "completed"  # then the cancel lands
        assert (Path(ws.root) / "exports" / new).is_dir()
        final = manager.cancel(job.id, grace_s=20)
    assert final.status == "cancelled" and final.error == "cancelled by the user"
    assert final.exit_code == 130  # the child took the SIGINT: it cleaned up and said so
    events, _ = jobs.read_events(Path(ws.root) / "jobs" / job.id / "events.jsonl", 0)
    assert events[-1]["event"] == "error" and events[-1]["message"].startswith("export cancelled")
    assert set(_exports_of(ws, run_id)) == before
    assert not (Path(ws.root) / "exports" / new).exists()
    assert final.progress["export_ids"] == [new]


def test_a_failing_export_job_fails_with_a_one_line_error(
    broken: tuple[Workspace, str],
) -> None:
    ws, run_id = broken
    job = submit_export(ws, run_id, ["onnx"])
    with JobManager(ws, resources=["cpu"]) as manager:
        final = manager.wait(job.id)
    assert final.status == "failed"
    assert final.error is not None and "\n" not in final.error
    (exp,) = list_exports(ws)
    assert exp["status"] == "failed" and exp["package"] is None
    assert final.error.startswith(f"export {exp['id']} (onnx) failed: ")
    assert exp["error"] in final.error
    assert not (Path(ws.root) / "exports" / exp["id"]).exists()
    done = final.progress["formats"]
    assert [(d["format"], d["status"]) for d in done] == [("onnx", "failed")]


def test_a_refused_export_queues_nothing(broken: tuple[Workspace, str]) -> None:
    ws, run_id = broken
    with pytest.raises(ExportError, match="no int8 precision"):
        submit_export(ws, run_id, ["onnx:int8"])
    with pytest.raises(ExportError, match="at least one format"):
        submit_export(ws, run_id, [])
    with ws.session() as s:
        s.get(TrainingRun, run_id).status = "failed"
    with pytest.raises(NotFoundError, match="run-broken is failed, not completed"):
        submit_export(ws, run_id, ["onnx"])
    with pytest.raises(NotFoundError):
        submit_export(ws, "run-none", ["onnx"])
    assert list_jobs(ws) == []


def test_a_killed_export_keeps_its_recorded_exports_and_drops_half_written_folders(
    ws: Workspace,
) -> None:
    half = Path(ws.root) / "exports" / "exp-half"
    (half / "build").mkdir(parents=True)
    (half / "build" / "model.onnx").write_bytes(b"partial")
    job_id = jobs.submit(ws, "export", {"run_id": "run-x", "formats": ["onnx"]}, resource="cpu")
    with ws.session() as s:
        row = s.get(Job, job_id)
        row.status = "running"
        row.progress = {"export_ids": ["exp-half"], "formats_total": 1}
    export_jobs.EXPORT_JOBS.finish(ws, get_job(ws, job_id), "orphaned", None)
    assert not half.exists()
    error = get_job(ws, job_id).error
    assert error is not None and error.startswith(
        "the export process ended while no desktop was watching; "
        "export again with: outpost export run-x --format onnx"
    )


def test_export_event_lines() -> None:
    assert parity_summary({"status": "not_run", "reason": "CoreML runs on macOS"}) == (
        "not run: CoreML runs on macOS"
    )
    assert parity_summary({"top1_agreement": 1.0}) == "top-1 1.000 agree"
    start = {"event": "format_start", "format": "openvino", "precision": "fp16"}
    start.update(index=2, total=3, export_id="exp-1")
    assert format_event(start) == "[job] exporting openvino (fp16), format 2/3, as exp-1"
    end = {"event": "format_end", "format": "onnx", "precision": "fp32", "status": "failed"}
    end["error"] = "onnx export failed: boom"
    assert format_event(end) == "[job] onnx (fp32) failed: onnx export failed: boom"
    error = {"event": "error", "message": "export cancelled", "exports": []}
    assert format_event(error) == "[job] export error: export cancelled"
    assert format_event({"event": "error", "message": "x"}) == "[job] trainer error: x"


def test_cli_detach_queues_an_export_job_and_jobs_commands_show_it(
    broken: tuple[Workspace, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ws, run_id = broken
    spawned: list[Any] = []
    monkeypatch.setattr(jobs, "spawn_worker", lambda w: spawned.append(w) or 4242)
    base = ["--workspace", str(ws.root)]
    code = cli.main(["export", run_id, "--format", "onnx", "--detach", "--json", *base])
    assert code == 0 and len(spawned) == 1
    out = json.loads(capfd.readouterr().out)
    assert out == {"job": out["job"], "run": run_id, "worker_pid": 4242}
    job_id = out["job"]
    assert cli.main(["jobs", "list", "--json", *base]) == 0
    (row,) = json.loads(capfd.readouterr().out)
    assert (row["id"], row["kind"], row["status"]) == (job_id, "export", "queued")
    assert row["run_id"] == run_id and row["epoch"] == "0/? formats"
    assert cli.main(["jobs", "logs", job_id, "--follow", *base]) == 1  # it leads: runs it
    text = capfd.readouterr().out.splitlines()
    assert any(ln.startswith("[job] exporting onnx (fp32), format 1/1, as ") for ln in text)
    assert text[-1].startswith(f"[job] {job_id} failed: export exp-")
    assert cli.main(["jobs", "cancel", job_id, *base]) == 1
    assert "has already ended (failed)" in capfd.readouterr().err
    assert cli.main(["export", run_id, "--format", "onnx", "--detach", *base]) == 0
    queued = capfd.readouterr().out
    assert queued.startswith("job job-") and "(worker pid 4242 started)" in queued
    second = queued.split()[1]
    assert cli.main(["jobs", "cancel", second, *base]) == 0
    assert capfd.readouterr().out.strip() == f"job {second}: cancelled"
