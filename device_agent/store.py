"""Installed models: versions side by side, an atomically switched active one, rollback.

Layout under ``<data-dir>/models/<name>/``::

    <version-or-sha12>/      an extracted, verified package (manifest.json + its files)
    active.json              {"active": {...}, "previous": {...} | null,
                              "staged": {...} | null, "enabled": true | false}

A new package is verified, extracted to a staging folder, loaded, warmed up and checked
against its own self-test (the detections recorded at export time), and only then becomes
active. Until that moment the previous model keeps serving; on any failure the staging
folder is removed and a typed error says why.

When the package's runtime can run on several execution providers here (ONNX Runtime with
CUDA, TensorRT, CoreML or OpenVINO next to the CPU), each is loaded and timed on the
self-test input and the fastest serves; a provider that was wanted but is missing or fails
to initialise is reported as a ``fallback``, never silently replaced.

A package may carry several formats of one model (``Manifest.alternates``). Every (format,
execution provider) pair the runtimes here can run is loaded and timed the same way (warm-up
runs excluded) and the fastest serves; ``formats`` in the result lists each format with its
runtime and timings, or why it cannot run here.

``staged`` is a version installed with ``activate=False`` (loaded and self-tested, then set
aside); ``enabled: false`` is a deactivated model: its files stay, nothing serves it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, cast

import numpy as np

from device_agent.crashguard import CrashGuard
from device_agent.errors import (
    AgentError,
    AmbiguousModelError,
    InstallError,
    ModelNotFoundError,
    NoModelError,
    RollbackError,
    one_line,
    store_write_failed,
)
from runtimes.backends import Backend, BackendRegistry, default_registry
from runtimes.backends.base import CPU_PROVIDERS, NOT_COMPUTE_PROVIDERS, match_provider
from runtimes.backends.onnxruntime import PROVIDER_PREFERENCE
from runtimes.detections import Detections, rle_to_mask
from runtimes.errors import OutpostError, PackageError, RuntimeUnavailableError
from runtimes.fileio import atomic_write_text, sha256_bytes, sha256_file
from runtimes.package import (
    SELF_TEST_OUTPUTS,
    Manifest,
    PackageReader,
    SelfTest,
    SelfTestOutputs,
    read_manifest_dir,
    read_self_test_outputs,
)
from runtimes.predictor import Predictor, Timing
from runtimes.preprocess import read_image

log = logging.getLogger(__name__)

MODELS_DIR = "models"
ACTIVE_FILE = "active.json"
INSTALL_RECORD = ".outpost-install.json"
# where the same package's copy waits while it is installed again (see ModelStore._place)
REPLACED_PREFIX = ".replaced-"
_SAFE_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BENCHMARK_RUNS = 5  # timed runs per provider, after the warm-up runs


class UninstallError(AgentError):
    """Uninstalling would leave the agent serving nothing (pass force to do it anyway)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Requests of one model in its pipeline at once: one in the runtime call, one beside it
# (decoding, building its tensor, or running NMS).
PIPELINE_DEPTH = 2


@dataclass(frozen=True, eq=False)
class InstalledModel:
    """One loaded model version. ``lock`` lets one call at a time run the predictor's backend;
    ``stages`` lets :data:`PIPELINE_DEPTH` requests at a time into :meth:`predict_bytes`.

    ``benchmark`` (ms per provider, or per ``format/provider`` when several formats of the
    package can run here), ``formats`` (each format: its runtime and timings, or why it cannot
    run here) and ``fallback`` say how the runtime was chosen;
    ``report`` holds what only the install that made it knows (self-test, warnings).
    """

    name: str
    version: str
    folder: Path
    manifest: Manifest
    predictor: Predictor
    installed_at: str
    previous_version: str | None = None
    benchmark: dict[str, float] | None = None
    fallback: dict[str, str] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    formats: list[dict[str, Any]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    stages: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(PIPELINE_DEPTH), repr=False
    )
    # what the crash guard knows this version by (its package's sha256), and the guard that
    # marks its runtime calls, so a runtime that crashes on a frame is known at the next start
    crash_key: str = ""
    guard: CrashGuard | None = field(default=None, repr=False)

    @property
    def format(self) -> str:
        return self.predictor.format.key

    @property
    def runtime(self) -> str:
        return self.predictor.backend.key

    @property
    def providers(self) -> list[str]:
        return self.predictor.backend.active_providers

    def describe(self) -> dict[str, Any]:
        spec = self.manifest.model
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "runtime": self.runtime,
            "providers": self.providers,
            "benchmark": self.benchmark,
            "fallback": self.fallback,
            "formats": self.formats,
            "task": spec.task,
            "precision": spec.precision,
            "class_names": list(spec.class_names),
            "input": spec.input.model_dump(mode="json"),
            "installed_at": self.installed_at,
            "previous_version": self.previous_version,
        }

    def install_result(self) -> dict[str, Any]:
        """:meth:`describe` plus the install's own report: activated, self_test, warnings."""
        return {
            **self.describe(),
            "activated": bool(self.report.get("activated", True)),
            "self_test": self.report.get("self_test"),
            "warnings": list(self.report.get("warnings", [])),
        }

    def marked(self) -> contextlib.AbstractContextManager[None]:
        """Mark a runtime call of this version for the crash guard (with :attr:`lock` held)."""
        if self.guard is None:
            return contextlib.nullcontext()
        return self.guard.running(self.crash_key, f"{self.name} {self.version}")

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Hold :attr:`lock` for one runtime call, marked for the crash guard."""
        with self.lock, self.marked():
            yield

    def predict_bytes(
        self, data: bytes, *, channels: str | None = None, **options: float | int | None
    ) -> tuple[Detections, Timing]:
        """One encoded image (JPEG, PNG, ...), or with ``channels`` (``bgr``/``rgb``) one
        decoded frame as ``.npy`` bytes; ``options``: conf, iou, max_det.

        Only the runtime call holds :attr:`lock` (:meth:`running`): the next request decodes, builds its tensor
        and runs NMS while another's runtime call is in flight (on a device whose accelerator
        runs the model, that CPU work overlaps it). At most :data:`PIPELINE_DEPTH` requests
        are in here at once, so a many-core CPU's runtime threads do not compete with a crowd
        of decodes."""
        with self.stages:
            if channels is None:
                return self.predictor.predict_bytes(data, hold=self.running(), **options)
            return self.predictor.predict_frame_bytes(
                data, channels=channels, hold=self.running(), **options
            )


@dataclass(frozen=True)
class RuntimeChoice:
    """The providers a model was loaded with, and why."""

    providers: list[str] | None  # None: the backend's own default order
    benchmark: dict[str, float] | None = None
    fallback: dict[str, str] | None = None
    formats: list[dict[str, Any]] | None = None


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


NMS_MARGIN = 0.05  # how close to the NMS IoU threshold two boxes may be for NMS to go either way
SELF_TEST_MASK_IOU = 0.8  # the least mean IoU of a self-test's masks with the export's
SELF_TEST_KEYPOINT_PX = 2.0  # keypoints may move this far, or 2 % of the sample's larger side
KEYPOINT_SEEN = 0.5  # keypoints less visible than this (on either side) are not compared


def compare_self_test(
    spec: SelfTest,
    got: Detections,
    conf_threshold: float,
    nms_iou: float | None = None,
    agnostic: bool = False,
    outputs: SelfTestOutputs | None = None,
    image_hw: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Match ``got`` against the expected detections of ``spec``; a report with ``passed``.

    Detections pair up by class, greedily by IoU. A pair must overlap by at least
    ``tolerance.iou`` with scores within ``tolerance.score``. A detection left without a
    partner only fails the test when it is clearly above the confidence threshold (within
    the score tolerance of it, another device may legitimately keep or drop it), and, given
    ``nms_iou`` (the package's NMS IoU threshold), when no box of its class on the other side
    overlaps it by nearly that much (``nms_iou - NMS_MARGIN``): two boxes that close are
    near-duplicates that NMS keeps or merges on a hair's difference in their scores or
    corners, as a GPU's or another runtime's arithmetic gives (counted as ``nms_swaps``).
    A model that answers something else (boxes elsewhere, other scores) still fails.

    ``outputs`` (the package's ``selftest/outputs.json``) adds what the task gives beyond
    boxes: a classifier's top classes (each probability within ``tolerance.score``), the
    masks of the expected detections (their mean IoU at least :data:`SELF_TEST_MASK_IOU`)
    and their keypoints (each seen point within :data:`SELF_TEST_KEYPOINT_PX` pixels, or 2 %
    of the larger side of the sample, ``image_hw``, for at least half of the detections),
    each against the nearest of the answers whose boxes match its own.
    """
    tol = spec.tolerance
    borderline = conf_threshold + tol.score
    expected = sorted(spec.expected, key=lambda d: -d.score)
    found = [
        (int(c), float(s), [float(v) for v in box])
        for box, s, c in zip(
            got.xyxy.tolist(), got.confidence.tolist(), got.class_id.tolist(), strict=True
        )
    ]

    def near_duplicate(cls: int, box: list[float], others: list[tuple[int, list[float]]]) -> bool:
        if nms_iou is None:
            return False
        return any(
            (agnostic or c == cls) and _iou(box, other) >= nms_iou - NMS_MARGIN
            for c, other in others
        )

    unmatched = set(range(len(found)))
    # every answer of the expected detection's class whose box is that close: its mask and
    # keypoints are compared with the nearest of them, as boxes alike (clipped to the image,
    # say) pair up one way here and another there
    compares_parts = outputs is not None and (
        outputs.masks is not None or outputs.keypoints is not None
    )
    alike = {
        index: [
            j
            for j, (c, _, box) in enumerate(found)
            if c == exp.class_id and _iou(exp.xyxy, box) >= tol.iou
        ]
        for index, exp in enumerate(spec.expected if compares_parts else [])
    }
    max_iou_dev = 0.0
    max_score_dev = 0.0
    failures = swaps = 0
    for exp in expected:
        best, best_iou = -1, 0.0
        for j in sorted(unmatched):
            if found[j][0] != exp.class_id:
                continue
            overlap = _iou(exp.xyxy, found[j][2])
            if overlap > best_iou:
                best, best_iou = j, overlap
        if best < 0 or best_iou < tol.iou:
            if exp.score < borderline:
                continue
            if near_duplicate(exp.class_id, exp.xyxy, [(c, box) for c, _, box in found]):
                swaps += 1
            else:
                failures += 1
                max_iou_dev = max(max_iou_dev, 1.0 - best_iou)
            continue
        unmatched.discard(best)
        score_dev = abs(found[best][1] - exp.score)
        max_iou_dev = max(max_iou_dev, 1.0 - best_iou)
        max_score_dev = max(max_score_dev, score_dev)
        if score_dev > tol.score:
            failures += 1
    for j in unmatched:
        cls, score, box = found[j]
        if score < borderline:
            continue
        if near_duplicate(cls, box, [(e.class_id, e.xyxy) for e in expected]):
            swaps += 1
        else:
            failures += 1
    report: dict[str, Any] = {
        "passed": False,
        "expected": len(spec.expected),
        "got": len(found),
        "mismatches": failures,
        "nms_swaps": swaps,
        "max_iou_deviation": round(max_iou_dev, 4),
        "max_score_deviation": round(max_score_dev, 4),
        "tolerance": tol.model_dump(mode="json"),
    }
    if outputs is not None:
        report.update(_compare_task_outputs(outputs, got, alike, tol.score, image_hw))
        report["max_score_deviation"] = max(
            report["max_score_deviation"], report.pop("class_score_deviation", 0.0)
        )
    report["passed"] = (
        failures == 0
        and not report.get("class_mismatches")
        and not report.get("mask_mismatch")
        and not report.get("keypoint_mismatch")
    )
    return report


