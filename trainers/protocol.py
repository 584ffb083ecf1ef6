"""The job protocol between the desktop and a trainer child process.

The desktop writes a spec file and starts ``python -m trainers.<framework> train --spec F``.
The child prints one JSON object per line on stdout (``{"v": 1, "event": ..., ...}``), logs
to stderr, and exits 0 on success, 1 on failure, 2 when reporting itself failed. Settings
come from the spec file; ``OUTPOST_JOB_<FIELD>`` environment variables override them, so the
same entry point runs as a Kubernetes Job.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtimes.errors import OutpostError

PROTOCOL_VERSION = 1
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REPORTING = 2
ENV_PREFIX = "OUTPOST_JOB_"

# start: {device, pid}; train_start: {epochs, device, threads}; epoch_end: {epoch, epochs,
# metrics: {key: value}, last: path of the last checkpoint}; validation: the end-of-run
# results (see VALIDATION_KEYS); log: {message}; end: {status, best, last, metrics,
# mlflow_run_id, warnings, device}; error: {message}.
EventName = Literal["start", "train_start", "epoch_end", "validation", "log", "end", "error"]
TASKS = ("detect", "segment", "classify", "pose")
# A "validation" event carries:
#   primary_metric: {"key", "value"} (the task's headline metric, e.g. mAP50-95 for detect)
#   per_class: [{"class", "images", "instances", "precision", "recall", "ap50", "ap"}]
#       (classify: {"class", "images", "precision", "recall", "top1"} style keys)
#   confusion_matrix: {"names": [... classes, "background"], "matrix": [[int]]}
#       (rows = predicted, columns = true, as Ultralytics draws it)
#   curves: {"pr": {"recall": [101 points], "precision": {class: [101 points]}}}
#   plots: [absolute paths of PNG plots]; samples: [absolute paths of sample predictions]
VALIDATION_KEYS = ("primary_metric", "per_class", "confusion_matrix", "curves", "plots", "samples")


class SpecError(OutpostError):
    """The job spec is missing, malformed or out of range."""


class ProtocolError(OutpostError):
    """A line from a child is not a valid protocol event."""


class ReportingError(OutpostError):
    """The child could not write an event (its reader went away)."""


class JobSpec(BaseModel):
    """What a training job needs. Paths are absolute; the child never touches the workspace DB."""

    model_config = ConfigDict(extra="forbid")

    v: int = PROTOCOL_VERSION
    kind: Literal["train"] = "train"
    framework: str = "ultralytics"
    task: Literal["detect", "segment", "classify", "pose"] = "detect"
    model: str
    # detect/segment/pose: a data.yaml; classify: the folder holding train/ and val/
    data: str
    epochs: int = Field(10, ge=1, le=10_000)
    imgsz: int = Field(640, ge=32, le=4096)
    batch: int = Field(16, ge=-1, le=4096)
    device: str = "auto"
    workers: int | None = Field(None, ge=0, le=64)
    seed: int = 0
    patience: int = Field(100, ge=0)
    plots: bool = False
    run_dir: str
    config_dir: str
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "outpost"
    mlflow_artifact_root: str | None = None
    run_name: str | None = None
    # A checkpoint (last.pt) to resume from: same run folder, same options, next epoch.
    resume: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


def _coerce_env(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load_spec(path: Path, env: Mapping[str, str] | None = None) -> JobSpec:
    """Read a spec file, apply ``OUTPOST_JOB_*`` overrides, validate.

    Raises:
        SpecError: with one line naming the field and the problem.
    """
    env = os.environ if env is None else env
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"job spec {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"job spec {path} is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    if not isinstance(data, dict):
        raise SpecError(f"job spec {path} must be a JSON object")
    for field in JobSpec.model_fields:
        key = ENV_PREFIX + field.upper()
        if key in env:
            data[field] = _coerce_env(env[key])
    if data.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise SpecError(
            f"job spec version {data.get('v')!r} is not supported (expected {PROTOCOL_VERSION})"
        )
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise SpecError(f"job spec field {where!r}: {first['msg']}") from None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _clean(value.item())
    return value


def encode_event(event: str, **fields: Any) -> str:
    """One protocol line (no newline). Non-finite floats become null."""
    return json.dumps(
        {"v": PROTOCOL_VERSION, "event": event, **_clean(fields)}, separators=(",", ":")
    )


def parse_event(line: str) -> dict[str, Any]:
    """Parse one line from a child; raises ProtocolError on anything that is not an event."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        raise ProtocolError(f"not a protocol line: {line[:120]!r}") from None
    if not isinstance(obj, dict) or "event" not in obj:
        raise ProtocolError(f"not a protocol event: {line[:120]!r}")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {obj.get('v')!r} is not supported (expected {PROTOCOL_VERSION})"
        )
    return obj


class EventWriter:
    """Writes events to the protocol stream, flushing each line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def emit(self, event: str, **fields: Any) -> None:
        try:
            self.stream.write(encode_event(event, **fields) + "\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:
            raise ReportingError(f"cannot report event {event!r}: {exc}") from exc


def claim_stdout() -> EventWriter:
    """Reserve the real stdout for events and send everything else printed to stderr.

    Libraries (Ultralytics logs to stdout) and native code can no longer corrupt the stream.
    """
    import sys

    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return EventWriter(os.fdopen(protocol_fd, "w", buffering=1, encoding="utf-8"))
