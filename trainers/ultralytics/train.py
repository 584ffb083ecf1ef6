"""Training with Ultralytics under the offline recipe, reporting every epoch's metrics."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from runtimes.offline import apply_offline_env, quiet_ultralytics_settings
from trainers.protocol import EventWriter, JobSpec


def _floats(d: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in d.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _mlflow_key(key: str) -> str:
    return key.replace("(", "").replace(")", "")


def choose_device(requested: str) -> str:
    """``auto`` → the first CUDA GPU when present, else the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


class MlflowTracker:
    """Logs params, per-epoch metrics and artifacts to a local MLflow tracking store."""

    def __init__(self, spec: JobSpec) -> None:
        self.enabled = bool(spec.mlflow_tracking_uri)
        self.run_id: str | None = None
        if not self.enabled:
            return
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(spec.mlflow_tracking_uri)
        experiment = mlflow.get_experiment_by_name(spec.mlflow_experiment)
        if experiment is None:
            artifact_root = Path(spec.mlflow_artifact_root or Path(spec.run_dir) / "mlartifacts")
            experiment_id = mlflow.create_experiment(
                spec.mlflow_experiment, artifact_location=artifact_root.as_uri()
            )
        else:
            experiment_id = experiment.experiment_id
        run = mlflow.start_run(experiment_id=experiment_id, run_name=spec.run_name)
        self.run_id = run.info.run_id
        params = spec.model_dump(exclude={"extra", "mlflow_tracking_uri", "mlflow_artifact_root"})
        mlflow.log_params({**params, **spec.extra})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            self.mlflow.log_metrics({_mlflow_key(k): v for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path) -> None:
        if self.enabled and path.exists():
            self.mlflow.log_artifact(str(path))

    def finish(self, status: str) -> None:
        if self.enabled:
            self.mlflow.end_run(status=status)


def run_training(spec: JobSpec, events: EventWriter) -> dict[str, Any]:
    """Train; emit ``start``, ``train_start``, one ``epoch_end`` per epoch; return the end fields."""
    apply_offline_env(Path(spec.config_dir))
    from ultralytics import YOLO

    quiet_ultralytics_settings()
    import torch

    device = choose_device(spec.device)
    threads = os.cpu_count() or 1
    tracker = MlflowTracker(spec)
    events.emit("start", mlflow_run_id=tracker.run_id, device=device, pid=os.getpid())
    outcome: dict[str, Any] = {}

    def on_train_start(trainer: Any) -> None:
        if device == "cpu":
            torch.set_num_threads(threads)  # Ultralytics pins the CPU to one thread
        events.emit(
            "train_start",
            epochs=trainer.epochs,
            device=str(trainer.device),
            threads=torch.get_num_threads(),
        )

    reported: set[int] = set()

    def on_fit_epoch_end(trainer: Any) -> None:
        epoch = int(trainer.epoch) + 1
        if epoch in reported or epoch > int(trainer.epochs):
            return  # the final validation of best.pt re-fires this hook; it is reported at the end
        reported.add(epoch)
        metrics: dict[str, float] = {}
        metrics.update(_floats(trainer.label_loss_items(trainer.tloss, prefix="train")))
        metrics.update(_floats(trainer.metrics or {}))
        metrics.update(_floats(trainer.lr or {}))
        if getattr(trainer, "fitness", None) is not None:
            metrics["fitness"] = float(trainer.fitness)
        events.emit("epoch_end", epoch=epoch, epochs=int(trainer.epochs), metrics=metrics)
        tracker.log_metrics(metrics, step=epoch)

    def on_train_end(trainer: Any) -> None:
        outcome["best"] = str(trainer.best) if Path(trainer.best).exists() else None
        outcome["last"] = str(trainer.last) if Path(trainer.last).exists() else None
        outcome["metrics"] = _floats(trainer.metrics or {})
        outcome["save_dir"] = str(trainer.save_dir)

    model = YOLO(spec.model, task=spec.task)
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    model.add_callback("on_train_end", on_train_end)
    kwargs: dict[str, Any] = {
        "data": spec.data,
        "epochs": spec.epochs,
        "imgsz": spec.imgsz,
        "batch": spec.batch,
        "device": device,
        "seed": spec.seed,
        "patience": spec.patience,
        "plots": spec.plots,
        "project": str(Path(spec.run_dir)),
        "name": "train",
        "exist_ok": True,
        "verbose": True,
        **spec.extra,
    }
    if spec.workers is not None:
        kwargs["workers"] = spec.workers
    if device != "cpu":
        kwargs.setdefault("amp", True)
    try:
        model.train(**kwargs)
    except BaseException:
        tracker.finish("FAILED")
        raise
    if not outcome.get("best"):
        tracker.finish("FAILED")
        raise RuntimeError("training ended without a checkpoint")
    save_dir = Path(outcome["save_dir"])
    for artifact in (Path(outcome["best"]), save_dir / "results.csv", save_dir / "args.yaml"):
        tracker.log_artifact(artifact)
    tracker.finish("FINISHED")
    print(f"best checkpoint: {outcome['best']}", file=sys.stderr)
    return {
        "best": outcome["best"],
        "last": outcome["last"],
        "metrics": outcome["metrics"],
        "mlflow_run_id": tracker.run_id,
        "device": device,
    }