def _compare_task_outputs(
    outputs: SelfTestOutputs,
    got: Detections,
    alike: dict[int, list[int]],
    score_tol: float,
    image_hw: tuple[int, int] | None,
) -> dict[str, Any]:
    """The part of the self-test report that :class:`SelfTestOutputs` adds (see
    :func:`compare_self_test`); ``alike`` maps each expected detection to the answers whose
    boxes match it."""
    out: dict[str, Any] = {}
    if outputs.classes is not None:  # a classifier: each class's probability
        probs = got.probs
        deviations = [
            1.0
            if probs is None or want.class_id >= len(probs)
            else abs(float(probs[want.class_id]) - want.score)
            for want in outputs.classes
        ]
        out["classes"] = len(outputs.classes)
        out["class_mismatches"] = sum(d > score_tol for d in deviations)
        out["class_score_deviation"] = round(max(deviations, default=0.0), 4)
    if outputs.masks is not None:
        ious = []
        for index, rle in enumerate(outputs.masks):
            if rle is None or not alike.get(index):
                continue  # not recorded, or its box came out otherwise (judged above)
            if got.masks is None or list(got.masks.shape[1:]) != rle.size:
                ious.append(0.0)
                continue
            mask = rle_to_mask(rle.model_dump())
            ious.append(max(_mask_iou(mask, got.masks[j]) for j in alike[index]))
        out["masks"] = len(ious)
        out["mean_mask_iou"] = round(float(np.mean(ious)), 4) if ious else None
        out["mask_mismatch"] = bool(ious) and float(np.mean(ious)) < SELF_TEST_MASK_IOU
    if outputs.keypoints is not None:
        allowed = max(SELF_TEST_KEYPOINT_PX, 0.02 * max(image_hw or (0, 0)))
        moved = []
        for index, points in enumerate(outputs.keypoints):
            if points is None or not alike.get(index):
                continue
            moved.append(
                min(
                    _keypoints_moved(points, got.keypoints[j].tolist())
                    if got.keypoints is not None
                    else float("inf")
                    for j in alike[index]
                )
            )
        out["keypoints"] = len(moved)
        out["keypoints_moved"] = sum(m > allowed for m in moved)
        # a runtime that decodes keypoints wrong moves them all; a few may be compared with
        # a near-duplicate that NMS kept instead of their own (see compare_self_test)
        out["keypoint_mismatch"] = 2 * out["keypoints_moved"] > len(moved)
        worst = max(moved, default=0.0)
        out["max_keypoint_deviation_px"] = round(worst, 3) if np.isfinite(worst) else None
    return out


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _keypoints_moved(want: list[list[float]], have: list[list[float]]) -> float:
    """How far (px, the larger of x and y) the keypoints seen on both sides moved; infinite
    when the two lists differ in length."""
    if len(want) != len(have):
        return float("inf")
    seen = [
        max(abs(w[0] - h[0]), abs(w[1] - h[1]))
        for w, h in zip(want, have, strict=True)
        if len(w) < 3 or len(h) < 3 or (w[2] >= KEYPOINT_SEEN and h[2] >= KEYPOINT_SEEN)
    ]
    return max(seen, default=0.0)


