"""Operations the Studio pages need that compose existing core calls (no Qt here).

Each function is a plain, typed call a page runs off the UI thread: the trainers'
option schemas and model lists, the export capability matrix with what this machine can
run, per-epoch curves of a run, and one-image inference on a device or locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop_app.core.errors import NotFoundError
from runtimes.errors import OutpostError


class StudioOpError(OutpostError):
    """A Studio operation was asked for something it cannot do."""


def trainer_frameworks() -> list[dict[str, Any]]:
    """The registered trainers: ``{"key", "title", "tasks"}`` each."""
    from trainers.registry import default_registry

    return [
        {"key": p.key, "title": p.title, "tasks": list(p.tasks)}
        for p in default_registry().plugins()
    ]


def trainer_schema(framework: str) -> dict[str, Any]:
    """A trainer's option schema as ``outpost train --schema FRAMEWORK`` prints it.

    Raises:
        SpecError: an unknown framework.
    """
    from trainers.registry import default_registry

    return default_registry().get(framework).schema().to_json()


def check_train_options(
    framework: str, preset: str | None, values: dict[str, Any]
) -> dict[str, Any]:
    """Every option resolved (defaults < preset < values), each validated.

    Raises:
        SpecError: a value of the wrong type or out of range; the message names the option.
    """
    from trainers.registry import default_registry

    return default_registry().get(framework).schema().resolve(preset, values)


def trainable_models(framework: str, task: str | None = None) -> list[str]:
    """The architecture names a framework trains (for one task when given), sorted.

    Raises:
        SpecError: an unknown framework.
    """
    from trainers.registry import default_registry

    plugin = default_registry().get(framework)
    return sorted(
        name
        for name, t in plugin.architectures().items()
        if t in plugin.tasks and (task is None or t == task)
    )


def run_curves(ws: Any, run_id: str) -> dict[str, Any]:
    """A run's status, job progress and per-epoch metric series.

    Returns:
        ``{"id", "status", "job_id", "job_status", "progress", "error",
        "series": {metric: [(epoch, value), ...]}}``.

    Raises:
        NotFoundError: no such run.
    """
    from desktop_app.core.training import run_summary

    summary = run_summary(ws, run_id)
    series: dict[str, list[tuple[float, float]]] = {}
    for row in summary["epochs"]:
        for key, value in row["metrics"].items():
            series.setdefault(key, []).append((float(row["epoch"]), float(value)))
    return {
        "id": summary["id"],
        "status": summary["status"],
        "job_id": summary["job_id"],
        "job_status": summary["job_status"],
        "progress": summary["progress"],
        "error": summary["error"],
        "series": series,
    }


def export_capabilities() -> list[dict[str, Any]]:
    """The capability matrix, each format with ``available`` and the modules it ``missing``."""
    from exporters.base import missing_modules
    from exporters.registry import default_registry

    rows = []
    for cap in default_registry().capabilities():
        missing = missing_modules(cap.needs)
        rows.append(
            {
                "key": cap.key,
                "title": cap.title,
                "frameworks": list(cap.frameworks),
                "tasks": list(cap.tasks),
                "precisions": list(cap.precisions),
                "runtime": cap.runtime,
                "notes": cap.notes,
                "extra": cap.extra,
                "missing": missing,
                "available": not missing,
            }
        )
    return rows


_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")


def _looks_like_image(data: bytes) -> bool:
    """JPEG, PNG, BMP or WebP by their first bytes (content-addressed blobs have no suffix)."""
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _image_bytes(image: Path | str) -> bytes:
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotFoundError(
            f"cannot read image {path}: {exc.strerror}; pick another file"
        ) from None
    if not _looks_like_image(data):
        raise StudioOpError(
            f"{path.name} is not an image (JPEG, PNG, BMP or WebP); pick an image file"
        )
    return data


def installed_models(ws: Any, device_id: str, interfaces: list[str] | None = None) -> list[str]:
    """The model names installed on a paired device (asked now).

    Raises:
        DeviceError: the device is not paired or refuses this desktop.
        AgentUnreachableError: the device does not answer.
    """
    from desktop_app.core.devices import connect

    _, client = connect(ws, device_id, interfaces)
    with client:
        models = client.info().get("models") or []
    return [str(m["name"]) for m in models if m.get("name")]


def _same_keys(detection: dict[str, Any]) -> dict[str, Any]:
    """One detection with the Predictor's keys, ``class_name`` and ``confidence`` (what every
    agent route answers with); ``class`` and ``score`` (the deprecated aliases that
    ``/v1/models/{name}/infer`` adds while protocol 1 is spoken, and its only names on older
    agents) are dropped, or renamed when the canonical keys are missing."""
    out = {k: v for k, v in detection.items() if k not in ("class", "score")}
    out.setdefault("class_name", detection.get("class"))
    out.setdefault("confidence", detection.get("score"))
    return out


def infer_on_device(
    ws: Any,
    device_id: str,
    image: Path | str,
    *,
    model: str | None = None,
    conf: float | None = None,
    interfaces: list[str] | None = None,
) -> dict[str, Any]:
    """Run one image on a paired device's model (its active one when ``model`` is None).

    Returns:
        ``{"where": "device", "device", "model", "task", "detections": [...],
        "classification": [...], "timing"}`` where each detection has ``class_id``,
        ``class_name``, ``confidence`` and pixel ``xyxy`` (and ``mask`` or ``keypoints`` for
        segment and pose models), and ``classification`` a classifier's most probable classes
        (``class_id``, ``class_name``, ``confidence``; empty for other tasks).

    Raises:
        StudioOpError: the file is not an image.
        DeviceError: the device is not paired or refuses this desktop.
        AgentRejectedError: the device refused the request (no such model, bad image).
    """
    from desktop_app.core.devices import connect

    data = _image_bytes(image)
    dev, client = connect(ws, device_id, interfaces)
    with client:
        if model is None:
            reply = client.infer(data, conf=conf)
        else:
            reply = client.infer_model(model, data, conf=conf)
    return {
        "where": "device",
        "device": dev.id,
        "model": reply.get("model", model),
        "task": reply.get("task"),
        "detections": [_same_keys(d) for d in reply.get("detections") or []],
        "classification": list(reply.get("classification") or []),
        "timing": reply.get("timing") or reply.get("timing_ms"),
    }


def infer_locally(
    ws: Any, export_ref: str, image: Path | str, *, conf: float = 0.25
) -> dict[str, Any]:
    """Run one image through an export's package on this machine (runtimes Predictor); the
    answer has the keys of :func:`infer_on_device`.

    Raises:
        StudioOpError: the file is not an image.
        NotFoundError: no such export, or it has no package.
    """
    from desktop_app.core.exports import get_export
    from runtimes.predictor import Predictor

    data = _image_bytes(image)
    exp = get_export(ws, export_ref)
    package = ws.resolve(exp.package_path) if exp.package_path else None
    if package is None or not Path(package).exists():
        raise NotFoundError(f"export {exp.id} has no package here (status {exp.status})")
    predictor = Predictor.from_path(Path(package))
    try:
        dets, timing = predictor.predict_bytes(data, conf=conf)
        spec = predictor.manifest.model
    finally:
        predictor.close()
    return {
        "where": "local",
        "export": exp.id,
        "model": str((exp.manifest or {}).get("name") or exp.id),
        "task": spec.task,
        "detections": dets.to_list(),
        "classification": dets.top_k(spec.postprocessing.top_k),
        "timing": timing.as_dict(),
    }


def to_annotations(detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detections (agent, Predictor or prediction-set records) as boxes a view draws:
    ``{"xyxy", "class_id", "class_name", "score"}``, with a segmentation ``mask`` (COCO RLE)
    and pose ``keypoints`` where the detection has them."""
    out = []
    for d in detections:
        xyxy = d.get("xyxy")
        if not xyxy or len(xyxy) != 4:
            continue
        cid = int(d.get("class_id", 0))
        score = d.get("confidence", d.get("score"))
        out.append(
            {
                "xyxy": [float(v) for v in xyxy],
                "class_id": cid,
                "class_name": str(d.get("class_name", d.get("class", cid))),
                "score": float(score) if score is not None else None,
                **{k: d[k] for k in ("mask", "keypoints") if d.get(k)},
            }
        )
    return out


