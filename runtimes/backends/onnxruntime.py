"""ONNX Runtime backend: CPU, plus any execution provider the installed build offers."""

from __future__ import annotations

import os
from pathlib import Path

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
        available = ort.get_available_providers()
        chosen = [p for p in (providers or PROVIDER_PREFERENCE) if p in available] or [
            "CPUExecutionProvider"
        ]
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=chosen)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def active_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, tensor: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(self.output_names[:1], {self.input_name: tensor})[0]
        return out

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        outs: list[np.ndarray] = self.session.run(self.output_names, {self.input_name: tensor})
        return outs
