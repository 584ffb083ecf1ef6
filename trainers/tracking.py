"""Experiment tracking for trainer children: MLflow, written from a background thread.

Importing MLflow and opening its store takes seconds; doing it beside the training (which
spends its time in native code) keeps that off the run's wall time. Logging failures never
stop a training: they are reported as a warning in the ``end`` event.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

from trainers.protocol import JobSpec

# How long a cancelled run waits for MLflow to record its end before the child exits.
CANCEL_WAIT_S = 2.0


def _mlflow_key(key: str) -> str:
    """MLflow metric names allow no parentheses (``metrics/mAP50(B)`` → ``metrics/mAP50B``)."""
    return key.replace("(", "").replace(")", "")


class MlflowTracker:
    """Params, per-epoch metrics and artifacts of one run, in the spec's MLflow store."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.enabled = bool(spec.mlflow_tracking_uri)
        self.run_id: str | None = None
        self.error: str | None = None
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="outpost-mlflow", daemon=True)

    def start(self) -> None:
        """Begin setting up in the background (best once the training loop runs native code)."""
        if self.enabled and not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    def _setup(self) -> Any:
        import mlflow

        spec = self.spec
        mlflow.set_tracking_uri(str(spec.mlflow_tracking_uri))
        experiment = mlflow.get_experiment_by_name(spec.mlflow_experiment)
        if experiment is None:
            root = Path(spec.mlflow_artifact_root or Path(spec.run_dir) / "mlartifacts")
            experiment_id = mlflow.create_experiment(
                spec.mlflow_experiment, artifact_location=root.as_uri()
            )
        else:
            experiment_id = experiment.experiment_id
        run = mlflow.start_run(experiment_id=experiment_id, run_name=spec.run_name)
        self.run_id = run.info.run_id
        params = spec.model_dump(exclude={"extra", "mlflow_tracking_uri", "mlflow_artifact_root"})
        mlflow.log_params({**params, **spec.extra})
        return mlflow

    def _work(self) -> None:
        try:
            mlflow = self._setup()
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self.error = f"MLflow setup failed: {type(exc).__name__}: {exc}".splitlines()[0]
            mlflow = None
        while True:
            item = self._queue.get()
            if item is None:
                return
            if mlflow is None:
                continue
            kind, payload = item
            try:
                if kind == "metrics":
                    metrics, step = payload
                    mlflow.log_metrics({_mlflow_key(k): v for k, v in metrics.items()}, step=step)
                elif kind == "artifact":
                    mlflow.log_artifact(str(payload))
                elif kind == "end":
                    mlflow.end_run(status=payload)
            except Exception as exc:  # noqa: BLE001
                self.error = f"MLflow {kind} failed: {type(exc).__name__}: {exc}".splitlines()[0]

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            self._queue.put(("metrics", (dict(metrics), step)))

    def log_artifact(self, path: Path) -> None:
        if self.enabled and Path(path).exists():
            self._queue.put(("artifact", Path(path)))

    def abort(self, exc: BaseException) -> None:
        """End the run after a failure: ``KILLED`` for a cancel (SIGINT), else ``FAILED``.

        A cancel waits at most :data:`CANCEL_WAIT_S` for MLflow (a store still being set up
        is left as it is: the child is about to exit and the desktop records the cancel).
        """
        if isinstance(exc, KeyboardInterrupt):
            self.finish("KILLED", timeout=CANCEL_WAIT_S)
        else:
            self.finish("FAILED")

    def finish(self, status: str, timeout: float = 300.0) -> None:
        """End the run and wait for every queued write."""
        self.start()  # a run that failed before training still gets its MLflow record
        if not self._thread.is_alive():
            return
        self._queue.put(("end", status))
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.error = f"MLflow did not finish writing within {timeout:.0f} s"
