"""``outpost jobs logs --follow``: the child's log and its epochs, interleaved, to the end."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from desktop_app.cli import main
from desktop_app.core import jobs
from desktop_app.core.executors import Launch
from desktop_app.core.jobs import JobInfo, JobManager, follow_logs, format_event, submit
from desktop_app.core.workspace import Workspace


def _event(name: str, **fields: Any) -> str:
    return json.dumps({"v": 1, "event": name, **fields})


def _child(fail: bool) -> str:
    """Python code for a child that reports two epochs, logging around them."""
    lines = [
        "import sys, time",
        "def ev(s): print(s, flush=True)",
        "def log(s): print(s, file=sys.stderr, flush=True)",
        f"ev({_event('start', device='cpu', pid=1)!r})",
        f"ev({_event('train_start', epochs=2, device='cpu', threads=2)!r})",
        "log('loading data')",
        "log('  1/2 progress 50%\\r  1/2 progress 100%')",
    ]
    for epoch in (1, 2):
        metrics = {
            "train/box_loss": 1.0 / epoch,
            "train/cls_loss": 0.5 / epoch,
            "metrics/mAP50(B)": 0.4 * epoch,
            "metrics/mAP50-95(B)": 0.25 * epoch,
        }
        lines.append("time.sleep(0.2)")
        lines.append(f"ev({_event('epoch_end', epoch=epoch, epochs=2, metrics=metrics)!r})")
        lines.append(f"log('after epoch {epoch}')")
    if fail:
        lines.append(f"ev({_event('error', message='CUDA out of memory')!r})")
        lines.append("sys.exit(1)")
    else:
        lines.append(
            f"ev({_event('validation', primary_metric={'key': 'metrics/mAP50-95(B)', 'value': 0.5})!r})"
        )
        lines.append(f"ev({_event('end', status='completed', best='/r/best.pt')!r})")
    return "\n".join(lines)


@dataclass
class ChildKind:
    """Runs ``spec["code"]``; events to ``events.jsonl``, stderr to ``job.log``."""

    root: Path

    def prepare(self, ws: Any, job: JobInfo) -> Launch:
        return Launch(
            job_id=job.id,
            command=[sys.executable, "-c", job.spec["code"]],
            events_path=self.root / job.id / "events.jsonl",
            log_path=self.root / job.id / "job.log",
        )

    def record(self, ws: Any, job: JobInfo, event: dict[str, Any], progress: Any) -> None:
        return None

    def finish(self, ws: Any, job: JobInfo, status: str, error: str | None) -> None:
        return None


def _manager(ws: Workspace, tmp_path: Path) -> JobManager:
    return JobManager(ws, resources=["cpu"], kinds={"script": ChildKind(tmp_path / "jobs")})


def test_format_event_gives_one_line_per_epoch() -> None:
    epoch = {
        "event": "epoch_end",
        "epoch": 3,
        "epochs": 10,
        "metrics": {
            "train/box_loss": 1.25,
            "train/cls_loss": 0.5,
            "metrics/mAP50-95(B)": 0.123,
            "lr/pg0": 0.01,
        },
    }
    assert format_event(epoch, "detect") == (
        "epoch 3/10  loss 1.75 (box_loss 1.25, cls_loss 0.5)  mAP50-95(B) 0.123"
    )
    timm = {"event": "epoch_end", "epoch": 1, "epochs": 2, "metrics": {"train/loss": 2.0}}
    timm["metrics"]["metrics/accuracy_top1"] = 0.75  # type: ignore[index]
    assert format_event(timm, "classify") == "epoch 1/2  loss 2  accuracy_top1 0.75"
    # no metric of the task's: the first metrics/ key stands in
    other = {"event": "epoch_end", "epoch": 1, "epochs": 1, "metrics": {"metrics/x": 1.0}}
    assert format_event(other, "segment") == "epoch 1/1  x 1"
    assert format_event({"event": "error", "message": "boom"}) == "[job] trainer error: boom"
    assert format_event({"event": "unknown"}) is None


def test_follow_interleaves_log_and_epochs_until_the_end(ws: Workspace, tmp_path: Path) -> None:
    job_id = submit(ws, "script", {"code": _child(fail=False), "task": "detect"}, resource="cpu")
    out = io.StringIO()
    manager = _manager(ws, tmp_path)
    job = follow_logs(ws, job_id, out, manager=manager)
    manager.close()
    assert job.status == "completed"
    lines = out.getvalue().splitlines()
    expected = [
        "[job] started on cpu (pid 1)",
        "[job] training 2 epochs on cpu, 2 threads",
        "loading data",
        "  1/2 progress 100%",  # a progress bar's last redraw
        "epoch 1/2  loss 1.5 (box_loss 1, cls_loss 0.5)  mAP50-95(B) 0.25",
        "after epoch 1",
        "epoch 2/2  loss 0.75 (box_loss 0.5, cls_loss 0.25)  mAP50-95(B) 0.5",
        "after epoch 2",
        "[job] validation: mAP50-95(B) 0.5",
        "[job] trainer finished (completed), best checkpoint /r/best.pt",
    ]
    assert sorted(lines[:-1]) == sorted(expected)
    events_only = [ln for ln in lines if ln.startswith(("[job]", "epoch"))]
    assert events_only[:-1] == [ln for ln in expected if ln.startswith(("[job]", "epoch"))]
    log_only = [ln for ln in lines if not ln.startswith(("[job]", "epoch"))]
    assert log_only == ["loading data", "  1/2 progress 100%", "after epoch 1", "after epoch 2"]
    assert lines[-1] == f"[job] {job_id} completed"


def test_follow_a_failed_job_and_the_cli_exit_code(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = submit(ws, "script", {"code": _child(fail=True), "task": "detect"}, resource="cpu")
    out = io.StringIO()
    manager = _manager(ws, tmp_path)
    job = follow_logs(ws, job_id, out, manager=manager)
    manager.close()
    assert job.status == "failed"
    lines = out.getvalue().splitlines()
    assert "[job] trainer error: CUDA out of memory" in lines
    assert lines[-1] == f"[job] {job_id} failed: CUDA out of memory"
    # following an ended job prints its log tail and epochs, then the verdict; exit code 1
    rc = main(["--workspace", str(ws.root), "jobs", "logs", job_id, "--follow", "--tail", "3"])
    text = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert text[:3] == ["  1/2 progress 100%", "after epoch 1", "after epoch 2"]
    assert "epoch 2/2  loss 0.75 (box_loss 0.5, cls_loss 0.25)  mAP50-95(B) 0.5" in text
    assert text[-1] == f"[job] {job_id} failed: CUDA out of memory"
    assert jobs.get_job(ws, job_id).status == "failed"


def test_follow_of_a_completed_job_exits_zero(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = submit(ws, "script", {"code": _child(fail=False), "task": "detect"}, resource="cpu")
    manager = _manager(ws, tmp_path)
    follow_logs(ws, job_id, io.StringIO(), manager=manager)
    manager.close()
    rc = main(["--workspace", str(ws.root), "jobs", "logs", job_id, "--follow"])
    assert rc == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"[job] {job_id} completed"
