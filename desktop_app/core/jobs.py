"""The job queue: persisted jobs, started one per resource, followed through their event file.

``submit`` records a queued job; a ``JobManager`` starts ready jobs on an executor
(``start_ready``), follows their JSON-lines event files (``poll``), stops them (``cancel``)
and, after a desktop restart, picks up the ones still running (``reattach``). One manager
leads a workspace at a time (a lock file under ``jobs/``): only the leader starts and
records jobs; any other process may submit, cancel, or watch a job's events (``wait``
takes the lead when it is free, e.g. when the worker that led has exited).

What a job kind does is its ``JobKind``: it prepares the child's command and paths when the
job starts, records each event (training: the run's metrics and status) and finishes
the job's records when it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import select

from desktop_app.core.errors import InvalidArgumentError, NotFoundError
from desktop_app.core.executors import Executor, Handle, Launch, LocalExecutor
from desktop_app.core.models import Job, utcnow
from trainers.protocol import ProtocolError, parse_event

EventCallback = Callable[[dict[str, Any]], None]

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "orphaned")
ACTIVE = ("queued", "running")
POLL_INTERVAL_S = 0.5
ORPHAN_HINT = (
    "the process ended while no desktop was watching; resume it with `outpost runs resume {run}`"
)
# A job kind's handler, as "module:attribute" (imported when first needed).
KINDS = {
    "train": "desktop_app.core.training:TRAINING_JOBS",
    "export": "desktop_app.core.export_jobs:EXPORT_JOBS",
}


@dataclass(frozen=True)
class JobInfo:
    """A job row, detached from the database session."""

    id: str
    kind: str
    status: str
    resource: str
    spec: dict[str, Any]
    run_id: str | None
    progress: dict[str, Any]
    log_path: str | None
    events_path: str | None
    events_offset: int
    handle: Handle
    exit_code: int | None
    error: str | None
    cancel_requested: bool
    priority: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None

    def to_dict(self) -> dict[str, Any]:
        """The job as plain JSON-able values (for the CLI and the GUI)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "resource": self.resource,
            "priority": self.priority,
            "run_id": self.run_id,
            "progress": self.progress,
            "pid": self.handle.pid,
            "exit_code": self.exit_code,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "log_path": self.log_path,
            "events_path": self.events_path,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class JobKind(Protocol):
    """What a kind of job does around its child process (one instance per kind)."""

    def prepare(self, ws: Any, job: JobInfo) -> Launch:
        """Write what the child needs and return how to launch it; called when it starts."""
        ...

    def record(
        self, ws: Any, job: JobInfo, event: dict[str, Any], progress: dict[str, Any]
    ) -> None:
        """Record one event; update ``progress`` (stored on the job) in place."""
        ...

    def finish(self, ws: Any, job: JobInfo, status: str, error: str | None) -> None:
        """The job ended with ``status`` (completed, failed, cancelled or orphaned)."""
        ...


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _info(job: Job) -> JobInfo:
    return JobInfo(
        id=job.id,
        kind=job.kind,
        status=job.status,
        resource=job.resource,
        spec=dict(job.spec or {}),
        run_id=job.run_id,
        progress=dict(job.progress or {}),
        log_path=job.log_path,
        events_path=job.events_path,
        events_offset=int(job.events_offset or 0),
        handle=Handle(pid=job.pid, pid_started=job.pid_started, external_id=job.external_id),
        exit_code=job.exit_code,
        error=job.error,
        cancel_requested=bool(job.cancel_requested),
        priority=int(job.priority or 0),
        created_at=_iso(job.created_at),
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
    )


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:10]


def resource_for_device(device: str) -> str:
    """The resource a trainer device string occupies: ``auto``, ``cpu``, ``cuda:N[,cuda:M]``."""
    device = (device or "auto").strip().lower()
    if device in ("auto", "cpu"):
        return device
    parts = [p.strip().removeprefix("cuda:") for p in device.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts):
        return ",".join(f"cuda:{p}" for p in parts)
    return device


