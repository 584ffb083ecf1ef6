"""Training runs: spec a job, run the trainer child under the job protocol, record everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import select

from desktop_app.core.models import RunMetric, TrainingRun, utcnow
from runtimes.errors import OutpostError
from runtimes.fileio import atomic_write_text
from trainers.protocol import EXIT_OK, ProtocolError, parse_event
from trainers.registry import default_registry as trainer_registry

EventCallback = Callable[[dict[str, Any]], None]


class TrainingError(OutpostError):
    """A training run could not start or did not finish."""


@dataclass(frozen=True)
class TrainOptions:
    """A training request. ``None`` means: from the preset, else the trainer's default."""

    dataset: str
    model: str = "yolo11n.yaml"
    epochs: int | None = None
    imgsz: int | None = None
    batch: int | None = None
    device: str = "auto"
    workers: int | None = None
    seed: int | None = None
    version: str | None = None
    preset: str | None = None
    framework: str = "ultralytics"
    extra: dict[str, Any] = field(default_factory=dict)
    # The job's split override (keys of a split setting: method, val, test, seed); it wins
    # over the dataset's own setting. None keeps the version's split.
    split: dict[str, Any] | None = None


# Ultralytics accumulates gradients up to a nominal batch of 64 images. On a small dataset that
# leaves one or two optimizer steps an epoch and a from-scratch model barely learns (mAP50 0.05
# vs 0.40 after 30 epochs on 128 sample images), so below this many training images the nominal
# batch is the real batch unless the user or the preset sets ``nbs``.
SMALL_DATASET_IMAGES = 1000
SPEC_FIELDS = ("epochs", "imgsz", "batch", "workers", "seed", "patience", "plots")


def resolve_options(opts: TrainOptions, train_images: int) -> dict[str, Any]:
    """Every trainer option for this run: schema defaults < preset < ``--set`` < explicit flags.

    Raises:
        SpecError: an unknown framework, model, preset or option, or a value out of range.
    """
    plugin = trainer_registry().get(opts.framework)
    plugin.check_model(opts.model, "detect")
    schema = plugin.schema()
    explicit = {
        k: getattr(opts, k)
        for k in ("epochs", "imgsz", "batch", "workers", "seed")
        if getattr(opts, k) is not None
    }
    values = {**opts.extra, **explicit}
    options = schema.resolve(opts.preset, values)
    chosen = set(values) | set(schema.presets.get(opts.preset or "", {}))
    if "nbs" not in chosen and train_images < SMALL_DATASET_IMAGES and options["batch"] > 0:
        options["nbs"] = options["batch"]
    return options


def trainer_command(framework: str, spec_path: Path) -> list[str]:
    """The child command for a framework (a frozen app runs its own ``outpost worker``)."""
    if getattr(sys, "frozen", False):
        return [
            sys.executable,
            "worker",
            "train",
            "--framework",
            framework,
            "--spec",
            str(spec_path),
        ]
    module = trainer_registry().get(framework).module
    return [sys.executable, "-m", module, "train", "--spec", str(spec_path)]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def new_run_id() -> str:
    return "run-" + uuid.uuid4().hex[:10]


