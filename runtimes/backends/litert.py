"""LiteRT backend (``ai-edge-litert``'s interpreter) for ``.tflite`` packages.

It hands back the same raw head as ONNX Runtime: ``(1, 4 + nc + extra, anchors)`` with boxes
(and pose keypoint ``x, y``) in input pixels, the segmentation prototypes second, a
classifier's probabilities as they are. Ultralytics' LiteRT export divides the coordinate
channels by the input size (so INT8 keeps score resolution); the facts needed to undo it
(task, class count, keypoint shape, end-to-end head) are read from the ``metadata.json``
Ultralytics appends to the ``.tflite`` file. A model without that metadata is taken as is.

Threads: :func:`default_threads` unless the caller asks for a count. XNNPACK's thread pool
competes with the calling thread, which letterboxes the next image and runs NMS on the CPU
too; on a small detector per-op work is short, so a pool that takes every core waits on the
caller more than it helps. The default leaves one core to the caller and stops at
:data:`MAX_DEFAULT_THREADS` (measurements: README, "Export and runtimes", "LiteRT threads").
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.base import Backend, BackendInfo
from runtimes.errors import RuntimeUnavailableError

NORMALIZED_TASKS = ("detect", "segment", "pose")
MAX_DEFAULT_THREADS = 4


def default_threads(cpu_count: int | None = None) -> int:
    """XNNPACK threads when the caller names none: one core less than the machine has (the
    caller's pre- and post-processing keep one), at least 1, at most
    :data:`MAX_DEFAULT_THREADS`."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_THREADS, cores - 1))


@dataclass(frozen=True)
class HeadFacts:
    """What the raw outputs need to be brought to ONNX Runtime's layout and units."""

    task: str | None = None
    nc: int = 0
    kpt_shape: tuple[int, int] | None = None
    normalized: bool = False


def read_head_facts(model_path: Path) -> HeadFacts:
    """The head facts from the ``metadata.json`` embedded in a ``.tflite`` file (Ultralytics
    appends it as a zip entry); empty facts when the file carries none."""
    try:
        with zipfile.ZipFile(model_path) as zf:
            meta: dict[str, Any] = json.loads(zf.read("metadata.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return HeadFacts()
    task = meta.get("task")
    names = meta.get("names") or {}
    kpt = meta.get("kpt_shape")
    normalized = (
        task in NORMALIZED_TASKS
        and not bool(meta.get("end2end", False))
        and meta.get("head") != "RTDETRDecoder"
    )
    return HeadFacts(
        task=str(task) if task else None,
        nc=len(names),
        kpt_shape=(int(kpt[0]), int(kpt[1])) if kpt else None,
        normalized=normalized,
    )


def denormalize(raw: np.ndarray, facts: HeadFacts, input_hw: tuple[int, int]) -> np.ndarray:
    """Scale a normalized raw head ``(batch, channels, anchors)`` back to input pixels."""
    if not facts.normalized or raw.ndim != 3:
        return raw
    h, w = input_hw
    out = raw.astype(np.float32, copy=True)
    out[:, [0, 2]] *= w
    out[:, [1, 3]] *= h
    if facts.task == "pose" and facts.kpt_shape:
        start = 4 + facts.nc
        ndim = facts.kpt_shape[1]
        out[:, start::ndim] *= w
        out[:, start + 1 :: ndim] *= h
    return out


def order_outputs(outputs: list[np.ndarray], task: str | None) -> list[np.ndarray]:
    """Detections first, then the segmentation prototypes (the flatbuffer may list them the
    other way round)."""
    if task == "segment" and len(outputs) > 1 and outputs[0].ndim == 4:
        return [outputs[1], outputs[0], *outputs[2:]]
    return outputs


class LiteRtBackend(Backend):
    key = "litert"
    formats = ("tflite",)
    provider_names = ("cpu",)

    @classmethod
    def probe(cls) -> BackendInfo:
        if importlib.util.find_spec("ai_edge_litert") is None:
            return BackendInfo(
                cls.key,
                cls.formats,
                False,
                reason="ai-edge-litert is not installed (pip install 'outpost[litert]')",
            )
        try:
            lib_version: str | None = version("ai-edge-litert")
        except PackageNotFoundError:
            lib_version = None
        return BackendInfo(cls.key, cls.formats, True, version=lib_version, providers=("cpu",))

    def __init__(
        self, model_path: Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise RuntimeUnavailableError(
                "the litert runtime needs ai-edge-litert; pip install 'outpost[litert]'"
            ) from None
        self.threads = int(threads) if threads else default_threads()
        self.interpreter: Any = Interpreter(model_path=str(model_path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        self.input_details = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()
        shape = tuple(int(v) for v in self.input_details["shape"])
        # litert-torch keeps PyTorch's NCHW input; an NHWC model (other converters) is fed
        # transposed, so callers always pass NCHW.
        self.nhwc = len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3)
        self.input_hw = (shape[1], shape[2]) if self.nhwc else (shape[2], shape[3])
        self.facts = read_head_facts(Path(model_path))

    @property
    def active_providers(self) -> list[str]:
        return ["cpu"]

    def _invoke(self, tensor: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(tensor.transpose(0, 2, 3, 1) if self.nhwc else tensor)
        details = self.input_details
        dtype = np.dtype(details["dtype"])
        if dtype in (np.dtype(np.int8), np.dtype(np.int16)):  # a full-integer model
            scale, zero = details["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        else:
            x = x.astype(dtype, copy=False)
        self.interpreter.set_tensor(details["index"], x)
        self.interpreter.invoke()
        outputs = []
        for out in self.output_details:
            y = np.array(self.interpreter.get_tensor(out["index"]), copy=True)
            if y.dtype in (np.dtype(np.int8), np.dtype(np.int16)):
                scale, zero = out["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            outputs.append(y)
        outputs = order_outputs(outputs, self.facts.task)
        if self.nhwc and len(outputs) > 1 and outputs[1].ndim == 4:
            outputs[1] = np.ascontiguousarray(outputs[1].transpose(0, 3, 1, 2))
        outputs[0] = denormalize(outputs[0], self.facts, self.input_hw)
        return outputs

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return self._invoke(tensor)[0]

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self._invoke(tensor)