def detect_resources() -> list[str]:
    """``cuda:N`` for each NVIDIA GPU ``nvidia-smi -L`` lists (none without it), then ``cpu``."""
    gpus: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(  # noqa: S603 - a fixed tool on PATH
                [smi, "-L"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            head = line.split(":", 1)[0].strip()
            if head.startswith("GPU ") and head[4:].strip().isdigit():
                gpus.append(f"cuda:{head[4:].strip()}")
    return [*gpus, "cpu"]


def _kind(kind: str, kinds: dict[str, JobKind] | None = None) -> JobKind:
    if kinds and kind in kinds:
        return kinds[kind]
    target = KINDS.get(kind)
    if target is None:
        raise InvalidArgumentError(f"unknown job kind {kind!r}; choose one of {', '.join(KINDS)}")
    module, _, attr = target.partition(":")
    handler: JobKind = getattr(importlib.import_module(module), attr)
    return handler


def submit(
    ws: Any,
    kind: str,
    spec: dict[str, Any],
    *,
    resource: str | None = None,
    run_id: str | None = None,
    priority: int = 0,
) -> str:
    """Queue a job; return its id. ``resource`` defaults to the spec's device (``auto``)."""
    job_id = new_job_id()
    with ws.session() as s:
        s.add(
            Job(
                id=job_id,
                kind=kind,
                status="queued",
                executor="local",
                resource=resource or resource_for_device(str(spec.get("device", "auto"))),
                priority=priority,
                spec=spec,
                run_id=run_id,
                progress={},
                events_offset=0,
            )
        )
    return job_id


def get_job(ws: Any, job_id: str) -> JobInfo:
    """One job by id.

    Raises:
        NotFoundError: no such job.
    """
    with ws.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}; list them with: outpost jobs list")
        return _info(job)


def list_jobs(ws: Any, status: str | None = None) -> list[JobInfo]:
    """Every job, oldest first; only those with ``status`` when given."""
    if status is not None and status not in STATUSES:
        raise InvalidArgumentError(
            f"unknown job status {status!r}; choose one of {', '.join(STATUSES)}"
        )
    with ws.session() as s:
        query = select(Job).order_by(Job.created_at)
        if status is not None:
            query = query.where(Job.status == status)
        return [_info(j) for j in s.scalars(query)]


def latest_job_for_run(ws: Any, run_id: str) -> JobInfo | None:
    """The newest job of a training run, or None."""
    with ws.session() as s:
        job = s.scalars(
            select(Job).where(Job.run_id == run_id).order_by(Job.created_at.desc())
        ).first()
        return _info(job) if job is not None else None


def _tail_lines(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max(lines, 1) * 400))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


def log_tail(path: Path | str | None, lines: int = 5) -> str:
    """The last non-empty lines of a log, joined with `` | `` (for one-line errors)."""
    if path is None:
        return ""
    kept = [ln.strip() for ln in _tail_lines(Path(path), lines * 4) if ln.strip()]
    return " | ".join(kept[-lines:])


def job_logs(ws: Any, job_id: str, tail: int = 200) -> dict[str, Any]:
    """The last ``tail`` lines of a job's log (its child's stderr) and where its files are."""
    job = get_job(ws, job_id)
    log = ws.resolve(job.log_path) if job.log_path else None
    events = ws.resolve(job.events_path) if job.events_path else None
    return {
        "job": job.id,
        "status": job.status,
        "log_path": str(log) if log else None,
        "events_path": str(events) if events else None,
        "lines": _tail_lines(Path(log), tail) if log else [],
    }


