"""Executors: where a job's child process runs, and how it is watched and stopped.

An executor launches the command a job kind prepares (``Launch``) and answers three
questions about it later, possibly from another desktop process: is it still alive, what
was its exit code, and how to stop it. Its protocol stream (JSON lines) goes to a file, so
whoever follows the job reads that file from the offset it recorded; nothing depends on a
pipe that dies with the desktop.

``LocalExecutor`` runs a child process on this machine in its own session (so a closing
terminal or desktop does not take it down), with stdout appended to ``events.jsonl`` and
stderr to the job's log.

A remote executor fits the same interface. A Kubernetes one would, in ``start``, create a
Job whose pod runs the same trainer entry point with the spec passed as ``OUTPOST_JOB_*``
environment variables (the trainer reads those over its spec file, see
``trainers.protocol.load_spec``) and return the Job's name as ``Handle.external_id``;
``is_alive`` would read the pod phase, ``exit_code`` the container's terminated state,
``signal_cancel`` would delete the pod with ``grace_s`` as its grace period, and a small
follower would append the pod log's protocol lines to the job's ``events.jsonl`` so the
recorders stay unchanged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Launch:
    """What to run for one job: the command, its environment and where its output goes."""

    job_id: str
    command: list[str]
    events_path: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass(frozen=True)
class Handle:
    """A started job as its executor knows it (kept on the job row)."""

    pid: int | None = None
    pid_started: str | None = None
    external_id: str | None = None


class Executor(Protocol):
    """Runs job children and answers for them, also after a desktop restart."""

    name: str

    def start(self, job: Launch) -> Handle:
        """Launch the job's command; return how to find it again."""
        ...

    def is_alive(self, handle: Handle) -> bool:
        """True while the very process (or remote job) of ``handle`` still runs."""
        ...

    def signal_cancel(self, handle: Handle, grace_s: float) -> None:
        """Stop it gracefully, forcibly once ``grace_s`` has passed; return when it is gone."""
        ...

    def exit_code(self, handle: Handle) -> int | None:
        """Its exit code once it ended; None while it runs or when it is unknown."""
        ...


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()[:8]
    except OSError:
        return "boot"


def process_start_time(pid: int) -> str | None:
    """The OS's start time of a live process as a string, or None when it is gone.

    On Linux: the boot id and field 22 of ``/proc/<pid>/stat`` (clock ticks since boot); a
    zombie counts as gone. Elsewhere psutil's create time when it is installed.
    """
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            data = stat.read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        fields = data[data.rindex(")") + 2 :].split()
        if not fields or fields[0] in ("Z", "X"):
            return None
        return f"{_boot_id()}:{fields[19]}"
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return "unknown"
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"psutil:{proc.create_time():.2f}"
    except psutil.Error:
        return None


# How long ``exit_code`` waits for a child that has exited but is not reaped yet.
EXIT_CODE_WAIT_S = 5.0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LocalExecutor:
    """Child processes on this machine, each in its own session and process group."""

    name = "local"

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, job: Launch) -> Handle:
        """Start the command with stdout appended to the events file, stderr to the log.

        Raises:
            OSError: the command could not be started.
        """
        job.events_path.parent.mkdir(parents=True, exist_ok=True)
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **job.env, "PYTHONUNBUFFERED": "1", "OUTPOST_JOB_ID": job.job_id}
        # A parent started with SIGINT ignored (``cmd &`` in a script, nohup) would pass that
        # on, and the child could only be stopped by SIGTERM: give it the default back.
        restore = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        with open(job.events_path, "ab") as events, open(job.log_path, "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own job entry points
                job.command,
                stdin=subprocess.DEVNULL,
                stdout=events,
                stderr=log,
                env=env,
                cwd=job.cwd,
                start_new_session=True,
                preexec_fn=_default_sigint if restore else None,  # noqa: PLW1509
            )
        self._procs[proc.pid] = proc
        return Handle(pid=proc.pid, pid_started=process_start_time(proc.pid))

    def _own(self, handle: Handle) -> subprocess.Popen[bytes] | None:
        return self._procs.get(handle.pid) if handle.pid is not None else None

    def is_alive(self, handle: Handle) -> bool:
        """Alive and the same process: a reused pid has another start time."""
        if handle.pid is None:
            return False
        proc = self._own(handle)
        if proc is not None and proc.poll() is not None:
            return False
        started = process_start_time(handle.pid)
        if started is None:
            return False
        return handle.pid_started is None or started == handle.pid_started

    def exit_code(self, handle: Handle) -> int | None:
        """Known only for children this executor started (a re-attached one has no parent here)."""
        proc = self._own(handle)
        if proc is None:
            return None
        code = proc.poll()
        if code is None and handle.pid is not None and process_start_time(handle.pid) is None:
            # its main thread has exited and the rest of it is being torn down: the code is
            # about to be there (waiting here keeps it from being recorded as unknown)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=EXIT_CODE_WAIT_S)
        return code

    def _signal(self, handle: Handle, sig: signal.Signals) -> None:
        if handle.pid is None or not self.is_alive(handle):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, sig)  # its own session: the group includes data loaders
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(handle.pid, sig)

    def _wait_gone(self, handle: Handle, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.is_alive(handle):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def signal_cancel(self, handle: Handle, grace_s: float) -> None:
        """SIGINT (the trainer stops and saves), SIGTERM halfway through the grace, then SIGKILL.

        A trainer child reports the cancel and exits without the interpreter's teardown as
        soon as its SIGINT lands (``trainers.child``), so the grace is rarely used. Once the
        child is gone, whatever is left of its process group (data loader workers that
        have not noticed yet) is killed.
        """
        try:
            self._signal(handle, signal.SIGINT)
            if self._wait_gone(handle, grace_s / 2):
                return
            self._signal(handle, signal.SIGTERM)
            if self._wait_gone(handle, grace_s / 2):
                return
            self._signal(handle, signal.SIGKILL)
            self._wait_gone(handle, 10.0)
        finally:
            self._kill_leftovers(handle)

    def _kill_leftovers(self, handle: Handle) -> None:
        if handle.pid is None or self.is_alive(handle):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGKILL)  # the group outlives its leader's exit