def check_train_option(framework: str, name: str, value: Any) -> Any:
    """One option's value converted to its type, or SpecError naming the option.

    Raises:
        SpecError: an unknown option, a value of the wrong type or out of range.
    """
    from trainers.registry import default_registry

    return default_registry().get(framework).schema().field(name).coerce(value)


def dataset_choices(ws: Any) -> list[dict[str, Any]]:
    """Datasets a run can train on: ``{"name", "task", "versions": ["auto", "draft"?, "v3", ...]}``.

    ``auto`` trains on the draft (snapshotted) when there is one, else the latest version.
    """
    from desktop_app.core.datasets import list_datasets

    out = []
    for d in list_datasets(ws):
        versions = ["auto"]
        if d["draft"]:
            versions.append("draft")
        versions += [f"v{n}" for n in range(int(d["versions"]), 0, -1)]
        out.append({"name": d["name"], "task": d["task"], "versions": versions})
    return out


def _sample_image(ws: Any, record: dict[str, Any], source: str) -> Path | None:
    sha = record.get("sha256")
    if isinstance(sha, str):
        try:
            blob = Path(ws.blobs.path(sha))
        except OutpostError:
            blob = None
        if blob is not None and blob.is_file():
            return blob
    candidate = Path(str(record.get("file", "")))
    if not candidate.is_absolute():
        candidate = Path(source) / candidate
    return candidate if candidate.is_file() else None


