"""The job queue and the local executor, with tiny child processes (no trainer, no torch)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from desktop_app.core import jobs
from desktop_app.core.errors import InvalidArgumentError
from desktop_app.core.executors import Handle, Launch, LocalExecutor, process_start_time
from desktop_app.core.jobs import JobInfo, JobManager, read_events, submit
from desktop_app.core.workspace import Workspace

EVENT = '{"v": 1, "event": "%s"}'


@dataclass
class ScriptKind:
    """A job kind whose child runs ``spec["code"]`` with python; records what happens."""

    root: Path
    events: list[tuple[str, str]] = field(default_factory=list)
    finished: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def prepare(self, ws: Any, job: JobInfo) -> Launch:
        folder = self.root / job.id
        return Launch(
            job_id=job.id,
            command=[sys.executable, "-c", job.spec["code"]],
            events_path=folder / "events.jsonl",
            log_path=folder / "job.log",
        )

    def record(
        self, ws: Any, job: JobInfo, event: dict[str, Any], progress: dict[str, Any]
    ) -> None:
        self.events.append((job.id, event["event"]))

    def finish(self, ws: Any, job: JobInfo, status: str, error: str | None) -> None:
        self.finished[job.id] = (status, error)


@dataclass
class RecordingExecutor:
    """Starts nothing; remembers the order of launches and the resources they got."""

    name: str = "recording"
    started: list[str] = field(default_factory=list)

    def start(self, job: Launch) -> Handle:
        self.started.append(job.job_id)
        return Handle(pid=None, external_id=job.job_id)

    def is_alive(self, handle: Handle) -> bool:
        return True

    def signal_cancel(self, handle: Handle, grace_s: float) -> None:
        return None

    def exit_code(self, handle: Handle) -> int | None:
        return None


def _until(predicate: Any, limit_s: float = 60.0) -> None:
    """Loop until ``predicate()`` holds; a guard against hanging, not a timing assertion."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_queue_order_and_one_job_per_resource(ws: Workspace, tmp_path: Path) -> None:
    kind = ScriptKind(tmp_path)
    executor = RecordingExecutor()
    manager = JobManager(ws, executor, resources=["cuda:0", "cpu"], kinds={"script": kind})
    low = submit(ws, "script", {"code": ""}, resource="cpu")
    high = submit(ws, "script", {"code": ""}, resource="cpu", priority=5)
    gpu = submit(ws, "script", {"code": ""}, resource="auto")
    auto_cpu = submit(ws, "script", {"code": ""}, resource="auto")
    # priority first; "auto" takes the free GPU; the CPU holds one job; the 2nd auto waits
    assert manager.start_ready() == [high, gpu]
    assert jobs.get_job(ws, gpu).resource == "cuda:0"
    assert jobs.get_job(ws, low).status == "queued"
    assert manager.start_ready() == []
    # the CPU job ends: the older of the two waiting CPU-able jobs goes next
    manager._end(jobs.get_job(ws, high), "completed", None, 0)
    assert manager.start_ready() == [low]
    manager._end(jobs.get_job(ws, gpu), "completed", None, 0)
    assert manager.start_ready() == [auto_cpu]
    assert jobs.get_job(ws, auto_cpu).resource == "cuda:0"
    assert executor.started == [high, gpu, low, auto_cpu]
    manager.close()


def test_resources_from_device_strings() -> None:
    assert jobs.resource_for_device("auto") == "auto"
    assert jobs.resource_for_device("cpu") == "cpu"
    assert jobs.resource_for_device("0") == "cuda:0"
    assert jobs.resource_for_device("0,1") == "cuda:0,cuda:1"
    assert jobs.resource_for_device("cuda:2") == "cuda:2"
    assert jobs.detect_resources()[-1] == "cpu"


def test_events_are_read_from_the_file_a_complete_line_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(EVENT % "start" + "\nnot json\n" + '{"v": 1, "ev')
    events, offset = read_events(path, 0)
    assert [e["event"] for e in events] == ["start"]
    assert offset == len((EVENT % "start" + "\nnot json\n").encode())
    with open(path, "a") as fh:
        fh.write('ent": "epoch_end", "epoch": 1}\n')
    events, offset = read_events(path, offset)
    assert events == [{"v": 1, "event": "epoch_end", "epoch": 1}]
    assert offset == path.stat().st_size
    assert read_events(path, offset) == ([], offset)
    assert read_events(tmp_path / "missing.jsonl", 0) == ([], 0)


def test_a_reused_pid_is_not_taken_for_the_job(tmp_path: Path) -> None:
    executor = LocalExecutor()
    me = os.getpid()
    started = process_start_time(me)
    assert started is not None
    assert executor.is_alive(Handle(pid=me, pid_started=started))
    assert not executor.is_alive(Handle(pid=me, pid_started=started + "0"))
    assert not executor.is_alive(Handle(pid=None))


