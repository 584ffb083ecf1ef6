"""A cancel (SIGINT) ends a trainer child at once: reported, exit 130, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from desktop_app.core.executors import Handle, Launch, LocalExecutor, process_start_time
from trainers.child import CANCEL_MESSAGE, EXIT_CANCELLED
from trainers.protocol import parse_event

REPO = Path(__file__).resolve().parents[2]

# A "trainer" that reports its start, then keeps a non-daemon thread and a child process
# busy, as data loaders do; the thread would hold the interpreter's normal exit forever.
TRAIN_MODULE = """
import subprocess, sys, threading, time
from pathlib import Path

def run_training(spec, events):
    stop = threading.Event()
    threading.Thread(target=stop.wait, name="loader").start()
    helper = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"])
    Path(spec.run_dir, "helper.pid").write_text(str(helper.pid))
    events.emit("epoch_end", epoch=1, epochs=5, metrics={"train/loss": 1.0}, last=None)
    while True:
        time.sleep(0.01)
"""


def _until(predicate: object, limit_s: float = 60.0) -> None:
    """Wait until ``predicate()`` holds: a guard against hanging, not a timing assertion."""
    deadline = time.monotonic() + limit_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def _spec(tmp_path: Path) -> Path:
    spec = {
        "v": 1,
        "kind": "train",
        "framework": "fake",
        "task": "classify",
        "model": "fake",
        "data": str(tmp_path),
        "run_dir": str(tmp_path),
        "config_dir": str(tmp_path / "cfg"),
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(spec))
    return path


def _gone(pid: int) -> bool:
    return process_start_time(pid) is None


def test_sigint_ends_the_child_at_once_with_the_cancel_reported(tmp_path: Path) -> None:
    (tmp_path / "fake_trainer.py").write_text(textwrap.dedent(TRAIN_MODULE))
    code = (
        "import sys; from trainers.child import run_as_main; "
        "sys.argv = ['x', 'train', '--spec', sys.argv[1]]; "
        "run_as_main('fake_trainer', 'fake_trainer')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    events_path, log_path = tmp_path / "events.jsonl", tmp_path / "train.log"
    executor = LocalExecutor()
    handle = executor.start(
        Launch(
            job_id="job-test",
            command=[sys.executable, "-c", code, str(_spec(tmp_path))],
            events_path=events_path,
            log_path=log_path,
            env=env,
        )
    )
    _until(lambda: (tmp_path / "helper.pid").exists() and b"epoch_end" in events_path.read_bytes())
    helper = int((tmp_path / "helper.pid").read_text())
    # a long grace: SIGTERM would come only after 30 s, SIGKILL after 60 s
    executor.signal_cancel(handle, grace_s=60)
    assert executor.exit_code(handle) == EXIT_CANCELLED  # exited on SIGINT, no SIGTERM/KILL
    events = [parse_event(line) for line in events_path.read_text().splitlines()]
    assert events[-1]["event"] == "error" and events[-1]["message"] == CANCEL_MESSAGE
    assert CANCEL_MESSAGE in log_path.read_text()
    # its helper ignored SIGINT; it went with the rest of the child's process group
    _until(lambda: _gone(helper), 10)


def test_kill_leftovers_leaves_a_live_child_alone(tmp_path: Path) -> None:
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        executor = LocalExecutor()
        handle = Handle(pid=proc.pid, pid_started=process_start_time(proc.pid))
        executor._kill_leftovers(handle)
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_a_cancelled_ultralytics_run_is_cancelled_and_resumes(tmp_path: Path) -> None:
    from desktop_app.core import datasets
    from desktop_app.core.dataset_sample import write_sample_dataset
    from desktop_app.core.jobs import JobManager, get_job
    from desktop_app.core.models import TrainingRun
    from desktop_app.core.training import (
        TrainOptions,
        resume_run,
        submit_training,
        wait_resumed,
    )
    from desktop_app.core.workspace import Workspace

    write_sample_dataset(tmp_path / "src", seed=0, count=8, size=64)
    ws = Workspace.open(tmp_path / "ws")
    try:
        datasets.import_dataset(ws, tmp_path / "src", "shapes", "yolo")
        ids = submit_training(
            ws,
            TrainOptions(
                dataset="shapes",
                model="yolov8n.yaml",
                epochs=4,
                imgsz=32,
                batch=4,
                device="cpu",
                workers=1,
                extra={"plots": False},
            ),
        )
        manager = JobManager(ws, resources=["cpu"])

        def first_epoch_done() -> bool:
            manager.step()
            job = get_job(ws, ids["job"])
            assert job.status in ("queued", "running"), job.error
            return bool(job.progress.get("last"))

        _until(first_epoch_done, 600)
        job = manager.cancel(ids["job"], grace_s=60)
        assert job.status == "cancelled"
        assert job.exit_code == EXIT_CANCELLED  # it went on SIGINT, before any SIGTERM
        assert Path(job.progress["last"]).is_file()
        with ws.session() as s:
            run = s.get(TrainingRun, ids["run"])
            assert run is not None
            assert run.status == "cancelled"
            epochs_done = int(job.progress["epoch"])
        manager.close()
        assert epochs_done < 4
        # the cancelled run continues from its last checkpoint, as the same run
        summary = wait_resumed(ws, resume_run(ws, ids["run"]))
        assert summary["id"] == ids["run"] and summary["status"] == "completed"
        assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3, 4]
    finally:
        ws.close()
