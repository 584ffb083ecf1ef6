"""The export job's child process: ``python -m desktop_app.core.export_worker``.

It runs :func:`desktop_app.core.exports.export_run` for the spec an export job wrote
(``jobs/<job>/export.json``: run, formats, precision, input size, bundle) and speaks the
JSON-lines job protocol on stdout (everything else printed goes to stderr, the job's log):

- ``start``: ``{pid, device, run_id, formats}``
- ``format_start``: ``{export_id, format, precision, index, total}`` before the format's
  export folder is written
- ``format_end``: ``{export_id, format, precision, index, total, status, parity, error}``
  once the format is recorded
- ``end``: ``{status, exports: [{id, format, precision, status, package, error}]}``
- ``error``: ``{message, exports}`` when the export failed (a failed format included) or was
  cancelled

Unlike a trainer child, it opens the workspace: the export records are written by
``export_run`` itself. On SIGINT (a cancelled job) it removes every export it began,
package and record, reports the cancel and exits 130 without the interpreter's teardown.
Exit codes: 0 every format completed (or is ``unvalidated``), 1 a failure, 2 reporting failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtimes.errors import OutpostError
from trainers.protocol import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REPORTING,
    EventWriter,
    ReportingError,
    claim_stdout,
)

EXIT_CANCELLED = 130
# Statuses that make an export job ``completed``: the package is kept and verified (an
# ``unvalidated`` one has no runtime here to check its parity, as CoreML off macOS).
OK_STATUSES = ("completed", "unvalidated")
# Test hook: sleep this many seconds after each format is recorded (a cancel lands there).
PAUSE_ENV = "OUTPOST_TEST_EXPORT_PAUSE_S"


def parity_summary(validation: dict[str, Any] | None) -> str:
    """A format's parity in a few words: ``2/2 matched, box 0.31 px``, ``top-1 1.000 agree``,
    ``not run: REASON``; empty when nothing was measured."""
    v = validation or {}
    if v.get("status") == "not_run":
        return f"not run: {v.get('reason', '')}".strip()
    if v.get("top1_agreement") is not None:
        return f"top-1 {float(v['top1_agreement']):.3f} agree"
    if "matched" in v and "reference_detections" in v:
        total = max(int(v.get("reference_detections") or 0), int(v.get("export_detections") or 0))
        box = v.get("max_box_deviation_px")
        box_text = f", box {float(box):.2f} px" if isinstance(box, (int, float)) else ""
        return f"{v['matched']}/{total} matched{box_text}"
    if "passed" in v and v["passed"] is not None:
        return "passed" if v["passed"] else "failed"
    return ""


def remove_exports(ws: Any, export_ids: Sequence[str], *, keep_recorded: bool = False) -> None:
    """Remove the packages and records of ``export_ids`` (only the unrecorded ones' folders
    with ``keep_recorded``): what a cancelled or killed export job began."""
    from desktop_app.core.models import Export

    for export_id in dict.fromkeys(export_ids):
        with ws.session() as s:
            row = s.get(Export, export_id)
            if row is not None and keep_recorded:
                continue
            if row is not None:
                s.delete(row)
        shutil.rmtree(Path(ws.root) / "exports" / export_id, ignore_errors=True)


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record.get("id"),
        "format": "+".join(record["bundle"]) if record.get("bundle") else record.get("format"),
        "precision": record.get("precision"),
        "status": record.get("status"),
        "package": record.get("package"),
        "error": record.get("error"),
    }


def _first_failure(results: list[dict[str, Any]]) -> str:
    for r in results:
        if r.get("status") not in OK_STATUSES:
            what = _summary(r)["format"]
            reason = str(r.get("error") or r.get("status"))
            return f"export {r.get('id')} ({what}) {r.get('status')}: {reason}".splitlines()[0]
    return ""


def run_export(ws: Any, spec: dict[str, Any], writer: EventWriter) -> int:
    """Export as ``spec`` says, reporting through ``writer``; the exit code.

    Raises:
        KeyboardInterrupt: cancelled (whatever it began has been removed first).
    """
    from desktop_app.core.exports import export_run

    started: list[str] = []
    ended: set[tuple[str, str]] = set()
    pause = float(os.environ.get(PAUSE_ENV) or 0)

    def progress(kind: str, fields: dict[str, Any]) -> None:
        event = {
            "export_id": fields["id"],
            "format": fields["format"],
            "precision": fields["precision"],
            "index": fields["index"],
            "total": fields["total"],
        }
        if kind == "format_start":
            started.append(str(fields["id"]))
            writer.emit("format_start", **event)
            return
        ended.add((str(fields["id"]), str(fields["format"])))
        writer.emit(
            "format_end",
            **event,
            status=fields.get("status"),
            parity=parity_summary(fields.get("validation")),
            error=fields.get("error"),
        )
        if pause > 0:
            import time

            time.sleep(pause)

    formats = [str(f) for f in spec["formats"]]
    writer.emit("start", pid=os.getpid(), device="cpu", run_id=spec["run_id"], formats=formats)
    try:
        results = export_run(
            ws,
            str(spec["run_id"]),
            formats,
            imgsz=spec.get("imgsz"),
            precision=spec.get("precision"),
            bundle=bool(spec.get("bundle")),
            on_progress=progress,
        )
    except KeyboardInterrupt:
        remove_exports(ws, started)
        raise
    except OutpostError as exc:
        writer.emit("error", message=str(exc).splitlines()[0], exports=[])
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - a library failure, reported as one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        message = f"export of run {spec['run_id']} failed: {type(exc).__name__}: {first}"
        writer.emit("error", message=message, exports=[])
        return EXIT_FAILURE
    summaries = [_summary(r) for r in results]
    for r in results:  # a bundle's failed format has no format_end of its own
        if r.get("status") == "failed" and (str(r["id"]), str(r["format"])) not in ended:
            writer.emit(
                "format_end",
                export_id=r["id"],
                format=_summary(r)["format"],
                precision=r.get("precision"),
                status="failed",
                parity="",
                error=r.get("error"),
            )
    ok = all(r.get("status") in OK_STATUSES for r in results)
    writer.emit("end", status="completed" if ok else "failed", exports=summaries)
    if not ok:
        writer.emit("error", message=_first_failure(results), exports=summaries)
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``--workspace WS --spec FILE``: run one export job; the exit code."""
    parser = argparse.ArgumentParser(prog="python -m desktop_app.core.export_worker")
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(list(argv) if argv is not None else None)
    writer = claim_stdout()
    try:
        try:
            spec = json.loads(args.spec.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            writer.emit(
                "error",
                message=f"cannot read the export spec {args.spec}: {exc}; queue the export again",
                exports=[],
            )
            return EXIT_FAILURE
        from desktop_app.core.workspace import Workspace

        ws = Workspace.open(args.workspace, create=False)
        try:
            return run_export(ws, spec, writer)
        except KeyboardInterrupt:
            writer.emit(
                "error",
                message="export cancelled; its packages and records were removed",
                exports=[],
            )
            sys.stderr.flush()
            os._exit(EXIT_CANCELLED)
    except ReportingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REPORTING


if __name__ == "__main__":
    sys.exit(main())
