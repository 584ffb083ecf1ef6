"""Training with Ultralytics under the offline recipe, reporting every epoch's metrics.

Detect, segment, classify and pose train from any model YAML Ultralytics ships or from a
user's weights file. A weights file (and a checkpoint to resume from) is checked with
``weights_only=True`` before Ultralytics sees it, and Ultralytics itself runs with
``ULTRALYTICS_SAFE_LOAD=1`` so every load it does later (resume, final validation) is
restricted the same way.

Test hook: with ``OUTPOST_TEST_STOP_AFTER_EPOCH=N`` in the environment the run fails right
after epoch N has been reported and ``last.pt`` written, as an interrupted run would; the
resume tests use it. Nothing sets it outside tests.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from runtimes.fileio import atomic_write_text
from runtimes.offline import apply_offline_env, quiet_ultralytics_settings
from trainers.protocol import EventWriter, JobSpec, SpecError
from trainers.tracking import MlflowTracker

STOP_AFTER_EPOCH_ENV = "OUTPOST_TEST_STOP_AFTER_EPOCH"
# Options a resumed run may change; the rest come from the checkpoint (Ultralytics' rule).
RESUME_OVERRIDES = ("device", "workers", "batch", "patience", "plots", "cache")


class StoppedForTest(RuntimeError):
    """Raised by the test hook after the epoch it names."""


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


def _check_inputs(spec: JobSpec) -> None:
    """Refuse a model of another task and unsafe or unreadable weights before training."""
    from trainers.registry import ULTRALYTICS
    from trainers.ultralytics.weights import check_weights

    if spec.resume:
        ckpt = check_weights(Path(spec.resume), spec.task)
        if ckpt.get("optimizer") is None or int(ckpt.get("epoch", -1)) < 0:
            raise SpecError(
                f"{spec.resume} is the checkpoint of a finished run; nothing to resume, start a new run"
            )
        return
    model = Path(spec.model).expanduser()
    if model.suffix == ".pt":
        check_weights(model, spec.task)
        return
    ULTRALYTICS.check_model(spec.model, spec.task)


def _train_kwargs(spec: JobSpec, device: str) -> dict[str, Any]:
    if spec.resume:
        run_dir = Path(spec.resume).resolve().parent.parent  # <run>/weights/last.pt
        kwargs: dict[str, Any] = {
            "resume": True,
            "data": spec.data,
            "device": device,
            "save_dir": str(run_dir),
            "plots": spec.plots,
            "patience": spec.patience,
            "batch": spec.batch,
        }
        extra = _validated_extra(spec.extra)
        kwargs.update({k: v for k, v in extra.items() if k in RESUME_OVERRIDES})
    else:
        kwargs = {
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
    if device != "cpu" and not spec.resume:
        kwargs.setdefault("amp", True)
    return kwargs


def _write_confusion_json(save_dir: Path, validation: dict[str, Any]) -> Path | None:
    matrix = validation.get("confusion_matrix")
    if not matrix:
        return None
    path = save_dir / "confusion_matrix.json"
    atomic_write_text(path, json.dumps(matrix))
    return path


def run_training(spec: JobSpec, events: EventWriter) -> dict[str, Any]:
    """Train; emit ``start``, ``train_start``, one ``epoch_end`` per epoch and ``validation``.

    Returns:
        The fields of the ``end`` event.

    Raises:
        WeightsError: the weights or resume checkpoint are unreadable or unsafe (before
            anything trains).
        SpecError: a model of another task, or a finished run to resume.
    """
    apply_offline_env(Path(spec.config_dir))
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"  # read when Ultralytics is imported
    _check_inputs(spec)
    tracker = MlflowTracker(spec)
    tracker.start()  # MLflow loads and opens its store on a thread while Ultralytics loads
    from ultralytics import YOLO

    quiet_ultralytics_settings()
    import torch

    from trainers.ultralytics.validation import validation_payload

    device = choose_device(spec.device)
    threads = os.cpu_count() or 1
    stop_after = int(os.environ.get(STOP_AFTER_EPOCH_ENV, "0") or 0)
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
            start_epoch=int(getattr(trainer, "start_epoch", 0)) + 1,
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
        last = str(trainer.last) if Path(trainer.last).exists() else None
        events.emit(
            "epoch_end", epoch=epoch, epochs=int(trainer.epochs), metrics=metrics, last=last
        )
        tracker.log_metrics(metrics, step=epoch)
        if stop_after and epoch == stop_after and epoch < int(trainer.epochs):
            raise StoppedForTest(f"stopped after epoch {epoch} ({STOP_AFTER_EPOCH_ENV})")

    def on_train_end(trainer: Any) -> None:
        outcome["best"] = str(trainer.best) if Path(trainer.best).exists() else None
        outcome["last"] = str(trainer.last) if Path(trainer.last).exists() else None
        outcome["metrics"] = _floats(trainer.metrics or {})
        outcome["save_dir"] = str(trainer.save_dir)
        try:
            outcome["validation"] = validation_payload(trainer, spec.task, outcome["metrics"])
        except Exception as exc:  # noqa: BLE001 - the run succeeded; its report is partial
            outcome["validation_error"] = (
                f"validation results unavailable: {type(exc).__name__}: {exc}"
            )

    source = spec.resume or spec.model
    model = YOLO(source) if Path(source).suffix == ".pt" else YOLO(source, task=spec.task)
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    model.add_callback("on_train_end", on_train_end)
    try:
        model.train(**_train_kwargs(spec, device))
    except BaseException as exc:
        tracker.abort(exc)
        raise
    if not outcome.get("best"):
        tracker.finish("FAILED")
        raise RuntimeError("training ended without a checkpoint")
    save_dir = Path(outcome["save_dir"])
    warnings: list[str] = []
    validation = outcome.get("validation")
    if validation is not None:
        events.emit("validation", **validation)
        confusion = _write_confusion_json(save_dir, validation)
        for artifact in [*validation["plots"], confusion]:
            if artifact is not None:
                tracker.log_artifact(Path(artifact))
    if outcome.get("validation_error"):
        warnings.append(outcome["validation_error"].splitlines()[0][:300])
    for artifact in (Path(outcome["best"]), save_dir / "results.csv", save_dir / "args.yaml"):
        tracker.log_artifact(artifact)
    tracker.finish("FINISHED")
    if tracker.error:
        warnings.append(tracker.error)
    print(f"best checkpoint: {outcome['best']}", file=sys.stderr)
    return {
        "best": outcome["best"],
        "last": outcome["last"],
        "metrics": outcome["metrics"],
        "mlflow_run_id": tracker.run_id,
        "warnings": warnings,
        "device": device,
    }
