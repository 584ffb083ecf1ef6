"""The ``export`` job kind: a run's export runs in a child process under the job queue.

``submit_export`` checks the request (a completed run, known formats and precisions) and
queues a job; a ``JobManager`` starts it like a training job, as
``python -m desktop_app.core.export_worker --workspace WS --spec jobs/<job>/export.json``
with its protocol stream in ``jobs/<job>/events.jsonl`` and its log in
``jobs/<job>/export.log``, so an export can be followed, cancelled (graceful, then killed),
re-attached and orphaned like a training run, and a crash in native export code never takes
the desktop down.

Resource: exporting and its parity, accuracy and latency checks run on the CPU
(onnxruntime and the PyTorch reference on ``cpu``), so an export job occupies the ``cpu``
resource: on a machine with a GPU it runs beside a training run on ``cuda:N``; on a CPU-only
machine it waits for (or holds back) a CPU training run rather than share its cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from desktop_app.core.errors import NotFoundError
from desktop_app.core.executors import Launch
from desktop_app.core.export_worker import remove_exports
from desktop_app.core.jobs import JobInfo, get_job, log_tail, submit
from desktop_app.core.models import Job
from desktop_app.core.training import resolve_run
from runtimes.fileio import atomic_write_text

RESOURCE = "cpu"
SPEC_NAME = "export.json"


def check_request(
    ws: Any, run_ref: str, formats: list[str], precision: str | None, bundle: bool
) -> Any:
    """The run to export, after the checks ``export_run`` makes before any work.

    Raises:
        NotFoundError: no such run, or it has not completed.
        ExportError: an unknown format, a precision the format lacks, a format twice in a
            bundle, or no format at all.
    """
    from desktop_app.core.exports import parse_formats
    from exporters.base import ExportError
    from exporters.registry import default_registry

    run = resolve_run(ws, run_ref)
    if run.status != "completed" or not run.best_checkpoint:
        raise NotFoundError(f"run {run.id} is {run.status}, not completed; train it first")
    if not formats:
        raise ExportError("name at least one format to export (e.g. --format onnx)")
    registry = default_registry()
    keys: list[str] = []
    for key, prec in parse_formats(formats, precision):
        cap = registry.get(key).capability
        if prec not in cap.precisions:
            raise ExportError(
                f"{cap.key} export has no {prec} precision (choose {', '.join(cap.precisions)})"
            )
        keys.append(cap.key)
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if bundle and twice:
        raise ExportError(
            f"a bundle holds one model per format; {twice} is asked for twice "
            "(export the other precision without --bundle-formats)"
        )
    return run


def submit_export(
    ws: Any,
    run_ref: str,
    formats: list[str],
    *,
    precision: str | None = None,
    imgsz: int | None = None,
    bundle: bool = False,
) -> JobInfo:
    """Queue an export of ``run_ref`` (an id or ``latest``) to ``formats``; the queued job.

    The request is checked first (see :func:`check_request`), so a refused export queues
    nothing. The job's spec holds ``run_id`` (the job row's own ``run_id`` stays empty: it
    names the training job of a run).

    Raises:
        NotFoundError: no such run, or it has not completed.
        ExportError: an unknown format or precision.
    """
    run = check_request(ws, run_ref, formats, precision, bundle)
    spec: dict[str, Any] = {
        "run_id": run.id,
        "formats": list(formats),
        "precision": precision,
        "imgsz": imgsz,
        "bundle": bool(bundle),
    }
    return get_job(ws, submit(ws, "export", spec, resource=RESOURCE))


def job_folder(ws: Any, job_id: str) -> Path:
    """Where an export job's spec, events and log live: ``jobs/<job>/``."""
    return Path(ws.root) / "jobs" / job_id


def worker_command(ws: Any, spec_path: Path) -> list[str]:
    """The export child's command (this interpreter: it has the exporters and the DB)."""
    return [
        sys.executable,
        "-m",
        "desktop_app.core.export_worker",
        "--workspace",
        str(ws.root),
        "--spec",
        str(spec_path),
    ]


def export_progress(job: JobInfo) -> tuple[int, int]:
    """(formats done, formats in all) of an export job; (0, 0) before its first format."""
    p = job.progress or {}
    return int(p.get("formats_done") or 0), int(p.get("formats_total") or 0)


class ExportJobs:
    """The ``export`` job kind: launches the export worker and tracks its formats."""

    def prepare(self, ws: Any, job: JobInfo) -> Launch:
        """Write ``jobs/<job>/export.json`` from the job's spec."""
        folder = job_folder(ws, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / SPEC_NAME
        atomic_write_text(spec_path, json.dumps(job.spec, indent=2))
        return Launch(
            job_id=job.id,
            command=worker_command(ws, spec_path),
            events_path=folder / "events.jsonl",
            log_path=folder / "export.log",
        )

    def record(
        self, ws: Any, job: JobInfo, event: dict[str, Any], progress: dict[str, Any]
    ) -> None:
        """Keep the job's progress: formats done of all, each format's outcome, export ids."""
        kind = event["event"]
        if kind == "start":
            progress["formats_total"] = len(event.get("formats") or [])
            progress.setdefault("formats_done", 0)
        elif kind == "format_start":
            progress["formats_total"] = int(event.get("total") or 0)
            progress["format"] = event.get("format")
            ids = list(progress.get("export_ids") or [])
            if event.get("export_id") not in ids:
                ids.append(event.get("export_id"))
            progress["export_ids"] = ids
        elif kind == "format_end":
            progress["formats_done"] = int(progress.get("formats_done") or 0) + 1
            done = list(progress.get("formats") or [])
            done.append(
                {
                    k: event.get(k)
                    for k in ("export_id", "format", "precision", "status", "parity", "error")
                }
            )
            progress["formats"] = done
            progress.pop("format", None)
        elif kind == "end":
            progress["exports"] = list(event.get("exports") or [])

    def finish(self, ws: Any, job: JobInfo, status: str, error: str | None) -> None:
        """Leave nothing half-written: a cancelled job removes every export it began (a
        completed format too); a failed or orphaned one removes the unrecorded folders (a
        killed format's) and keeps the recorded exports."""
        ids = [str(i) for i in job.progress.get("export_ids") or [] if i]
        if status == "cancelled":
            remove_exports(ws, ids)
        elif status != "completed":
            remove_exports(ws, ids, keep_recorded=True)
        if status == "orphaned":
            run = job.spec.get("run_id", "RUN")
            formats = ",".join(str(f) for f in job.spec.get("formats") or [])
            tail = log_tail(ws.resolve(job.log_path) if job.log_path else None)
            message = (
                "the export process ended while no desktop was watching; export again with: "
                f"outpost export {run} --format {formats}" + (f" (log: {tail})" if tail else "")
            )
            with ws.session() as s:
                row = s.get(Job, job.id)
                if row is not None:
                    row.error = message


EXPORT_JOBS = ExportJobs()
