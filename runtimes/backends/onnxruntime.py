"""ONNX Runtime backend: CPU, plus any execution provider the installed build offers.

An ONNX package exported with ``--for-tensorrt`` carries ``format.details.tensorrt_build``;
where the TensorRT execution provider is present, the session then builds the engine on this
device and caches it in the model folder (``trt_cache/``), so later loads reuse it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.base import Backend, BackendInfo
from runtimes.errors import RuntimeUnavailableError

# Preferred order when several providers are present.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)
# Providers of other ONNX Runtime builds, known by name where ONNX Runtime is not installed.
OTHER_ORT_PROVIDERS = (
    "DmlExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "QNNExecutionProvider",
    "NnapiExecutionProvider",
    "XnnpackExecutionProvider",
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
    "CANNExecutionProvider",
    "WebGpuExecutionProvider",
)
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ENGINE_CACHE_DIR = "trt_cache"
MANIFEST_NAME = "manifest.json"
FORCE_SPINNING_STOP = "session.force_spinning_stop"


def tensorrt_build_request(model_path: Path) -> dict[str, Any] | None:
    """``format.details.tensorrt_build`` of the package whose manifest lists ``model_path``
    (the manifest beside it, or one folder up for a multi-format package), or None."""
    model_path = Path(model_path)
    for folder in (model_path.parent, model_path.parent.parent):
        manifest = folder / MANIFEST_NAME
        if not manifest.is_file():
            continue
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        fmt = data.get("format") or {}
        for spec in [fmt, *(data.get("alternates") or [])]:
            if not isinstance(spec, dict) or not spec.get("file"):
                continue
            if (folder / str(spec["file"])).resolve() == model_path.resolve():
                build = (spec.get("details") or {}).get("tensorrt_build")
                return dict(build) if isinstance(build, dict) else None
        return None
    return None


def session_providers(
    wanted: list[str] | tuple[str, ...],
    available: list[str],
    trt_build: dict[str, Any] | None,
    model_dir: Path,
) -> list[str | tuple[str, dict[str, Any]]]:
    """The ``providers`` argument for an ``InferenceSession``: the wanted providers this build
    has, in order (CPU when none); when the package asks for a TensorRT build and the TensorRT
    provider is present, it gets its options: engine cache in the model folder, fp16, and the
    workspace size."""
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for name in wanted:
        if name not in available:
            continue
        if name == TENSORRT and trt_build is not None:
            cache = model_dir / str(trt_build.get("engine_cache") or ENGINE_CACHE_DIR)
            options: dict[str, Any] = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_fp16_enable": bool(trt_build.get("fp16", False)),
            }
            if trt_build.get("workspace_mb"):
                options["trt_max_workspace_size"] = int(trt_build["workspace_mb"]) * 2**20
            chosen.append((name, options))
        else:
            chosen.append(name)
    return chosen or ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    key = "onnxruntime"
    formats = ("onnx",)

    @classmethod
    def probe(cls) -> BackendInfo:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return BackendInfo(
                cls.key, cls.formats, False, reason=f"onnxruntime is not installed ({exc})"
            )
        return BackendInfo(
            cls.key,
            cls.formats,
            True,
            version=ort.__version__,
            providers=tuple(ort.get_available_providers()),
        )

    @classmethod
    def known_providers(cls) -> tuple[str, ...]:
        try:
            import onnxruntime as ort
        except ImportError:
            return (*PROVIDER_PREFERENCE, *OTHER_ORT_PROVIDERS)
        return tuple(ort.get_all_providers())

    @classmethod
    def fallback_providers(cls, provider: str) -> list[str]:
        """TensorRT leaves the nodes it cannot build to CUDA, then the CPU (as NVIDIA's set-up
        for ONNX Runtime does); every other provider to the CPU."""
        chain = [CUDA, CPU] if provider == TENSORRT else [CPU]
        return [p for p in chain if p != provider]

    def __init__(
        self, model_path: Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeUnavailableError(
                "onnxruntime is not installed; pip install 'outpost[agent]'"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The pool threads spin while a run is in flight and stop the moment it returns, so
        # the decode, the reply and the next request's work get the cores (and an idle device
        # does not burn power between requests).
        opts.add_session_config_entry(FORCE_SPINNING_STOP, "1")
        available = list(ort.get_available_providers())
        model_path = Path(model_path)
        trt_build = tensorrt_build_request(model_path) if TENSORRT in available else None
        chosen = session_providers(
            providers or PROVIDER_PREFERENCE, available, trt_build, model_path.parent
        )
        for entry in chosen:
            if isinstance(entry, tuple):  # the engine cache must exist before the build
                Path(entry[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        self.tensorrt_build = trt_build
        # ONNX Runtime prints why a provider failed ("EP Error: ...", then its retry on the
        # CPU) to stdout, where it would break a caller's JSON: it goes to stderr, and is
        # kept as that provider's error.
        said = io.StringIO()
        with contextlib.redirect_stdout(said):
            self.session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=chosen
            )
        if said.getvalue():
            sys.stderr.write(said.getvalue())
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        active = set(self.session.get_providers())
        error = next(
            (line.strip()[:300] for line in said.getvalue().splitlines() if "EP Error" in line),
            "listed by this ONNX Runtime build, but it did not initialise (its libraries, driver "
            "or device are missing?)",
        )
        self._provider_errors: dict[str, str] = {
            name: error
            for name in (e[0] if isinstance(e, tuple) else e for e in chosen)
            if name not in active
        }

    @property
    def active_providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def provider_errors(self) -> dict[str, str]:
        return dict(self._provider_errors)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(self.output_names[:1], {self.input_name: tensor})[0]
        return out

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        outs: list[np.ndarray] = self.session.run(self.output_names, {self.input_name: tensor})
        return outs