def test_a_job_runs_to_its_end_and_is_followed_from_its_file(ws: Workspace, tmp_path: Path) -> None:
    kind = ScriptKind(tmp_path)
    code = (
        "import time\n"
        f"print({EVENT % 'start'!r}, flush=True)\n"
        'import sys; sys.stdout.write(\'{"v": 1, "event": "lo\'); sys.stdout.flush()\n'
        "time.sleep(0.3)\n"
        'print(\'g", "message": "half"}\', flush=True)\n'
        f"print({EVENT % 'end'!r}, flush=True)\n"
    )
    job_id = submit(ws, "script", {"code": code}, resource="cpu")
    seen: list[str] = []
    with JobManager(ws, resources=["cpu"], kinds={"script": kind}) as manager:
        final = manager.wait(job_id, on_event=lambda e: seen.append(e["event"]))
    assert final.status == "completed" and final.exit_code == 0
    assert seen == ["start", "log", "end"]
    assert [e for j, e in kind.events if j == job_id] == ["start", "log", "end"]
    assert kind.finished[job_id] == ("completed", None)
    logs = jobs.job_logs(ws, job_id)
    assert logs["status"] == "completed" and Path(logs["events_path"]).is_file()


def test_a_child_exiting_nonzero_fails_with_its_log_tail(ws: Workspace, tmp_path: Path) -> None:
    kind = ScriptKind(tmp_path)
    code = "import sys\nprint('CUDA out of memory', file=sys.stderr)\nsys.exit(3)\n"
    job_id = submit(ws, "script", {"code": code}, resource="cpu")
    with JobManager(ws, resources=["cpu"], kinds={"script": kind}) as manager:
        final = manager.wait(job_id)
    assert final.status == "failed" and final.exit_code == 3
    assert final.error is not None and "CUDA out of memory" in final.error
    assert jobs.job_logs(ws, job_id, tail=1)["lines"] == ["CUDA out of memory"]


def test_cancel_a_queued_job_at_once(ws: Workspace, tmp_path: Path) -> None:
    kind = ScriptKind(tmp_path)
    job_id = submit(ws, "script", {"code": ""}, resource="cpu")
    manager = JobManager(ws, RecordingExecutor(), resources=["cpu"], kinds={"script": kind})
    assert manager.cancel(job_id).status == "cancelled"
    assert kind.finished[job_id][0] == "cancelled"
    assert manager.start_ready() == []
    with pytest.raises(InvalidArgumentError):
        manager.cancel(job_id)
    manager.close()


@pytest.mark.parametrize("stubborn", [False, True])
def test_cancel_a_running_job_gracefully_then_by_force(
    ws: Workspace, tmp_path: Path, stubborn: bool
) -> None:
    kind = ScriptKind(tmp_path)
    ignore = (
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        if stubborn
        else ""
    )
    code = (
        f"import signal, sys, time\n{ignore}"
        f"print({EVENT % 'start'!r}, flush=True)\n"
        "try:\n    time.sleep(120)\n"
        "except KeyboardInterrupt:\n    print('stopping', file=sys.stderr); sys.exit(130)\n"
    )
    job_id = submit(ws, "script", {"code": code}, resource="cpu")
    with JobManager(ws, resources=["cpu"], kinds={"script": kind}) as manager:
        # started from a parent that ignores SIGINT (``cmd &`` in a script): still graceful
        saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            manager.step()
        finally:
            signal.signal(signal.SIGINT, saved)
        _until(lambda: (manager.poll() or True) and bool(kind.events))
        pid = jobs.get_job(ws, job_id).handle.pid
        assert pid is not None
        final = manager.cancel(job_id, grace_s=1.0)
    assert final.status == "cancelled" and final.cancel_requested
    assert process_start_time(pid) is None
    log = Path(jobs.job_logs(ws, job_id)["log_path"]).read_text()
    assert ("stopping" in log) is (not stubborn)
    # the graceful stop exits 130; a stubborn child is killed (SIGKILL)
    assert final.exit_code == (-9 if stubborn else 130)


def test_the_worker_loop_runs_until_idle(ws: Workspace, tmp_path: Path) -> None:
    kind = ScriptKind(tmp_path)
    ids = [
        submit(ws, "script", {"code": f"print({EVENT % 'end'!r})"}, resource="cpu")
        for _ in range(2)
    ]
    with JobManager(ws, resources=["cpu"], kinds={"script": kind}) as manager:
        assert manager.work(until_idle=True) == 2
    assert [jobs.get_job(ws, i).status for i in ids] == ["completed", "completed"]
    assert [j.id for j in jobs.list_jobs(ws, "completed")] == ids
    assert not jobs.worker_running(ws)
    with pytest.raises(InvalidArgumentError):
        jobs.list_jobs(ws, "done")


def test_only_one_manager_leads(ws: Workspace) -> None:
    first, second = JobManager(ws, resources=["cpu"]), JobManager(ws, resources=["cpu"])
    assert first.lead()
    assert not second.lead()
    first.close()
    assert second.lead()
    second.close()
    assert json.loads(json.dumps(jobs.list_jobs(ws))) == []


def test_a_detached_worker_starts_once_and_exits_when_idle(ws: Workspace) -> None:
    lock = jobs.worker_lock(ws)
    assert lock.acquire()  # a worker runs: none is started
    assert jobs.worker_running(ws) and jobs.spawn_worker(ws) is None
    lock.release()
    pid = jobs.spawn_worker(ws)
    assert pid is not None
    _, status = os.waitpid(pid, 0)  # nothing queued: it exits on its own
    assert os.waitstatus_to_exitcode(status) == 0
    assert not jobs.worker_running(ws)
    assert "error" not in (ws.root / "jobs" / "worker.log").read_text()