def _fmt(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}" if abs(number) >= 1e-3 or number == 0 else f"{number:.3e}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_event(event: dict[str, Any], task: str | None = None) -> str | None:
    """One human line for a protocol event (None for events not worth a line).

    ``epoch_end`` becomes ``epoch 3/10  loss 1.234 (box_loss 0.5, ...)  mAP50-95(B) 0.123``:
    the sum of the training losses, each of them, and the task's primary metric (the first
    ``metrics/`` key when the task's is missing).
    """
    from trainers.ultralytics.validation import PRIMARY_METRIC

    kind = event.get("event")
    if kind == "start":
        return f"[job] started on {event.get('device', '?')} (pid {event.get('pid', '?')})"
    if kind == "train_start":
        first = int(event.get("start_epoch") or 1)
        where = f" from epoch {first}" if first > 1 else ""
        return (
            f"[job] training {event.get('epochs', '?')} epochs on {event.get('device', '?')}"
            f"{where}" + (f", {event['threads']} threads" if event.get("threads") else "")
        )
    if kind == "epoch_end":
        metrics = {k: v for k, v in (event.get("metrics") or {}).items() if v is not None}
        losses = {k: v for k, v in metrics.items() if k.startswith("train/") and "loss" in k}
        parts = [f"epoch {event.get('epoch', '?')}/{event.get('epochs', '?')}"]
        if losses:
            total = sum(float(v) for v in losses.values())
            each = ", ".join(f"{k.removeprefix('train/')} {_fmt(v)}" for k, v in losses.items())
            parts.append(f"loss {_fmt(total)}" + (f" ({each})" if len(losses) > 1 else ""))
        key = PRIMARY_METRIC.get(task or "")
        if key not in metrics:
            key = next((k for k in metrics if k.startswith("metrics/")), None)
        if key is not None:
            parts.append(f"{key.removeprefix('metrics/')} {_fmt(metrics[key])}")
        return "  ".join(parts)
    if kind == "validation":
        primary = event.get("primary_metric") or {}
        if isinstance(primary, dict) and primary.get("key"):
            return (
                f"[job] validation: {str(primary['key']).removeprefix('metrics/')} "
                f"{_fmt(primary.get('value'))}"
            )
        return "[job] validation results recorded"
    if kind == "log" and event.get("message"):
        return f"[trainer] {event['message']}"
    if kind == "format_start":
        return (
            f"[job] exporting {event.get('format', '?')} ({event.get('precision', '?')}), "
            f"format {event.get('index', '?')}/{event.get('total', '?')}, "
            f"as {event.get('export_id', '?')}"
        )
    if kind == "format_end":
        parity = f", parity {event['parity']}" if event.get("parity") else ""
        error = f": {event['error']}" if event.get("error") else ""
        return (
            f"[job] {event.get('format', '?')} ({event.get('precision', '?')}) "
            f"{event.get('status', '?')}{parity}{error}"
        )
    if kind == "end" and "exports" in event:
        each = ", ".join(
            f"{e.get('id')} {e.get('format')} {e.get('status')}" for e in event["exports"]
        )
        return f"[job] export finished ({event.get('status', 'completed')}): {each}"
    if kind == "error" and "exports" in event:
        return f"[job] export error: {event.get('message', '')}"
    if kind == "end":
        best = f", best checkpoint {event['best']}" if event.get("best") else ""
        return f"[job] trainer finished ({event.get('status', 'completed')}){best}"
    if kind == "error":
        return f"[job] trainer error: {event.get('message', '')}"
    return None


class _Tail:
    """New complete lines of a growing text file, from an offset."""

    def __init__(self, path: Path | None, offset: int = 0) -> None:
        self.path, self.offset, self._partial = path, offset, b""

    def lines(self, final: bool = False) -> list[str]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        # progress bars redraw with carriage returns: keep each redraw's last state
        parts = data.split(b"\n")
        self._partial = b"" if final else parts.pop()
        out = []
        for raw in parts:
            text = raw.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1]
            if text.strip():
                out.append(text)
        return out