def _now_serving(entry: Any, fmt: str | None, gone: str | None, fallback: dict[str, str]) -> Any:
    """A ``formats`` report entry of an install once ``gone`` no longer runs here and ``fmt``
    serves instead: which is chosen, and why ``gone`` is not runnable now."""
    if not isinstance(entry, dict):
        return entry
    entry = {**entry}
    if "chosen" in entry or entry.get("format") == fmt:
        entry["chosen"] = entry.get("format") == fmt
    if entry.get("format") == gone:
        entry.update(runnable=False, reason=fallback.get("reason"))
    return entry


def _self_test_outputs(folder: Path, manifest: Manifest) -> SelfTestOutputs | None:
    """The package's ``selftest/outputs.json`` (listed in its files, so its digest was
    checked), or None when it has none (a detector, or an older export)."""
    if SELF_TEST_OUTPUTS not in manifest.files:
        return None
    try:
        raw = (folder / Path(*PurePosixPath(SELF_TEST_OUTPUTS).parts)).read_bytes()
    except OSError as exc:
        raise InstallError(f"cannot read {SELF_TEST_OUTPUTS}: {exc.strerror}") from None
    return read_self_test_outputs(raw)


def _self_test_failure(report: dict[str, Any]) -> str:
    """What a failed self-test's report says, in one clause."""
    parts = []
    if report["mismatches"] or not any(
        report.get(k) for k in ("class_mismatches", "mask_mismatch", "keypoint_mismatch")
    ):
        parts.append(
            f"expected {report['expected']} detections, got {report['got']} "
            f"({report['mismatches']} outside tolerance, max IoU deviation "
            f"{report['max_iou_deviation']:.3f}, max score deviation "
            f"{report['max_score_deviation']:.3f})"
        )
    if report.get("class_mismatches"):
        parts.append(
            f"{report['class_mismatches']} of the export's top {report['classes']} classes "
            f"scored differently (max score deviation {report['max_score_deviation']:.3f})"
        )
    if report.get("mask_mismatch"):
        parts.append(
            f"the masks differ from the export's (mean IoU {report['mean_mask_iou']:.3f} over "
            f"{report['masks']} detections, at least {SELF_TEST_MASK_IOU} needed)"
        )
    if report.get("keypoint_mismatch"):
        worst = report["max_keypoint_deviation_px"]
        parts.append(
            f"the keypoints of {report['keypoints_moved']} of {report['keypoints']} "
            "detections moved "
            + ("(another number of them)" if worst is None else f"(up to {worst:.1f} px)")
        )
    return "; ".join(parts)


def _pinned_backend(cls: type[Backend], providers: list[str]) -> type[Backend]:
    """A subclass of ``cls`` that always loads with ``providers``."""

    pinned = list(providers)

    def init(
        self: Backend,
        model_path: Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        cls.__init__(self, model_path, threads=threads, providers=list(pinned))

    return cast("type[Backend]", type(cls.__name__, (cls,), {"__init__": init}))


def _compute_providers(providers: tuple[str, ...] | list[str]) -> list[str]:
    """The providers that run a model here, best first (remote ones such as Azure left out)."""
    rank = {p: i for i, p in enumerate(PROVIDER_PREFERENCE)}
    kept = [p for p in providers if p not in NOT_COMPUTE_PROVIDERS]
    return sorted(kept, key=lambda p: (p in CPU_PROVIDERS, rank.get(p, -1)))


def _provider_named(
    provider: str, runnable: list[tuple[str, type[Backend], list[str]]], registry: BackendRegistry
) -> str:
    """``provider`` as the runtimes here spell it (``cuda`` and ``CUDA`` are torch's ``cuda``),
    or InstallError when no runtime knows the name at all (a typo would otherwise install on
    the CPU with only a warning). A known name that is not available here is returned as
    given: the install goes on and reports the fallback."""
    usable = [p for _, _, ps in runnable for p in ps]
    known = [
        p
        for key in registry.keys()
        for p in registry.get(key).known_providers()
        if p not in NOT_COMPUTE_PROVIDERS
    ]
    for names in (usable, known):  # the exact spelling first, then in any case
        match = match_provider(provider, names)
        if match is not None:
            return match
    raise InstallError(
        f"no runtime knows an execution provider called {provider!r}; the ones here: "
        f"{', '.join(dict.fromkeys(usable)) or 'none'} (or leave the provider out for the "
        "fastest)"
    )


def _start_fallback(name: str, wanted: str, predictor: Predictor) -> dict[str, str] | None:
    """The fallback to report when the provider chosen at install no longer loads on this
    start (a driver gone, a GPU taken): the runtime runs the model elsewhere; None when it
    runs where it was installed to."""
    active = predictor.backend.active_providers
    if active and active[0] == wanted:
        return None
    error = predictor.backend.provider_errors.get(wanted)
    using = ", ".join(active) or "nothing"
    reason = (
        f"{wanted} failed to initialise on this start: {error}"
        if error
        else f"{wanted} did not initialise on this start (the runtime runs on {using})"
    )
    log.warning("%s: %s", name, reason)
    return {"wanted": wanted, "using": using, "reason": reason}


def _cpu_of(providers: list[str]) -> str | None:
    return next((p for p in providers if p in CPU_PROVIDERS), None)


# -- ONNX external data ----------------------------------------------------------------------
# An ONNX tensor may keep its bytes in another file ("external data", a relative location).
# The agent reads the model without the onnx package, so the few protobuf fields that can
# hold tensors are walked here: a location must name a file of the package itself.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise PackageError("the ONNX model is truncated or not a protobuf; re-export it")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of one protobuf message, without nesting."""
    out: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, wire, value))
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise PackageError("the ONNX model is truncated or not a protobuf; re-export it")
            out.append((number, wire, buf[pos : pos + length]))
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise PackageError("the ONNX model is not a valid protobuf; re-export it")
    return out


def _messages(fields: list[tuple[int, int, bytes | int]], number: int) -> list[bytes]:
    return [v for n, w, v in fields if n == number and w == 2 and isinstance(v, bytes)]


# Field numbers of onnx.proto: Model.graph=7, Model.functions=25; Graph.node=1,
# Graph.initializer=5, Graph.sparse_initializer=15; Node.attribute=5; Function.node=7;
# Attribute.t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23;
# SparseTensor.values=1, indices=2; Tensor.external_data=13 (key=1, value=2).


def _tensor_locations(tensor: bytes) -> list[str]:
    locations = []
    for entry in _messages(_fields(tensor), 13):
        kv = _fields(entry)
        key = b"".join(_messages(kv, 1))
        if key == b"location":
            locations.append(b"".join(_messages(kv, 2)).decode("utf-8", "replace"))
    return locations


def _graph_locations(graph: bytes, depth: int = 0) -> list[str]:
    if depth > 32:
        raise PackageError("the ONNX model nests graphs too deeply; refusing it")
    fields = _fields(graph)
    found: list[str] = []
    for tensor in _messages(fields, 5):
        found += _tensor_locations(tensor)
    for sparse in _messages(fields, 15):
        sf = _fields(sparse)
        for tensor in _messages(sf, 1) + _messages(sf, 2):
            found += _tensor_locations(tensor)
    for node in _messages(fields, 1):
        found += _node_locations(node, depth)
    return found


def _node_locations(node: bytes, depth: int) -> list[str]:
    found: list[str] = []
    for attr in _messages(_fields(node), 5):
        af = _fields(attr)
        for tensor in _messages(af, 5) + _messages(af, 10):
            found += _tensor_locations(tensor)
        for sparse in _messages(af, 22) + _messages(af, 23):
            sf = _fields(sparse)
            for tensor in _messages(sf, 1) + _messages(sf, 2):
                found += _tensor_locations(tensor)
        for graph in _messages(af, 6) + _messages(af, 11):
            found += _graph_locations(graph, depth + 1)
    return found