def run_training(
    ws: Any, opts: TrainOptions, on_event: EventCallback | None = None
) -> dict[str, Any]:
    """Train one run to completion in a child process; return the run summary.

    The run is recorded as ``running`` before the child starts, each epoch's metrics are
    committed as they arrive, and the final status is ``completed``, ``failed`` or
    ``cancelled`` (Ctrl-C).
    """
    from desktop_app.core.dataset_versions import resolve_training_version
    from desktop_app.core.datasets import materialize_yolo

    resolve_options(opts, 0)  # refuse bad options before a version is made
    # No version: snapshot the draft (reused when unchanged); a split override may derive
    # a version with that split. The run trains on exactly the version resolved here.
    version = resolve_training_version(ws, opts.dataset, opts.version, opts.split)
    options = resolve_options(opts, int(version.splits.get("train", 0)))
    run_id = new_run_id()
    run_dir = Path(ws.root) / "runs" / run_id
    run_dir.mkdir(parents=True)
    data_yaml = materialize_yolo(ws, opts.dataset, version.number, run_dir / "data")
    spec = {
        "v": 1,
        "kind": "train",
        "framework": opts.framework,
        "task": "detect",
        "model": opts.model,
        "data": str(data_yaml),
        "device": opts.device,
        **{k: options[k] for k in SPEC_FIELDS},
        "extra": {k: v for k, v in options.items() if k not in SPEC_FIELDS},
        "run_dir": str(run_dir),
        "config_dir": str(Path(ws.root) / "yolo_config"),
        "mlflow_tracking_uri": ws.mlflow_tracking_uri,
        "mlflow_experiment": opts.dataset,
        "mlflow_artifact_root": str(Path(ws.root) / "mlflow-artifacts"),
        "run_name": run_id,
    }
    spec_path = run_dir / "job.json"
    atomic_write_text(spec_path, json.dumps(spec, indent=2))
    params = {"model": opts.model, "device": opts.device, "preset": opts.preset, **options}
    with ws.session() as s:
        s.add(
            TrainingRun(
                id=run_id,
                project_id=ws.default_project_id(),
                dataset_version_id=version.id,
                framework=opts.framework,
                task="detect",
                model=opts.model,
                status="running",
                params=params,
                run_dir=ws.relative(run_dir),
                started_at=utcnow(),
            )
        )

    log_path = run_dir / "train.log"
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    outcome: dict[str, Any] = {}
    error: str | None = None
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(  # noqa: S603 - our own trainer entry point
            trainer_command(opts.framework, spec_path),
            stdout=subprocess.PIPE,
            stderr=log_fh,
            env=env,
            text=True,
            encoding="utf-8",
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = parse_event(line)
                except ProtocolError:
                    continue
                _record_event(ws, run_id, event, outcome)
                if event["event"] == "error":
                    error = str(event.get("message"))
                if on_event is not None:
                    on_event(event)
            code = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _finish(ws, run_id, "cancelled", {}, "cancelled by the user")
            raise
    if code != EXIT_OK or outcome.get("status") != "completed":
        reason = error or f"trainer exited with code {code}: {_tail(log_path)}"
        _finish(ws, run_id, "failed", outcome, reason)
        raise TrainingError(f"training run {run_id} failed: {reason} (log: {log_path})")
    _finish(ws, run_id, "completed", outcome, None)
    return run_summary(ws, run_id)


def _record_event(ws: Any, run_id: str, event: dict[str, Any], outcome: dict[str, Any]) -> None:
    kind = event["event"]
    if kind == "start":
        with ws.session() as s:
            run = s.get(TrainingRun, run_id)
            run.mlflow_run_id = event.get("mlflow_run_id")
            run.device = event.get("device")
    elif kind == "epoch_end":
        epoch = int(event["epoch"])
        with ws.session() as s:
            for key, value in (event.get("metrics") or {}).items():
                if value is not None:
                    s.add(RunMetric(run_id=run_id, epoch=epoch, key=key, value=float(value)))
    elif kind == "end":
        outcome.update(event)


def _finish(ws: Any, run_id: str, status: str, outcome: dict[str, Any], error: str | None) -> None:
    with ws.session() as s:
        run = s.get(TrainingRun, run_id)
        run.status = status
        run.finished_at = utcnow()
        run.error = error or "; ".join(outcome.get("warnings") or []) or None
        if outcome.get("best"):
            run.best_checkpoint = ws.relative(outcome["best"])
        if outcome.get("metrics"):
            run.final_metrics = {k: v for k, v in outcome["metrics"].items() if v is not None}
        if outcome.get("mlflow_run_id"):
            run.mlflow_run_id = outcome["mlflow_run_id"]


def resolve_run(ws: Any, run_ref: str) -> TrainingRun:
    """A run by id, or ``latest`` for the newest completed run."""
    from desktop_app.core.errors import NotFoundError

    with ws.session() as s:
        if run_ref == "latest":
            run = s.scalars(
                select(TrainingRun)
                .where(TrainingRun.status == "completed")
                .order_by(TrainingRun.created_at.desc())
            ).first()
        else:
            run = s.get(TrainingRun, run_ref)
        if run is None:
            raise NotFoundError(f"no training run {run_ref!r}; list them with: outpost runs list")
        s.expunge(run)
        return cast(TrainingRun, run)


def run_summary(ws: Any, run_id: str) -> dict[str, Any]:
    with ws.session() as s:
        run = s.get(TrainingRun, run_id)
        if run is None:
            from desktop_app.core.errors import NotFoundError

            raise NotFoundError(f"no training run {run_id!r}; list them with: outpost runs list")
        epochs: dict[int, dict[str, float]] = {}
        for m in s.scalars(
            select(RunMetric).where(RunMetric.run_id == run_id).order_by(RunMetric.epoch)
        ):
            epochs.setdefault(m.epoch, {})[m.key] = m.value
        return {
            "id": run.id,
            "status": run.status,
            "framework": run.framework,
            "task": run.task,
            "model": run.model,
            "params": run.params,
            "device": run.device,
            "dataset_version_id": run.dataset_version_id,
            "run_dir": str(ws.resolve(run.run_dir)),
            "best_checkpoint": str(ws.resolve(run.best_checkpoint))
            if run.best_checkpoint
            else None,
            "mlflow_run_id": run.mlflow_run_id,
            "final_metrics": run.final_metrics,
            "error": run.error,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "epochs": [{"epoch": e, "metrics": epochs[e]} for e in sorted(epochs)],
        }


def list_runs(ws: Any) -> list[dict[str, Any]]:
    with ws.session() as s:
        runs = s.scalars(select(TrainingRun).order_by(TrainingRun.created_at)).all()
        return [
            {
                "id": r.id,
                "status": r.status,
                "model": r.model,
                "epochs": r.params.get("epochs"),
                "imgsz": r.params.get("imgsz"),
                "mAP50": r.final_metrics.get("metrics/mAP50(B)"),
                "mAP50-95": r.final_metrics.get("metrics/mAP50-95(B)"),
                "created_at": r.created_at.isoformat() if r.created_at else None,
            }
            for r in runs
        ]