def follow_logs(
    ws: Any,
    job_id: str,
    out: IO[str],
    tail: int = 200,
    *,
    manager: JobManager | None = None,
) -> JobInfo:
    """Print a job's log tail and its epochs so far, then both as they come, until it ends.

    The child's stderr log and its event file are interleaved: each event as one line
    (:func:`format_event`: epoch i/N, the loss, the primary metric; the end or the error),
    the log as it is written. While nobody else leads the workspace's jobs, this follower
    leads (so a job whose worker has gone still gets recorded to its end) and hands any
    remaining jobs to a background worker when it stops. Ctrl-C stops following only.

    Returns:
        The job's final state (``status`` tells whether it completed).

    Raises:
        NotFoundError: no such job.
    """
    job = get_job(ws, job_id)
    task = str(job.spec.get("task") or "") or None
    own = manager is None
    mgr = manager if manager is not None else JobManager(ws)

    def paths(info: JobInfo) -> tuple[Path | None, Path | None]:
        log = Path(ws.resolve(info.log_path)) if info.log_path else None
        events = Path(ws.resolve(info.events_path)) if info.events_path else None
        return log, events

    def write(lines: list[str]) -> None:
        for line in lines:
            out.write(line + "\n")
        out.flush()

    log_path, events_path = paths(job)
    size = log_path.stat().st_size if log_path is not None and log_path.exists() else 0
    log = _Tail(log_path, size)
    history_lines = _tail_lines(log_path, tail) if log_path is not None else []
    write([ln.rstrip("\r").rsplit("\r", 1)[-1] for ln in history_lines])
    events_at = int(job.progress.get("events_start", 0))
    seen_events = events_path is not None
    if events_path is not None:
        history, events_at = read_events(events_path, events_at)
        write([t for e in history[-tail:] if (t := format_event(e, task)) is not None])
    try:
        while True:
            mgr.step()
            job = get_job(ws, job_id)
            if not seen_events:
                log_path, events_path = paths(job)
                log = _Tail(log_path, 0)
                seen_events = events_path is not None
            ended = job.status not in ACTIVE
            write(log.lines(final=ended))
            if events_path is not None:
                events, events_at = read_events(events_path, events_at)
                write([t for e in events if (t := format_event(e, task)) is not None])
            if ended:
                break
            time.sleep(POLL_INTERVAL_S)
    finally:
        if own:
            mgr.hand_over()
    verdict = f"[job] {job.id} {job.status}"
    if job.status != "completed" and job.error:
        verdict += f": {job.error}"
    write([verdict])
    return job


def read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Protocol events of the complete lines after ``offset``; the new offset.

    A partial last line (the child is mid-write) is left for the next read; a line that is
    not an event (a stray print) is skipped.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events: list[dict[str, Any]] = []
    for raw in data[: end + 1].splitlines():
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        try:
            events.append(parse_event(line))
        except ProtocolError:
            continue
    return events, offset + end + 1


def _lock_path(ws: Any, name: str) -> Path:
    folder = Path(ws.root) / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


class FileLock:
    """A non-blocking exclusive ``flock`` on a file; released on ``release`` or process exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> bool:
        if self._fh is not None:
            return True
        fh = open(self.path, "ab")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def worker_lock(ws: Any) -> FileLock:
    """The lock ``outpost jobs work`` holds so that one worker runs per workspace."""
    return FileLock(_lock_path(ws, "worker.lock"))


def worker_running(ws: Any) -> bool:
    """True while an ``outpost jobs work`` process holds this workspace's worker lock."""
    lock = worker_lock(ws)
    if lock.acquire():
        lock.release()
        return False
    return True


def worker_command(ws: Any) -> list[str]:
    """The background worker's command (a frozen app runs its own executable)."""
    base = (
        [sys.executable]
        if getattr(sys, "frozen", False)
        else [sys.executable, "-m", "desktop_app.cli"]
    )
    return [*base, "jobs", "work", "--until-idle", "--workspace", str(ws.root)]


def spawn_worker(ws: Any) -> int | None:
    """Start a detached background worker unless one runs; its pid, or None when one ran."""
    if worker_running(ws):
        return None
    log = _lock_path(ws, "worker.log")
    with open(log, "ab") as fh:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            worker_command(ws),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fh,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc.pid


@dataclass
class _Followed:
    """What ``wait`` has read of one job's events (it reads them apart from the recorder)."""

    offset: int = 0
    path: Path | None = None