def onnx_external_data(model_bytes: bytes) -> list[str]:
    """Every external-data location an ONNX model names (initializers, attributes, subgraphs)."""
    fields = _fields(model_bytes)
    found: list[str] = []
    for graph in _messages(fields, 7):
        found += _graph_locations(graph)
    for function in _messages(fields, 25):
        for node in _messages(_fields(function), 7):
            found += _node_locations(node, 0)
    return found


def check_onnx_external_data(folder: Path, manifest: Manifest) -> None:
    """Refuse an ONNX model whose external data lies outside its package (or is not listed)."""
    for spec in manifest.all_formats():
        if spec.key == "onnx":
            _check_onnx_file(folder, manifest, spec.file)


def _check_onnx_file(folder: Path, manifest: Manifest, file: str) -> None:
    model_file = PurePosixPath(file)
    data = (folder / Path(*model_file.parts)).read_bytes()
    try:
        locations = onnx_external_data(data)
    except PackageError as exc:
        raise InstallError(
            f"model {manifest.name} in {folder.name} does not load or run: {exc}"
        ) from None
    for location in locations:
        path = PurePosixPath(location.replace("\\", "/"))
        joined = (model_file.parent / path).as_posix()
        if (
            not location
            or path.is_absolute()
            or location.startswith(("/", "\\"))
            or ":" in location
            or ".." in path.parts
            or joined not in manifest.files
        ):
            raise PackageError(
                f"the ONNX model reads external data from {location!r}, outside its package; "
                "refusing it (re-export with the weights inside the model file)"
            )