def prediction_samples(ws: Any, run_id: str, limit: int = 12) -> list[dict[str, Any]]:
    """The images of a run's newest prediction set with their boxes (empty without one).

    Returns:
        ``[{"image": path, "file", "set_id", "annotations": [...]}]`` (images whose file is
        gone are left out).
    """
    from desktop_app.core.predictions import list_prediction_sets, read_predictions

    sets = [p for p in list_prediction_sets(ws) if p["run_id"] == run_id]
    if not sets:
        return []
    newest = sets[-1]
    out = []
    for record in read_predictions(ws, newest["id"], limit=limit):
        if "error" in record:
            continue
        image = _sample_image(ws, record, str(newest["source"]))
        if image is None:
            continue
        out.append(
            {
                "image": str(image),
                "file": record.get("file"),
                "set_id": newest["id"],
                "annotations": to_annotations(list(record.get("detections") or [])),
            }
        )
    return out


def predict_samples(
    ws: Any, run_id: str, *, split: str = "val", conf: float = 0.25, limit: int = 12
) -> list[dict[str, Any]]:
    """Predict a split of the run's dataset version with its newest ONNX export and return
    the first ``limit`` images with their boxes (see :func:`prediction_samples`).

    Raises:
        NotFoundError: no such run, or it has no completed ONNX export.
    """
    from desktop_app.core.predictions import predict_batch
    from desktop_app.core.training import run_summary

    summary = run_summary(ws, run_id)
    predict_batch(
        ws,
        run_ref=run_id,
        dataset=summary["dataset"],
        version=summary["dataset_version"],
        split=split,
        conf=conf,
    )
    return prediction_samples(ws, run_id, limit)


def jobs_led(ws: Any) -> bool:
    """True while some job manager (a worker, a foreground ``outpost train`` or the Studio's
    jobs panel) leads this workspace's jobs."""
    from desktop_app.core.jobs import FileLock

    folder = Path(ws.root) / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / "manager.lock")
    if lock.acquire():
        lock.release()
        return False
    return True


def ensure_worker(ws: Any) -> int | None:
    """Start a background ``outpost jobs work`` for queued jobs unless a manager already
    leads them; the new worker's pid, or None when none was needed."""
    from desktop_app.core.jobs import spawn_worker

    if jobs_led(ws):
        return None
    return spawn_worker(ws)
