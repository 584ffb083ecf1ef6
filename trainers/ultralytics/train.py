"""Training with Ultralytics under the offline recipe, reporting every epoch's metrics."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from runtimes.offline import apply_offline_env, quiet_ultralytics_settings
from trainers.protocol import EventWriter, JobSpec
from trainers.tracking import MlflowTracker


def _floats(d: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in d.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _validated_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """Check options from the spec (or the environment) against the schema; map to Ultralytics."""
    from trainers.ultralytics.schema import SCHEMA

    out = {name: SCHEMA.field(name).coerce(value) for name, value in extra.items()}
    if "cache" in out:
        out["cache"] = False if out["cache"] == "false" else out["cache"]
    return out


def choose_device(requested: str) -> str:
    """``auto`` → the first CUDA GPU when present, else the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def run_training(spec: JobSpec, events: EventWriter) -> dict[str, Any]:
    """Train; emit ``start``, ``train_start``, one ``epoch_end`` per epoch; return the end fields."""
    apply_offline_env(Path(spec.config_dir))
    tracker = MlflowTracker(spec)
    tracker.start()  # MLflow loads and opens its store on a thread while Ultralytics loads
    from ultralytics import YOLO

    quiet_ultralytics_settings()
    import torch

    device = choose_device(spec.device)
    threads = os.cpu_count() or 1
    events.emit("start", device=device, pid=os.getpid())
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
        **_validated_extra(spec.extra),
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
        "warnings": [tracker.error] if tracker.error else [],
        "device": device,
    }
