"""Training runs: spec a job, run the trainer child through the job queue, record everything.

A run is prepared here (options, dataset version, dataset copy, spec, ``TrainingRun`` row),
then runs as a ``train`` job (desktop_app/core/jobs.py): the job manager starts the trainer
child when its device is free and records its events through ``TRAINING_JOBS``. A run may
have several jobs: its first one and one per ``resume_run``; ``TrainingRun.resumed_from``
holds the id of the job whose checkpoint the latest resume continued from.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import delete, func, select

from desktop_app.core.errors import NotFoundError
from desktop_app.core.executors import Launch
from desktop_app.core.jobs import (
    JobInfo,
    JobManager,
    get_job,
    latest_job_for_run,
    log_tail,
    resource_for_device,
    submit,
)
from desktop_app.core.models import (
    Blob,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Experiment,
    Job,
    RunMetric,
    TrainingRun,
    utcnow,
)
from runtimes.errors import OutpostError
from runtimes.fileio import atomic_write_text
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
    # The experiment (a named group of runs) this run joins; made when it does not exist.
    experiment: str | None = None


# Ultralytics accumulates gradients up to a nominal batch of 64 images. On a small dataset that
# leaves one or two optimizer steps an epoch and a from-scratch model barely learns (mAP50 0.05
# vs 0.40 after 30 epochs on 128 sample images), so below this many training images the nominal
# batch is the real batch unless the user or the preset sets ``nbs``.
SMALL_DATASET_IMAGES = 1000
SPEC_FIELDS = ("epochs", "imgsz", "batch", "workers", "seed", "patience", "plots")


def resolve_options(opts: TrainOptions, train_images: int, task: str = "detect") -> dict[str, Any]:
    """Every trainer option for this run: schema defaults < preset < ``--set`` < explicit flags.

    Raises:
        SpecError: an unknown framework, model, preset or option, a model of another task
            than ``task``, or a value out of range.
    """
    plugin = trainer_registry().get(opts.framework)
    plugin.check_model(opts.model, task)
    schema = plugin.schema()
    explicit = {
        k: getattr(opts, k)
        for k in ("epochs", "imgsz", "batch", "workers", "seed")
        if getattr(opts, k) is not None
    }
    values = {**opts.extra, **explicit}
    options = schema.resolve(opts.preset, values)
    chosen = set(values) | set(schema.presets.get(opts.preset or "", {}))
    has_nbs = any(f.name == "nbs" for f in schema.fields)  # Ultralytics only
    if (
        has_nbs
        and "nbs" not in chosen
        and train_images < SMALL_DATASET_IMAGES
        and options["batch"] > 0
    ):
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
    from desktop_app.core.training_env import trainer_python

    module = trainer_registry().get(framework).module
    return [trainer_python(), "-m", module, "train", "--spec", str(spec_path)]


def new_run_id() -> str:
    return "run-" + uuid.uuid4().hex[:10]


# Room a run needs beyond its dataset copy: checkpoints (last + best), plots, logs.
RUN_OVERHEAD_BYTES = 1 << 30
MIN_FREE_ENV = "OUTPOST_MIN_FREE_BYTES"


def _gib(n: int | float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def check_disk_space(ws: Any, dataset_bytes: int) -> None:
    """Refuse a run when the workspace's disk lacks room for its dataset copy and checkpoints.

    The estimate is the dataset copy plus 1 GiB; ``OUTPOST_MIN_FREE_BYTES`` replaces it.

    Raises:
        TrainingError: less free space than the estimate.
    """
    raw = os.environ.get(MIN_FREE_ENV)
    need = int(raw) if raw and raw.strip().isdigit() else dataset_bytes + RUN_OVERHEAD_BYTES
    free = shutil.disk_usage(ws.root).free
    if free < need:
        raise TrainingError(
            f"only {_gib(free)} free in {ws.root} but this run needs about {_gib(need)} "
            f"(dataset copy + checkpoints); free space or set {MIN_FREE_ENV} to a lower estimate"
        )


def _version_number(ref: str | int | None) -> int | None:
    if isinstance(ref, int):
        return ref
    if ref is None:
        return None
    text = ref.strip().lower()
    if text == "draft":
        return 0
    text = text.removeprefix("v")
    return int(text) if text.isdigit() else None


def _dataset_facts(ws: Any, name: str, version: str | None) -> tuple[str, int]:
    """The dataset's task and the bytes of the images a run on it would copy (an estimate).

    The version counted is the one named when it is a number, else the draft when there is
    one (a run snapshots it), else the latest.

    Raises:
        NotFoundError: no such dataset.
    """
    with ws.session() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == name))
        if ds is None:
            raise NotFoundError(f"no dataset {name!r}; list them with: outpost dataset list")
        number = _version_number(version)
        query = select(DatasetVersion.id).where(DatasetVersion.dataset_id == ds.id)
        if number is not None:
            query = query.where(DatasetVersion.number == number)
        else:
            query = query.order_by(
                (DatasetVersion.number == 0).desc(), DatasetVersion.number.desc()
            )
        version_id = s.scalars(query).first()
        size = 0
        if version_id is not None:
            size = int(
                s.scalar(
                    select(func.coalesce(func.sum(Blob.size), 0))
                    .join(DatasetItem, DatasetItem.image_sha256 == Blob.sha256)
                    .where(DatasetItem.version_id == version_id)
                )
                or 0
            )
        return ds.task, size


def _experiment_id(ws: Any, name: str | None) -> int | None:
    """The id of the experiment called ``name``, made when it does not exist."""
    if name is None or not name.strip():
        return None
    with ws.session() as s:
        exp = s.scalar(select(Experiment).where(Experiment.name == name.strip()))
        if exp is None:
            exp = Experiment(project_id=ws.default_project_id(), name=name.strip())
            s.add(exp)
            s.flush()
        return int(exp.id)


def submit_training(ws: Any, opts: TrainOptions) -> dict[str, str]:
    """Prepare a run and queue its training job without waiting; ``{"job", "run"}``.

    The run is prepared as ``run_training`` does (options, version, dataset copy, spec,
    ``TrainingRun`` row with status ``queued``); a job manager (``outpost jobs work``, the
    GUI, or ``run_training``'s wait) starts it when its device is free.

    Raises:
        SpecError: an unknown framework, model, preset or option, or a value out of range.
        NotFoundError: no such dataset or version.
        TrainingError: not enough free disk space.
    """
    from desktop_app.core.dataset_versions import resolve_training_version
    from desktop_app.core.datasets import materialize_yolo

    task, dataset_bytes = _dataset_facts(ws, opts.dataset, opts.version)
    resolve_options(opts, 0, task)  # refuse bad options before a version is made
    check_disk_space(ws, dataset_bytes)  # before anything is written
    # No version: snapshot the draft (reused when unchanged); a split override may derive
    # a version with that split. The run trains on exactly the version resolved here.
    version = resolve_training_version(ws, opts.dataset, opts.version, opts.split)
    options = resolve_options(opts, int(version.splits.get("train", 0)), version.task)
    experiment_id = _experiment_id(ws, opts.experiment)
    run_id = new_run_id()
    run_dir = Path(ws.root) / "runs" / run_id
    run_dir.mkdir(parents=True)
    try:
        data_yaml = materialize_yolo(ws, opts.dataset, version.number, run_dir / "data")
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    # classify trains from the folder holding train/<class>/..., the others from data.yaml
    data = data_yaml.parent if version.task == "classify" else data_yaml
    spec = {
        "v": 1,
        "kind": "train",
        "framework": opts.framework,
        "task": version.task,
        "model": opts.model,
        "data": str(data),
        "device": opts.device,
        **{k: options[k] for k in SPEC_FIELDS},
        "extra": {k: v for k, v in options.items() if k not in SPEC_FIELDS},
        "run_dir": str(run_dir),
        "config_dir": str(Path(ws.root) / "yolo_config"),
        "mlflow_tracking_uri": ws.mlflow_tracking_uri,
        "mlflow_experiment": opts.experiment or opts.dataset,
        "mlflow_artifact_root": str(Path(ws.root) / "mlflow-artifacts"),
        "run_name": run_id,
    }
    atomic_write_text(run_dir / "job.json", json.dumps(spec, indent=2))
    params = {"model": opts.model, "device": opts.device, "preset": opts.preset, **options}
    with ws.session() as s:
        s.add(
            TrainingRun(
                id=run_id,
                project_id=ws.default_project_id(),
                dataset_version_id=version.id,
                framework=opts.framework,
                task=version.task,
                model=opts.model,
                status="queued",
                params=params,
                run_dir=ws.relative(run_dir),
                experiment_id=experiment_id,
            )
        )
    job_id = submit(ws, "train", spec, resource=resource_for_device(opts.device), run_id=run_id)
    return {"job": job_id, "run": run_id}


def run_training(
    ws: Any, opts: TrainOptions, on_event: EventCallback | None = None
) -> dict[str, Any]:
    """Train one run to completion as a job; return the run summary.

    The run is queued, started when its device is free (by this process, or by a running
    ``outpost jobs work``), each epoch's metrics are committed as they arrive, and the final
    status is ``completed``, ``failed`` or ``cancelled`` (Ctrl-C stops the child gracefully,
    then KeyboardInterrupt is raised).

    Raises:
        TrainingError: the run failed or was cancelled by someone else.
    """
    submitted = submit_training(ws, opts)
    return _wait_run(ws, submitted["job"], submitted["run"], on_event)


def _wait_run(ws: Any, job_id: str, run_id: str, on_event: EventCallback | None) -> dict[str, Any]:
    with JobManager(ws) as manager:
        job = manager.wait(job_id, on_event)
    if job.status == "completed":
        return run_summary(ws, run_id)
    log = Path(ws.root) / "runs" / run_id / "train.log"
    verb = "was cancelled" if job.status == "cancelled" else "failed"
    raise TrainingError(f"training run {run_id} {verb}: {job.error} (log: {log})")


def resume_run(ws: Any, run_ref: str) -> str:
    """Queue a job that continues a failed, cancelled or orphaned run from its last checkpoint.

    The checkpoint is the latest ``last`` its trainer reported, else
    ``<run_dir>/train/weights/last.pt``. The new job's spec is the run's ``job.json`` with
    ``resume`` set; the same run continues (status ``queued`` again; later epochs' metrics
    append) and ``resumed_from`` names the job whose checkpoint it continues from.

    Returns:
        The new job's id.

    Raises:
        NotFoundError: no such run.
        TrainingError: the run completed, is still active, or has no checkpoint.
    """
    run = resolve_run(ws, run_ref)
    if run.status == "completed":
        raise TrainingError(
            f"run {run.id} completed; only a failed or cancelled run resumes (train a new run instead)"
        )
    if run.status in ("queued", "running"):
        raise TrainingError(
            f"run {run.id} is {run.status}; cancel it first with: outpost jobs cancel JOB"
        )
    run_dir = ws.resolve(run.run_dir)
    last_job = latest_job_for_run(ws, run.id)
    checkpoint: Path | None = None
    if last_job is not None and last_job.progress.get("last"):
        checkpoint = Path(str(last_job.progress["last"]))
    if checkpoint is None or not checkpoint.is_file():
        checkpoint = run_dir / "train" / "weights" / "last.pt"
    if not checkpoint.is_file():
        raise TrainingError(
            f"run {run.id} has no checkpoint to resume from (no last.pt under {run_dir}); "
            "train it again with: outpost train"
        )
    try:
        spec = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(
            f"run {run.id} has no readable job spec ({run_dir / 'job.json'}: {exc}); "
            "train it again with: outpost train"
        ) from None
    check_disk_space(ws, 0)
    device = str(run.params.get("device") or spec.get("device") or "auto")
    spec["device"] = device
    spec["resume"] = str(checkpoint)
    job_id = submit(ws, "train", spec, resource=resource_for_device(device), run_id=run.id)
    with ws.session() as s:
        row = s.get(TrainingRun, run.id)
        row.status, row.error, row.finished_at = "queued", None, None
        row.resumed_from = last_job.id if last_job is not None else None
    return job_id


def wait_resumed(ws: Any, job_id: str, on_event: EventCallback | None = None) -> dict[str, Any]:
    """Follow a resumed run's job to its end (as ``run_training`` does); the run summary."""
    job = get_job(ws, job_id)
    if job.run_id is None:
        raise NotFoundError(f"job {job_id} belongs to no training run")
    return _wait_run(ws, job_id, job.run_id, on_event)


class TrainingJobs:
    """The ``train`` job kind: launches the trainer child and records a run from its events."""

    def prepare(self, ws: Any, job: JobInfo) -> Launch:
        """Write ``job.json`` from the job's spec and mark the run running."""
        if job.run_id is None:
            raise TrainingError(f"job {job.id} has no training run; submit it with submit_training")
        run_dir = Path(job.spec["run_dir"])
        spec_path = run_dir / "job.json"
        atomic_write_text(spec_path, json.dumps(job.spec, indent=2))
        with ws.session() as s:
            run = s.get(TrainingRun, job.run_id)
            run.status, run.error, run.finished_at = "running", None, None
            run.started_at = run.started_at or utcnow()
        return Launch(
            job_id=job.id,
            command=trainer_command(str(job.spec.get("framework", "ultralytics")), spec_path),
            events_path=run_dir / "events.jsonl",
            log_path=run_dir / "train.log",
        )

    def record(
        self, ws: Any, job: JobInfo, event: dict[str, Any], progress: dict[str, Any]
    ) -> None:
        """Record one trainer event on the run (metrics per epoch, validation, the end)."""
        run_id = job.run_id
        kind = event["event"]
        if run_id is None:
            return
        with ws.session() as s:
            run = s.get(TrainingRun, run_id)
            if run is None:
                return
            if kind == "start":
                run.mlflow_run_id = event.get("mlflow_run_id") or run.mlflow_run_id
                run.device = event.get("device")
            elif kind == "epoch_end":
                epoch = int(event["epoch"])
                # a resumed run may repeat the epoch it stopped in: the newest values win
                s.execute(
                    delete(RunMetric).where(RunMetric.run_id == run_id, RunMetric.epoch == epoch)
                )
                for key, value in (event.get("metrics") or {}).items():
                    if value is not None:
                        s.add(RunMetric(run_id=run_id, epoch=epoch, key=key, value=float(value)))
            elif kind == "validation":
                run.validation = {k: v for k, v in event.items() if k not in ("v", "event")}
            elif kind == "end":
                if event.get("best"):
                    run.best_checkpoint = ws.relative(event["best"])
                if event.get("metrics"):
                    run.final_metrics = {k: v for k, v in event["metrics"].items() if v is not None}
                if event.get("mlflow_run_id"):
                    run.mlflow_run_id = event["mlflow_run_id"]
                if event.get("device"):
                    run.device = event["device"]
                progress["warnings"] = list(event.get("warnings") or [])

    def finish(self, ws: Any, job: JobInfo, status: str, error: str | None) -> None:
        """Set the run's final status: an orphaned job leaves its run failed (resumable)."""
        if job.run_id is None:
            return
        with ws.session() as s:
            run = s.get(TrainingRun, job.run_id)
            if run is None:
                return
            run.status = "failed" if status == "orphaned" else status
            run.finished_at = utcnow()
            if status == "completed":
                run.error = "; ".join(job.progress.get("warnings") or []) or None
            else:
                run.error = error or log_tail(ws.resolve(job.log_path) if job.log_path else None)


TRAINING_JOBS = TrainingJobs()


def resolve_run(ws: Any, run_ref: str) -> TrainingRun:
    """A run by id, or ``latest`` for the newest completed run."""
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


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


def _context(s: Any, runs: list[TrainingRun]) -> dict[str, dict[Any, Any]]:
    """Dataset name and version label, experiment name and newest job of each run."""
    version_ids = {r.dataset_version_id for r in runs}
    versions: dict[Any, Any] = {}
    if version_ids:
        for v, name in s.execute(
            select(DatasetVersion, Dataset.name)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(DatasetVersion.id.in_(version_ids))
        ):
            versions[v.id] = (name, v.label)
    exp_ids = {r.experiment_id for r in runs if r.experiment_id is not None}
    experiments: dict[Any, Any] = {}
    if exp_ids:
        experiments = dict(
            s.execute(
                select(Experiment.id, Experiment.name).where(Experiment.id.in_(exp_ids))
            ).all()
        )
    jobs: dict[Any, Any] = {}
    run_ids = [r.id for r in runs]
    if run_ids:
        for job in s.scalars(select(Job).where(Job.run_id.in_(run_ids)).order_by(Job.created_at)):
            jobs[job.run_id] = job  # the newest wins
    return {"versions": versions, "experiments": experiments, "jobs": jobs}


def _job_fields(job: Job | None) -> dict[str, Any]:
    if job is None:
        return {"job_id": None, "job_status": None, "progress": {}}
    shown = ("epoch", "epochs", "eta_s", "metrics", "last", "primary_metric")
    return {
        "job_id": job.id,
        "job_status": job.status,
        "progress": {k: v for k, v in (job.progress or {}).items() if k in shown},
    }


def _common_fields(run: TrainingRun, ctx: dict[str, dict[Any, Any]]) -> dict[str, Any]:
    dataset, version = ctx["versions"].get(run.dataset_version_id, (None, None))
    return {
        "dataset": dataset,
        "dataset_version": version,
        "task": run.task,
        "experiment": ctx["experiments"].get(run.experiment_id),
        "starred": bool(run.starred),
        "tags": list(run.tags or []),
        "notes": _first_line(run.notes),
        "resumed_from": run.resumed_from,
        **_job_fields(ctx["jobs"].get(run.id)),
    }


def run_summary(ws: Any, run_id: str) -> dict[str, Any]:
    """One run: its options, status, per-epoch metrics, validation, dataset, job and notes.

    Raises:
        NotFoundError: no such run.
    """
    with ws.session() as s:
        run = s.get(TrainingRun, run_id)
        if run is None:
            raise NotFoundError(f"no training run {run_id!r}; list them with: outpost runs list")
        epochs: dict[int, dict[str, float]] = {}
        for m in s.scalars(
            select(RunMetric).where(RunMetric.run_id == run_id).order_by(RunMetric.epoch)
        ):
            epochs[m.epoch] = epochs.get(m.epoch, {}) | {m.key: m.value}
        ctx = _context(s, [run])
        validation = dict(run.validation or {})
        return {
            "id": run.id,
            "status": run.status,
            "framework": run.framework,
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
            "primary_metric": validation.get("primary_metric"),
            "validation": validation,
            "error": run.error,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            **_common_fields(run, ctx),
            "notes_full": run.notes,
            "epochs": [{"epoch": e, "metrics": epochs[e]} for e in sorted(epochs)],
        }


def list_runs(ws: Any) -> list[dict[str, Any]]:
    """Every run, oldest first, with its dataset, experiment, tags and job progress."""
    with ws.session() as s:
        runs = list(s.scalars(select(TrainingRun).order_by(TrainingRun.created_at)).all())
        ctx = _context(s, runs)
        return [
            {
                "id": r.id,
                "status": r.status,
                "model": r.model,
                "epochs": r.params.get("epochs"),
                "imgsz": r.params.get("imgsz"),
                "mAP50": r.final_metrics.get("metrics/mAP50(B)"),
                "mAP50-95": r.final_metrics.get("metrics/mAP50-95(B)"),
                "primary_metric": (r.validation or {}).get("primary_metric"),
                "created_at": r.created_at.isoformat() if r.created_at else None,
                **_common_fields(r, ctx),
            }
            for r in runs
        ]