class ModelStore:
    """Installs packages under ``<data_dir>/models`` and keeps the active ones loaded.

    Call :meth:`load` once at start to bring back what was active before a restart.
    Methods are blocking (disk, model loading); the service runs them in an executor.
    """

    def __init__(
        self, data_dir: Path, *, registry: BackendRegistry | None = None, warmup_runs: int = 2
    ) -> None:
        self.root = Path(data_dir) / MODELS_DIR
        # What is being loaded, so a runtime that kills the process is not loaded again.
        self.guard = CrashGuard(Path(data_dir))
        self._registry = registry
        self._warmup_runs = warmup_runs
        self._models: dict[str, InstalledModel] = {}
        self._models_lock = threading.Lock()
        # Models whose active version did not load at start: name → reason (for GET /v1/ready).
        # A later install or rollback of that model clears its entry.
        self.not_loaded: dict[str, str] = {}
        self._install_lock = threading.Lock()

    def _write_failed(self, action: str, exc: OSError) -> InstallError:
        try:
            free: int | None = shutil.disk_usage(self.root).free
        except OSError:
            free = None
        return store_write_failed(action, exc, self.root, free)

    # -- reading ---------------------------------------------------------------------

    def models(self) -> list[InstalledModel]:
        with self._models_lock:
            return [self._models[k] for k in sorted(self._models)]

    def get(self, name: str) -> InstalledModel:
        with self._models_lock:
            model = self._models.get(name)
            names = sorted(self._models)
        if model is None:
            if not names:
                raise NoModelError(
                    "no model is installed; upload a package first (PUT /v1/packages)"
                )
            raise ModelNotFoundError(
                f"model {name!r} is not installed; installed: {', '.join(names)}"
            )
        return model

    def resolve(self, name: str | None) -> InstalledModel:
        """The named model, or the only one installed when ``name`` is None."""
        if name:
            return self.get(name)
        with self._models_lock:
            names = sorted(self._models)
            if len(names) == 1:
                return self._models[names[0]]
        if not names:
            raise NoModelError("no model is installed; upload a package first (PUT /v1/packages)")
        raise AmbiguousModelError(
            f"several models are installed ({', '.join(names)}); name one with ?model=NAME"
        )

    def installed(self) -> list[dict[str, Any]]:
        """Every model on disk (served or not) with its versions: active, previous, staged;
        a served one also with its runtime choice (format, runtime, providers, benchmark,
        fallback, and every format of the package with its timings or why it cannot run)."""
        rows: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return rows
        for model_dir in sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            try:
                record = self._read_active(model_dir)
            except InstallError:
                record = None
            if record is None:
                continue
            row: dict[str, Any] = {
                "name": model_dir.name,
                "enabled": record["enabled"],
                "serving": model_dir.name in self._models,
                "active": (record.get("active") or {}).get("version"),
                "previous": (record.get("previous") or {}).get("version"),
                "staged": (record.get("staged") or {}).get("version"),
            }
            served = self._models.get(model_dir.name)
            if served is not None:  # how the device runs it: the runtime choice and its numbers
                for key in ("format", "runtime", "providers", "benchmark", "fallback", "formats"):
                    row[key] = served.describe()[key]
            rows.append(row)
        return rows

    # -- start -----------------------------------------------------------------------

    def load(self) -> list[str]:
        """Load every model's active version (or its previous one if that fails).

        Returns one line per problem met; a model that cannot be loaded is skipped, so
        one broken model never stops the agent from serving the others. Deactivated
        models stay unloaded.
        """
        died = self.guard.settle()  # before any load: what the last process died loading
        problems = [died] if died is not None else []
        if self.root.is_dir():
            self._load_models(problems)
        for line in problems:
            log.warning("%s", line)
        return problems

    def _load_models(self, problems: list[str]) -> None:
        """:meth:`load`'s work on an existing store; each problem met goes to ``problems``."""
        for leftover in self.root.iterdir():  # an uninstall cut short
            if leftover.name.startswith(".trash-") and leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        for model_dir in sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            self._remove_leftovers(model_dir)
            try:
                record = self._read_active(model_dir)
            except InstallError as exc:
                problems.append(str(exc))
                self.not_loaded[model_dir.name] = str(exc)
                continue
            if record is None or not record["enabled"]:
                continue
            candidates = [record["active"]] + (
                [record["previous"]] if record.get("previous") else []
            )
            for i, entry in enumerate(candidates):
                try:
                    model = self._open(model_dir.name, model_dir / entry["folder"])
                except OutpostError as exc:
                    problems.append(f"{model_dir.name} {entry.get('version')}: {exc}")
                    continue
                if i == 0 and record.get("previous"):
                    model = replace(model, previous_version=record["previous"].get("version"))
                with self._models_lock:
                    self._models[model.name] = model
                if i > 0:
                    problems.append(
                        f"{model_dir.name}: serving previous version {model.version} instead"
                    )
                    self.not_loaded[model_dir.name] = problems[-2]
                break
            else:
                self.not_loaded[model_dir.name] = problems[-1]

    # -- changes ---------------------------------------------------------------------

    def install(
        self,
        package: bytes | Path,
        *,
        activate: bool = True,
        provider: str | None = None,
        package_sha: str | None = None,
        manifest_sha: str | None = None,
    ) -> InstalledModel:
        """Verify, extract, load, warm up and self-test a package, then make it the active version.

        Args:
            package: the ``.outpost.zip`` (bytes or a path).
            activate: False keeps it staged: loaded and checked, but the current version
                keeps serving until :meth:`activate`.
            provider: an execution provider to use (e.g. ``CUDAExecutionProvider``); when it
                is missing or fails, the result's ``fallback`` says what runs instead.
            package_sha: the whole package's sha256 when the caller has just verified it
                (a committed upload), so it is not read once more; computed when None.
            manifest_sha: the sha256 its ``manifest.json`` must have (a sealed upload: the
                desktop signed it, and ``package_sha`` is the desktop's word); every file
                is then held to the manifest as it is extracted.

        Raises:
            PackageError: the package cannot be read or verified (the reason is in the message).
            InstallError: the package is sound but its model does not load, fails its
                self-test, or the disk refused it.
        """
        with self._install_lock:
            with PackageReader(package) as reader:
                if package_sha is None:
                    package_sha = (
                        sha256_bytes(package)
                        if isinstance(package, bytes)
                        else sha256_file(Path(package))
                    )
                if manifest_sha is not None and reader.manifest_sha256 != manifest_sha:
                    raise PackageError(
                        "the package's manifest is not the one the desktop sealed: it was "
                        "altered on the way; deploy it again"
                    )
                manifest = reader.manifest
                model_dir = self.root / manifest.name
                new_dir = not model_dir.exists()
                staging = model_dir / f".staging-{secrets.token_hex(6)}"
                try:
                    # extract checks every file's sha256 as it writes it (one pass over the
                    # bytes) and keeps nothing when one does not match
                    reader.extract(staging)
                    check_onnx_external_data(staging, manifest)
                    what = f"{manifest.name} {manifest.version}"
                    # a provider asked for is another try: the crash may be that provider's
                    # (named in any case: CUDAExecutionProvider and cudaexecutionprovider are one)
                    key = (
                        package_sha
                        if provider is None
                        else f"{package_sha}/{provider.strip().lower()}"
                    )
                    self._refuse_crashed(
                        key,
                        what,
                        ": check the export on the desktop (outpost predict), export it "
                        "again, or deploy it with another --provider",
                    )
                    with self.guard.loading(key, f"{what} (install)"):
                        model = self._prepare(manifest.name, staging, provider)
                    # its inferences, and its loads at later starts, are known by that key
                    model = replace(model, crash_key=key, guard=self.guard)
                    self._write_install_record(staging, package_sha, model)
                    if activate:
                        done = self._activate(model_dir, staging, model, package_sha)
                        self.not_loaded.pop(manifest.name, None)
                    else:
                        done = self._stage(model_dir, staging, model, package_sha)
                    return done
                except OutpostError:
                    raise
                except OSError as exc:
                    raise self._write_failed(
                        f"install {manifest.name} {manifest.version}", exc
                    ) from None
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                    if new_dir:  # a refused first install leaves no empty model folder
                        with contextlib.suppress(OSError):
                            model_dir.rmdir()

    def rollback(self, name: str) -> InstalledModel:
        """Make the previous version of ``name`` active again (the current one becomes previous)."""
        with self._install_lock:
            with self._models_lock:
                serving = name in self._models
            if not serving and _SAFE_FOLDER.match(name) and (self.root / name).is_dir():
                raise RollbackError(
                    f"model {name} is deactivated; activate it (or a version of it) instead"
                )
            current = self.get(name)
            model_dir = self.root / name
            record = self._read_active(model_dir)
            previous = record.get("previous") if record else None
            if record is None or not previous or not (model_dir / previous["folder"]).is_dir():
                raise RollbackError(f"model {name} has no previous version to roll back to")
            model = self._open(name, model_dir / previous["folder"])
            try:
                self._write_active(
                    model_dir, previous, record["active"], staged=record.get("staged")
                )
            except OSError as exc:
                raise self._write_failed(f"roll {name} back", exc) from None
            model = replace(model, previous_version=current.version)
            with self._models_lock:
                self._models[name] = model
            self.not_loaded.pop(name, None)
            log.info("rolled %s back from %s to %s", name, current.version, model.version)
            return model

    def activate(self, name: str, version: str | None = None) -> InstalledModel:
        """Serve ``name`` again, or switch it to ``version`` (its staged, active or previous one).

        Without ``version`` the staged version (installed with ``activate=False``) becomes
        active when there is one; else the active version of a deactivated model serves again.
        The version is loaded before anything changes: on failure the current one keeps serving.
        """
        with self._install_lock:
            model_dir = self.root / name
            record = self._record_of(name)
            entries = {
                key: record[key] for key in ("active", "staged", "previous") if record.get(key)
            }
            if version is None:
                key = "staged" if "staged" in entries else "active"
            else:
                key = next(
                    (
                        k
                        for k, e in entries.items()
                        if version in (e.get("version"), e.get("folder"))
                    ),
                    "",
                )
                if not key:
                    have = ", ".join(f"{e['version']} ({k})" for k, e in entries.items())
                    raise ModelNotFoundError(
                        f"model {name} has no version {version!r} on this device; it has: {have}"
                    )
            target = entries[key]
            model = self._open(name, model_dir / target["folder"])
            active, previous, staged = (
                record["active"],
                record.get("previous"),
                record.get("staged"),
            )
            if key == "staged":
                active, previous, staged = target, record["active"], None
            elif key == "previous":
                active, previous = target, record["active"]
            try:
                self._write_active(model_dir, active, previous, staged=staged, enabled=True)
            except OSError as exc:
                raise self._write_failed(f"activate {name}", exc) from None
            model = replace(
                model,
                previous_version=previous["version"] if previous else None,
                report={"activated": True, "warnings": []},
            )
            with self._models_lock:
                self._models[name] = model
            self.not_loaded.pop(name, None)
            log.info("activated %s %s", name, model.version)
            return model

    def deactivate(self, name: str) -> dict[str, Any]:
        """Stop serving ``name``; its files stay (``activate`` brings it back)."""
        with self._install_lock:
            model_dir = self.root / name
            record = self._record_of(name)
            try:
                self._write_active(
                    model_dir,
                    record["active"],
                    record.get("previous"),
                    staged=record.get("staged"),
                    enabled=False,
                )
            except OSError as exc:
                raise self._write_failed(f"deactivate {name}", exc) from None
            with self._models_lock:
                self._models.pop(name, None)
            self.not_loaded.pop(name, None)
            log.info("deactivated %s", name)
            return {
                "name": name,
                "version": record["active"]["version"],
                "serving": False,
                "enabled": False,
            }

    def uninstall(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Remove every version of ``name`` from the device.

        Refused (:class:`UninstallError`) when ``name`` is the only model serving, since
        the agent would be left answering nothing; ``force`` removes it anyway.
        """
        with self._install_lock:
            model_dir = self.root / name
            if not _SAFE_FOLDER.match(name) or not model_dir.is_dir():
                raise ModelNotFoundError(f"model {name!r} is not installed on this device")
            with self._models_lock:
                serving = name in self._models
                others = [n for n in self._models if n != name]
            if serving and not others and not force:
                raise UninstallError(
                    f"model {name} is the only model serving; uninstalling it leaves the agent "
                    "with nothing to serve: deactivate it, or uninstall it with force "
                    "(outpost devices uninstall DEVICE MODEL --force; DELETE ?force=1)"
                )
            trash = self.root / f".trash-{name}-{secrets.token_hex(4)}"
            try:
                model_dir.rename(trash)
            except OSError as exc:
                raise self._write_failed(f"uninstall {name}", exc) from None
            with self._models_lock:
                self._models.pop(name, None)
            self.not_loaded.pop(name, None)
            shutil.rmtree(trash, ignore_errors=True)
            log.info("uninstalled %s", name)
            return {"name": name, "uninstalled": True, "was_serving": serving}

    # -- helpers ---------------------------------------------------------------------

    def _record_of(self, name: str) -> dict[str, Any]:
        model_dir = self.root / name
        record = self._read_active(model_dir) if _SAFE_FOLDER.match(name) else None
        if record is None:
            raise ModelNotFoundError(f"model {name!r} is not installed on this device")
        return record

    def _registry_or_default(self) -> BackendRegistry:
        if self._registry is None:
            self._registry = default_registry()
        return self._registry

    def _load_predictor(
        self, folder: Path, providers: list[str] | None, format_key: str | None = None
    ) -> Predictor:
        registry = self._registry_or_default()
        key = format_key or read_format_key(folder)
        if providers is None:
            return Predictor(folder, registry=registry, format_key=format_key)
        backend = registry.for_format(key)
        pinned = BackendRegistry()
        pinned.register(_pinned_backend(backend, providers))
        return Predictor(folder, runtime=backend.key, registry=pinned, format_key=key)

    def _choose(
        self, folder: Path, manifest: Manifest, provider: str | None, sample: np.ndarray
    ) -> tuple[Predictor, RuntimeChoice]:
        """Load the model on the best (format, provider) here, benchmarked when there is a
        choice; formats no runtime here runs are reported with the reason."""
        registry = self._registry_or_default()
        reports: dict[str, dict[str, Any]] = {}
        runnable: list[tuple[str, type[Backend], list[str]]] = []
        for spec in manifest.all_formats():
            try:
                backend = registry.for_format(spec.key)
            except RuntimeUnavailableError as exc:
                reports[spec.key] = {"format": spec.key, "runtime": None, "runnable": False}
                reports[spec.key]["reason"] = str(exc)
                continue
            providers = _compute_providers(backend.probe().providers)
            reports[spec.key] = {"format": spec.key, "runtime": backend.key, "runnable": True}
            runnable.append((spec.key, backend, providers))
        if not runnable:
            here = registry.runnable_formats()
            advice = (
                f"export it as {' or '.join(here)} (what this device runs), or install the "
                "runtime the package needs"
                if here
                else "install a runtime for it (pip install 'outpost[agent]' brings ONNX Runtime)"
            )
            raise InstallError(
                f"no runtime here can run any format of {manifest.name}: "
                + "; ".join(r["reason"] for r in reports.values())
                + f"; {advice}"
            )
        multi = len(runnable) > 1

        def label(fmt: str, p: str) -> str:
            return f"{fmt}/{p}" if multi else p

        def formats(chosen: str | None, bench: dict[str, float] | None) -> list[dict[str, Any]]:
            out = []
            for fmt, report in reports.items():
                entry = dict(report)
                if report["runnable"]:
                    entry["chosen"] = fmt == chosen
                    if bench is not None:
                        prefix = f"{fmt}/" if multi else ""
                        entry["benchmark"] = {
                            k[len(prefix) :]: v for k, v in bench.items() if k.startswith(prefix)
                        }
                out.append(entry)
            return out

        if not multi and provider is None and len(runnable[0][2]) <= 1:
            fmt = runnable[0][0]
            predictor = self._load_predictor(folder, None, fmt)
            return predictor, RuntimeChoice(None, formats=formats(fmt, None))
        everywhere = sorted({p for _, _, ps in runnable for p in ps})
        failures: dict[str, str] = {}
        if provider is not None:
            provider = _provider_named(provider, runnable, registry)
        if provider is not None and provider not in everywhere:
            runtimes = ", ".join(backend.key for _, backend, _ in runnable)
            failures[provider] = (
                f"{provider} is not available on this device to the runtime of this package "
                f"({runtimes}, with {', '.join(everywhere) or 'no provider'})"
            )
        loaded: dict[str, tuple[str, Predictor]] = {}
        first_wanted: str | None = provider
        for fmt, backend, available in runnable:
            cpu = _cpu_of(available)
            if provider is not None:
                wanted = [provider] if provider in available else []
            else:
                wanted = [p for p in available if p != cpu]
            if first_wanted is None and wanted:
                first_wanted = wanted[0]
            for p in wanted:
                try:  # with what takes over the nodes it does not (TensorRT: CUDA, the CPU)
                    extra = [q for q in backend.fallback_providers(p) if q in available]
                    predictor = self._load_predictor(folder, [p, *extra], fmt)
                except Exception as exc:  # each runtime raises its own types
                    failures.setdefault(p, f"{p} failed to initialise: {one_line(exc, 200)}")
                    reports[fmt].setdefault("failed", {})[p] = one_line(exc, 200)
                    continue
                active = predictor.backend.active_providers
                if not active or active[0] != p:
                    error = predictor.backend.provider_errors.get(p)
                    why = error or f"the runtime runs on {', '.join(active) or 'nothing'}"
                    failures.setdefault(
                        p,
                        f"{p} failed to initialise: {error}"
                        if error
                        else f"{p} did not initialise ({why})",
                    )
                    reports[fmt].setdefault("failed", {})[p] = why
                    continue
                loaded[label(fmt, p)] = (fmt, predictor)
            if provider is None and cpu and label(fmt, cpu) not in loaded:
                loaded[label(fmt, cpu)] = (fmt, self._load_predictor(folder, [cpu], fmt))
            elif provider is None and not available:  # a runtime that names no providers
                predictor = self._load_predictor(folder, None, fmt)
                name = (predictor.backend.active_providers or ["default"])[0]
                loaded[label(fmt, name)] = (fmt, predictor)
        if not loaded and provider is not None:  # the wanted provider runs nothing: the CPU
            for fmt, _backend, available in runnable:
                cpu = _cpu_of(available)
                if cpu:
                    loaded[label(fmt, cpu)] = (fmt, self._load_predictor(folder, [cpu], fmt))
        if not loaded:
            raise InstallError(
                f"no execution provider here can load {manifest.name}: "
                + "; ".join(failures.values())
            )
        benchmark: dict[str, float] | None = None
        if len(loaded) > 1:
            benchmark = {
                k: _time_ms(pred, sample, self._warmup_runs) for k, (_, pred) in loaded.items()
            }
            chosen = min(benchmark, key=lambda k: benchmark[k] if benchmark else 0.0)
        else:
            chosen = next(iter(loaded))
        chosen_format, predictor = loaded[chosen]
        chosen_provider = chosen.split("/", 1)[1] if multi else chosen
        fallback = None
        if first_wanted and first_wanted in failures and chosen_provider != first_wanted:
            fallback = {
                "wanted": first_wanted,
                "using": chosen_provider,
                "reason": failures[first_wanted],
            }
            log.warning("%s: %s; using %s instead", manifest.name, failures[first_wanted], chosen)
        if multi:
            log.info("%s: serving %s (benchmark, ms: %s)", manifest.name, chosen, benchmark)
        providers = list(predictor.backend.active_providers)
        return predictor, RuntimeChoice(
            providers, benchmark, fallback, formats(chosen_format, benchmark)
        )

    def _prepare(self, name: str, folder: Path, provider: str | None) -> InstalledModel:
        """Load a staged package on the best provider, warm it up and run its self-test."""
        manifest = _manifest_of(folder)
        if manifest.name != name:
            raise PackageError(f"{folder} holds model {manifest.name}, expected {name}")
        spec = manifest.self_test
        warnings: list[str] = []
        try:
            h, w = manifest.model.input.height, manifest.model.input.width
            sample = (
                read_image(folder / Path(*PurePosixPath(spec.input).parts))
                if spec is not None
                else np.full((h, w, 3), 114, np.uint8)
            )
            predictor, choice = self._choose(folder, manifest, provider, sample)
            predictor.warmup(self._warmup_runs)
            predictor.predict(np.full((h, w, 3), 114, np.uint8))
        except OutpostError:
            raise
        except Exception as exc:  # runtimes raise their own exception types (ORT, OpenVINO...)
            raise InstallError(
                f"model {name} in {folder.name} does not load or run: {one_line(exc)}; re-export the package"
            ) from None
        self_test: dict[str, Any] | None = None
        where = f"{predictor.backend.key} on {', '.join(predictor.backend.active_providers)}"
        if spec is None:
            warnings.append(
                f"package {name} {manifest.version} has no self-test (exported by an older "
                "Outpost); its answers were not checked before the switch"
            )
        else:
            try:
                got, _ = predictor.predict(sample)
            except Exception as exc:
                raise InstallError(
                    f"self-test failed: the runtime ({where}) raised: {one_line(exc)}; "
                    "the previous version keeps serving"
                ) from None
            post = manifest.model.postprocessing
            self_test = compare_self_test(
                spec,
                got,
                post.conf_threshold,
                post.iou_threshold,
                post.agnostic_nms,
                _self_test_outputs(folder, manifest),
                (sample.shape[0], sample.shape[1]),
            )
            if not self_test["passed"]:
                what = _self_test_failure(self_test)
                raise InstallError(
                    f"self-test failed: {what} with {where}; the previous version keeps "
                    "serving; re-export the model, or deploy it asking for another execution provider "
                    "(outpost deploy ... --provider NAME)"
                )
        if choice.fallback:
            fb = choice.fallback
            warnings.append(f"wanted {fb['wanted']}, using {fb['using']}: {fb['reason']}")
        return InstalledModel(
            manifest.name,
            manifest.version,
            folder,
            manifest,
            predictor,
            _now(),
            benchmark=choice.benchmark,
            fallback=choice.fallback,
            report={"self_test": self_test, "warnings": warnings, "activated": True},
            formats=choice.formats,
        )

    def _open(self, name: str, folder: Path) -> InstalledModel:
        """Load and smoke-test an installed version on the providers chosen at its install
        (InstallError, without loading it, when it crashed the agent the last time)."""
        record = _read_json(folder / INSTALL_RECORD, strict=False)
        sha, key = record.get("package_sha256"), record.get("crash_key")
        if not isinstance(key, str) or not key:  # installed before crash keys were recorded
            key = sha if isinstance(sha, str) and sha else f"{name}/{folder.name}"
        self._refuse_crashed(key, f"{name} {folder.name}", " (outpost-agent crashes)")
        with self.guard.loading(key, f"{name} {folder.name}"):
            model = self._open_recorded(name, folder, record)
        return replace(model, crash_key=key, guard=self.guard)

    def _refuse_crashed(self, key: str, what: str, advice: str) -> None:
        """InstallError when ``key`` crashed the agent with these runtimes."""
        crash = self.guard.crashed(key)
        if crash is not None:
            raise InstallError(
                f"{what} crashed the agent {crash}; it is not loaded again with these "
                f"runtimes{advice}"
            )

    def _open_recorded(self, name: str, folder: Path, record: dict[str, Any]) -> InstalledModel:
        recorded = record.get("providers")
        fallback = record.get("fallback") if isinstance(record.get("fallback"), dict) else None
        providers: list[str] | None = None
        fmt = record.get("format") if isinstance(record.get("format"), str) else None
        chosen_fmt = fmt
        try:
            if fmt is not None:
                fmt, fallback = self._recorded_format(name, folder, fmt, fallback)
            # another format now (its runtime went): the recorded providers were the other
            # runtime's, and the fallback says why already
            switched = chosen_fmt is not None and fmt != chosen_fmt
            if (
                not switched
                and isinstance(recorded, list)
                and recorded
                and all(isinstance(p, str) for p in recorded)
            ):
                backend = self._registry_or_default().for_format(fmt or read_format_key(folder))
                available = backend.probe().providers
                missing = [p for p in recorded if p not in available]
                if missing:
                    fallback = {
                        "wanted": missing[0],
                        "using": "the runtime's default",
                        "reason": f"{missing[0]} is no longer available on this device",
                    }
                    log.warning("%s: %s", name, fallback["reason"])
                else:
                    providers = list(recorded)
            predictor = self._load_predictor(folder, providers, fmt)
            if providers:
                fallback = _start_fallback(name, providers[0], predictor) or fallback
            predictor.warmup(self._warmup_runs)
            h, w = predictor.input_hw
            predictor.predict(np.full((h, w, 3), 114, np.uint8))
        except OutpostError:
            raise
        except Exception as exc:  # runtimes raise their own exception types (ORT, OpenVINO...)
            raise InstallError(
                f"model {name} in {folder.name} does not load or run: {one_line(exc)}; re-export the package"
            ) from None
        manifest = predictor.manifest
        if manifest.name != name:
            raise PackageError(f"{folder} holds model {manifest.name}, expected {name}")
        if fallback and fallback.get("using") == "the runtime's default":
            fallback["using"] = ", ".join(predictor.backend.active_providers)
        benchmark = record.get("benchmark") if isinstance(record.get("benchmark"), dict) else None
        formats = record.get("formats") if isinstance(record.get("formats"), list) else None
        if switched and formats is not None and fallback is not None:
            formats = [_now_serving(entry, fmt, chosen_fmt, fallback) for entry in formats]
        return InstalledModel(
            manifest.name,
            manifest.version,
            folder,
            manifest,
            predictor,
            record.get("installed_at") or _now(),
            benchmark=benchmark,
            fallback=fallback,
            formats=formats,
        )

    def _recorded_format(
        self, name: str, folder: Path, fmt: str, fallback: dict[str, str] | None
    ) -> tuple[str | None, dict[str, str] | None]:
        """The format chosen at install, or (loudly) the first one that still runs here."""
        registry = self._registry_or_default()
        manifest = _manifest_of(folder)
        keys = [spec.key for spec in manifest.all_formats()]
        if fmt not in keys:
            return None, fallback
        try:
            registry.for_format(fmt)
            return fmt, fallback
        except RuntimeUnavailableError as exc:
            reason = one_line(exc, 200)
        for other in keys:
            with contextlib.suppress(RuntimeUnavailableError):
                registry.for_format(other)
                log.warning("%s: %s; serving the %s format instead", name, reason, other)
                return other, {"wanted": fmt, "using": other, "reason": reason}
        raise InstallError(f"no runtime here can run any format of {name} any more: {reason}")

    def _activate(
        self, model_dir: Path, staging: Path, model: InstalledModel, package_sha: str
    ) -> InstalledModel:
        try:
            record = self._read_active(model_dir)
        except InstallError:  # a corrupt record must not block the install that repairs it
            record = None
        folder_name = _pick_folder(model_dir, model.version, package_sha)
        old = record["active"] if record else None
        previous = old if old and old["folder"] != folder_name else (record or {}).get("previous")
        staged = (record or {}).get("staged")
        if staged and staged["folder"] == folder_name:
            staged = None
        final, replaced = self._place(model_dir, staging, folder_name)
        try:
            self._write_active(
                model_dir,
                {"folder": folder_name, "version": model.version},
                previous,
                staged=staged,
            )
        except OSError:
            self._undo_place(final, staging, replaced)  # the caller removes the staging folder
            raise
        self._settle(replaced)
        model.predictor.folder = final
        model = replace(
            model, folder=final, previous_version=previous["version"] if previous else None
        )
        with self._models_lock:
            self._models[model.name] = model
        self._prune(
            model_dir,
            {
                folder_name,
                previous["folder"] if previous else "",
                staged["folder"] if staged else "",
            },
        )
        log.info(
            "installed %s %s (%s on %s)", model.name, model.version, model.format, model.runtime
        )
        return model

    def _stage(
        self, model_dir: Path, staging: Path, model: InstalledModel, package_sha: str
    ) -> InstalledModel:
        """Keep a checked version on disk without serving it (install with ``activate=False``)."""
        try:
            record = self._read_active(model_dir)
        except InstallError:
            record = None
        folder_name = _pick_folder(model_dir, model.version, package_sha)
        report = {**model.report, "activated": False}
        if record is not None and record["active"]["folder"] == folder_name:
            report["warnings"] = [
                *report.get("warnings", []),
                f"{model.name} {model.version} is already the active version; nothing to stage",
            ]
            with self._models_lock:
                serving = self._models.get(model.name)
            # the load just made is dropped: what serves (its runtime, any fallback) is the
            # active version's, not this load's
            return replace(serving or model, report=report)
        final, replaced = self._place(model_dir, staging, folder_name)
        entry = {"folder": folder_name, "version": model.version}
        try:
            if record is None:  # a first install: the version waits, deactivated
                self._write_active(model_dir, entry, None, enabled=False)
            else:
                previous = record.get("previous")
                if previous and previous["folder"] == folder_name:
                    previous = None
                self._write_active(
                    model_dir,
                    record["active"],
                    previous,
                    staged=entry,
                    enabled=record["enabled"],
                )
        except OSError:
            self._undo_place(final, staging, replaced)
            raise
        self._settle(replaced)
        keep = {folder_name}
        if record is not None:
            keep |= {record["active"]["folder"], (record.get("previous") or {}).get("folder", "")}
        self._prune(model_dir, keep)
        log.info("staged %s %s (not serving)", model.name, model.version)
        model.predictor.folder = final
        return replace(model, folder=final, report=report)

    @staticmethod
    def _place(model_dir: Path, staging: Path, folder_name: str) -> tuple[Path, Path | None]:
        """Rename the staging folder to ``folder_name``: the new version's folder, and where the
        same package's copy it replaces was put aside (None when there was none).

        The copy put aside is ``.replaced-<folder_name>``: kept until the caller's record of the
        switch is written (:meth:`_settle`), put back when that fails (:meth:`_undo_place`), and
        put back by the next start when a kill left ``folder_name`` missing
        (:meth:`_remove_leftovers`). Until then the folder the record names is never gone.
        """
        final = model_dir / folder_name
        replaced = model_dir / f"{REPLACED_PREFIX}{folder_name}"
        moved = False
        try:
            if final.exists():  # the very same package again: replace the copy on disk
                if replaced.exists():  # an older copy that a kill left aside: final is whole
                    shutil.rmtree(replaced)
                final.rename(replaced)
                moved = True
            staging.rename(final)
        except BaseException:  # a disk error, or SIGTERM between the two renames
            with contextlib.suppress(OSError):  # put things back as they were
                if moved and not final.exists():
                    replaced.rename(final)
            raise
        return final, replaced if moved else None

    @staticmethod
    def _undo_place(final: Path, staging: Path, replaced: Path | None) -> None:
        """Put back what :meth:`_place` moved, after the record of the switch failed: the new
        folder back to staging (the caller removes it), the copy it replaced back in place."""
        with contextlib.suppress(OSError):
            final.rename(staging)
        if replaced is not None:
            with contextlib.suppress(OSError):
                replaced.rename(final)

    @staticmethod
    def _settle(replaced: Path | None) -> None:
        """The switch is recorded: the copy :meth:`_place` put aside can go."""
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    def _read_active(self, model_dir: Path) -> dict[str, Any] | None:
        path = model_dir / ACTIVE_FILE
        if not path.exists():
            return None
        data = _read_json(path)
        if not _is_entry(data.get("active")):
            raise InstallError(f"{path} is corrupt; reinstall the model {model_dir.name}")
        for key in ("previous", "staged"):
            if not _is_entry(data.get(key)):
                data[key] = None
        data["enabled"] = data.get("enabled", True) is not False
        return data

    def _write_active(
        self,
        model_dir: Path,
        active: dict[str, Any],
        previous: dict[str, Any] | None,
        *,
        staged: dict[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        record = {
            "active": active,
            "previous": previous,
            "staged": staged,
            "enabled": enabled,
            "updated_at": _now(),
        }
        atomic_write_text(
            model_dir / ACTIVE_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n"
        )

    @staticmethod
    def _write_install_record(folder: Path, package_sha: str, model: InstalledModel) -> None:
        record = {
            "package_sha256": package_sha,
            "crash_key": model.crash_key,  # with the provider the install asked for, if any
            "installed_at": model.installed_at,
            "providers": model.providers,
            "benchmark": model.benchmark,
            "fallback": model.fallback,
            "format": model.format,
            "formats": model.formats,
        }
        atomic_write_text(folder / INSTALL_RECORD, json.dumps(record, indent=2) + "\n")

    @staticmethod
    def _remove_leftovers(model_dir: Path) -> None:
        """Remove what an interrupted install left behind (staging, trash and temp files),
        after putting back a version's copy that a kill left aside while the very same package
        was installed again (:meth:`_place`) with its own folder still missing."""
        for child in list(model_dir.iterdir()):
            name = child.name.removeprefix(REPLACED_PREFIX)
            if child.name.startswith(REPLACED_PREFIX) and name and not (model_dir / name).exists():
                with contextlib.suppress(OSError):
                    child.rename(model_dir / name)
        for child in model_dir.iterdir():
            if child.name.startswith("."):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        child.unlink()

    @staticmethod
    def _prune(model_dir: Path, keep: set[str]) -> None:
        """Delete versions other than the active, previous and staged ones (best effort)."""
        for child in model_dir.iterdir():
            if child.is_dir() and not child.name.startswith(".") and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)


def _time_ms(predictor: Predictor, sample: np.ndarray, warmup: int) -> float:
    """Median milliseconds of a full prediction on ``sample`` (warm-up runs excluded)."""
    for _ in range(max(1, warmup)):
        predictor.predict(sample)
    times = []
    for _ in range(BENCHMARK_RUNS):
        t0 = time.perf_counter()
        predictor.predict(sample)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def _manifest_of(folder: Path) -> Manifest:
    return read_manifest_dir(folder)


def read_format_key(folder: Path) -> str:
    """The format key of an extracted package folder."""
    return _manifest_of(folder).format.key


def _is_entry(entry: object) -> bool:
    """A version entry of active.json: a plain folder name inside the model folder."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("folder"), str)
        and bool(_SAFE_FOLDER.match(entry["folder"]))
        and entry["folder"] != ACTIVE_FILE
    )


def _read_json(path: Path, *, strict: bool = True) -> dict[str, Any]:
    """A JSON object from ``path`` ({} when absent); corrupt files raise unless ``strict`` is off."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        if not strict:
            return {}
        raise InstallError(f"{path} is unreadable or corrupt; reinstall the model") from None
    return data if isinstance(data, dict) else {}


def _pick_folder(model_dir: Path, version: str, package_sha: str) -> str:
    """``<version>`` when it is a safe, free folder name; else one made unique by the package digest.

    A folder already holding the very same package (same digest) is reused.
    """
    sha12 = package_sha[:12]
    base = version if _SAFE_FOLDER.match(version) and version != ACTIVE_FILE else sha12
    candidates = [base] if base == sha12 else [base, f"{base}-{sha12}"]
    for candidate in candidates:
        existing = model_dir / candidate
        if (
            not existing.exists()
            or _read_json(existing / INSTALL_RECORD, strict=False).get("package_sha256")
            == package_sha
        ):
            return candidate
    return f"{sha12}-{secrets.token_hex(4)}"