class JobManager:
    """Starts, follows, cancels and re-attaches the jobs of one workspace.

    Args:
        ws: The open workspace.
        executor: Where children run (``LocalExecutor`` by default).
        resources: The resources jobs may occupy (default: ``detect_resources()``).
        kinds: Extra or replacement job kinds (tests, plugins), by kind name.
    """

    def __init__(
        self,
        ws: Any,
        executor: Executor | None = None,
        *,
        resources: list[str] | None = None,
        kinds: dict[str, JobKind] | None = None,
    ) -> None:
        self.ws = ws
        self.executor: Executor = executor if executor is not None else LocalExecutor()
        self.resources = resources if resources is not None else detect_resources()
        self.kinds = kinds or {}
        self._lead = FileLock(_lock_path(ws, "manager.lock"))

    # --- leadership ---------------------------------------------------------------------

    def lead(self) -> bool:
        """Take the lead of this workspace's jobs if it is free (re-attaching on taking it)."""
        if self._lead.held:
            return True
        if not self._lead.acquire():
            return False
        self.reattach()
        return True

    @property
    def leading(self) -> bool:
        return self._lead.held

    def close(self) -> None:
        """Give up the lead; running children keep running (a next manager re-attaches)."""
        self._lead.release()

    def __enter__(self) -> JobManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- starting -----------------------------------------------------------------------

    def _busy(self) -> set[str]:
        with self.ws.session() as s:
            rows = s.scalars(select(Job.resource).where(Job.status == "running")).all()
        return {part for r in rows for part in r.split(",")}

    def _pick(self, wanted: str, busy: set[str]) -> str | None:
        if wanted == "auto":
            for res in self.resources:
                if res != "cpu" and res not in busy:
                    return res
            return "cpu" if "cpu" not in busy else None
        parts = wanted.split(",")
        return wanted if not any(p in busy for p in parts) else None

    def start_ready(self) -> list[str]:
        """Start queued jobs whose resource is free (priority first, then oldest); their ids."""
        busy = self._busy()
        with self.ws.session() as s:
            queued = [
                _info(j)
                for j in s.scalars(
                    select(Job)
                    .where(Job.status == "queued")
                    .order_by(Job.priority.desc(), Job.created_at)
                )
            ]
        started: list[str] = []
        for job in queued:
            resource = self._pick(job.resource, busy)
            if resource is None:
                continue
            busy.update(resource.split(","))
            self._start(job, resource)
            started.append(job.id)
        return started

    def _start(self, job: JobInfo, resource: str) -> None:
        spec = dict(job.spec)
        if job.resource == "auto" and "device" in spec:
            spec["device"] = "cpu" if resource == "cpu" else resource.removeprefix("cuda:")
        with self.ws.session() as s:
            row = s.get(Job, job.id)
            row.resource, row.spec, row.status = resource, spec, "running"
            row.started_at = utcnow()
        job = get_job(self.ws, job.id)
        kind = _kind(job.kind, self.kinds)
        try:
            launch = kind.prepare(self.ws, job)
            # measured before the child can write: a resumed run appends to its first job's file
            start = launch.events_path.stat().st_size if launch.events_path.exists() else 0
            handle = self.executor.start(launch)
        except BaseException as exc:
            message = f"job {job.id} could not start: {type(exc).__name__}: {exc}".splitlines()[0]
            self._end(job, "failed", message, None)
            if isinstance(exc, OSError):
                return
            raise
        with self.ws.session() as s:
            row = s.get(Job, job.id)
            row.pid, row.pid_started = handle.pid, handle.pid_started
            row.external_id = handle.external_id
            row.executor = self.executor.name
            row.log_path = self.ws.relative(launch.log_path)
            row.events_path = self.ws.relative(launch.events_path)
            row.events_offset = start
            row.progress = {**(row.progress or {}), "events_start": start}

    # --- following ----------------------------------------------------------------------

    def poll(self, on_event: EventCallback | None = None) -> list[str]:
        """Record new events of every running job and finish those that ended; their ids."""
        ended: list[str] = []
        with self.ws.session() as s:
            running = [_info(j) for j in s.scalars(select(Job).where(Job.status == "running"))]
        for job in running:
            if self._follow(job, on_event, orphan=False):
                ended.append(job.id)
        return ended

    def _follow(self, job: JobInfo, on_event: EventCallback | None, *, orphan: bool) -> bool:
        """Read a running job's new events; finish it when its process is gone. True if ended."""
        if job.events_path is None:  # started but not launched (a crash in between)
            self._end(
                job, "orphaned" if orphan else "failed", "the job's process never started", None
            )
            return True
        code = self.executor.exit_code(job.handle)
        alive = code is None and self.executor.is_alive(job.handle)
        path = Path(self.ws.resolve(job.events_path))
        events, offset = read_events(path, job.events_offset)
        progress = dict(job.progress)
        kind = _kind(job.kind, self.kinds)
        for event in events:
            _track(progress, event)
            kind.record(self.ws, job, event, progress)
            if on_event is not None:
                on_event(event)
        if events or offset != job.events_offset:
            with self.ws.session() as s:
                row = s.get(Job, job.id)
                row.events_offset, row.progress = offset, progress
        if alive:
            return False
        if code is None:  # it may have exited between the two questions
            code = self.executor.exit_code(job.handle)
        job = get_job(self.ws, job.id)
        status, error = self._outcome(job, code, orphan)
        self._end(job, status, error, code)
        return True

    def _outcome(self, job: JobInfo, code: int | None, orphan: bool) -> tuple[str, str | None]:
        log = self.ws.resolve(job.log_path) if job.log_path else None
        ended_ok = job.progress.get("end_status") == "completed"
        if job.cancel_requested:
            return "cancelled", "cancelled by the user"
        if ended_ok and code in (None, 0):
            return "completed", None
        if job.progress.get("error"):
            return "failed", str(job.progress["error"])
        if code is None and orphan:
            hint = ORPHAN_HINT.format(run=job.run_id or job.id)
            tail = log_tail(log)
            return "orphaned", f"{hint}{' (log: ' + tail + ')' if tail else ''}"
        what = f"exited with code {code}" if code is not None else "ended without reporting an end"
        return "failed", f"the job's process {what}: {log_tail(log)}"

    def _end(self, job: JobInfo, status: str, error: str | None, code: int | None) -> None:
        with self.ws.session() as s:
            row = s.get(Job, job.id)
            row.status, row.error, row.exit_code = status, error, code
            row.finished_at = utcnow()
        _kind(job.kind, self.kinds).finish(self.ws, get_job(self.ws, job.id), status, error)

    def reattach(self) -> list[str]:
        """Pick up running jobs after a restart: keep following the live ones, finish the rest.

        A job whose process is gone is completed when its event file holds an ``end``,
        failed when it holds an ``error``, else orphaned (its run failed, with a resume hint
        and the log's last lines). Returns the ids still followed.
        """
        kept: list[str] = []
        with self.ws.session() as s:
            running = [_info(j) for j in s.scalars(select(Job).where(Job.status == "running"))]
        for job in running:
            if not self._follow(job, None, orphan=True):
                kept.append(job.id)
        return kept

    # --- stopping -----------------------------------------------------------------------

    def cancel(self, job_id: str, grace_s: float = 15) -> JobInfo:
        """Cancel a job: a queued one at once, a running one by signal (graceful, then killed).

        Raises:
            NotFoundError: no such job.
            InvalidArgumentError: the job has already ended.
        """
        job = get_job(self.ws, job_id)
        if job.status == "queued":
            with self.ws.session() as s:
                row = s.get(Job, job_id)
                if row.status == "queued":
                    row.cancel_requested = True
            job = get_job(self.ws, job_id)
            if job.status == "queued":
                self._end(job, "cancelled", "cancelled before it started", None)
                return get_job(self.ws, job_id)
        if job.status != "running":
            raise InvalidArgumentError(f"job {job_id} has already ended ({job.status})")
        with self.ws.session() as s:
            s.get(Job, job_id).cancel_requested = True
        self.executor.signal_cancel(job.handle, grace_s)
        if self.lead():
            self._follow(get_job(self.ws, job_id), None, orphan=False)
            return get_job(self.ws, job_id)
        # another process leads (a worker): it records the end on its next poll
        deadline = time.monotonic() + 10 * POLL_INTERVAL_S
        while get_job(self.ws, job_id).status in ACTIVE and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S / 5)
        return get_job(self.ws, job_id)

    # --- loops --------------------------------------------------------------------------

    def step(self, on_event: EventCallback | None = None) -> bool:
        """One round as leader (when the lead is free): start, then poll. True if leading."""
        if not self.lead():
            return False
        self.start_ready()
        self.poll(on_event)
        return True

    def wait(self, job_id: str, on_event: EventCallback | None = None) -> JobInfo:
        """Follow one job until it ends (leading when possible); its final state.

        ``on_event`` gets each of its events. Ctrl-C cancels the job gracefully and raises
        KeyboardInterrupt once it has stopped. When this manager led and other jobs are
        still active afterwards, a background worker takes them over.
        """
        watcher = _Followed()
        try:
            while True:
                leading = self.step(on_event=None)
                job = get_job(self.ws, job_id)
                if job.events_path and watcher.path is None:
                    watcher.path = Path(self.ws.resolve(job.events_path))
                    watcher.offset = int(job.progress.get("events_start", 0))
                if watcher.path is not None and on_event is not None:
                    events, watcher.offset = read_events(watcher.path, watcher.offset)
                    for event in events:
                        on_event(event)
                if job.status not in ACTIVE:
                    break
                if leading and job.status == "running":
                    time.sleep(POLL_INTERVAL_S / 5)
                else:
                    time.sleep(POLL_INTERVAL_S)
        except KeyboardInterrupt:
            self.cancel(job_id)
            while get_job(self.ws, job_id).status in ACTIVE:
                self.step()
                time.sleep(POLL_INTERVAL_S / 5)
            self._hand_over()
            raise
        self._hand_over()
        return job

    def hand_over(self) -> None:
        """Give up the lead; start a background worker when jobs are still active."""
        self._hand_over()

    def _hand_over(self) -> None:
        if not self.leading:
            return
        with self.ws.session() as s:
            active = s.scalars(select(Job.id).where(Job.status.in_(ACTIVE))).first()
        self.close()
        if active is not None:
            spawn_worker(self.ws)

    def work(self, until_idle: bool = False, stop: Callable[[], bool] | None = None) -> int:
        """The worker loop: lead, start ready jobs, poll every 0.5 s. Jobs it saw end.

        With ``until_idle`` it returns once no job is queued or running; without, it runs
        until ``stop()`` is true (or forever). Another leader (a foreground ``outpost
        train``) makes it wait for the lead.
        """
        ended = 0
        while stop is None or not stop():
            if self.lead():
                self.start_ready()
                ended += len(self.poll())
            with self.ws.session() as s:
                active = s.scalars(select(Job.id).where(Job.status.in_(ACTIVE))).first()
            if until_idle and active is None:
                break
            time.sleep(POLL_INTERVAL_S)
        self.close()
        return ended


def _track(progress: dict[str, Any], event: dict[str, Any]) -> None:
    """Keep a job's progress: epoch, epochs, ETA, last metrics, last checkpoint, the end."""
    kind = event.get("event")
    now = time.time()
    if kind == "train_start":
        progress["epochs"] = event.get("epochs")
        progress["device"] = event.get("device")
    elif kind == "epoch_end":
        epoch = int(event.get("epoch", 0))
        epochs = int(event.get("epochs") or progress.get("epochs") or epoch)
        if "first_epoch" not in progress:
            progress["first_epoch"] = epoch
            progress["t_start"] = progress.get("t_start", now)
        done = epoch - int(progress["first_epoch"]) + 1
        per_epoch = (now - float(progress.get("t_start", now))) / max(done, 1)
        progress.update(
            epoch=epoch,
            epochs=epochs,
            eta_s=round(per_epoch * max(epochs - epoch, 0), 1),
            metrics=event.get("metrics") or {},
        )
        if event.get("last"):
            progress["last"] = event["last"]
    elif kind == "start":
        progress["t_start"] = now
    elif kind == "end":
        progress["end_status"] = event.get("status", "completed")
        if event.get("last"):
            progress["last"] = event["last"]
    elif kind == "error":
        progress["error"] = str(event.get("message") or "the trainer reported an error")
    elif kind == "validation" and event.get("primary_metric"):
        progress["primary_metric"] = event["primary_metric"]
