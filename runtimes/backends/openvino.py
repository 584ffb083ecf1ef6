"""OpenVINO backend: ``openvino.Core`` on the CPU, FP32 inference precision.

OpenVINO runs bf16 on CPUs that support it unless told otherwise, which moves boxes by
about a pixel; the backend asks for f32 so an FP32 export keeps the PyTorch model's answers,
and lets an FP16 export (FP16 weights in the IR) run at the CPU's reduced precision.
It also reads ONNX files directly (``--runtime openvino`` on an ONNX package).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.base import Backend, BackendInfo
from runtimes.errors import OutpostError, RuntimeUnavailableError

DEVICE = "CPU"


def disable_openvino_telemetry() -> None:
    """Keep OpenVINO's model-conversion tools from sending usage telemetry, in this process only.

    ``openvino.tools.ovc`` falls back to a no-op stub when ``openvino_telemetry`` cannot be
    imported; marking the module absent selects that stub. (The official opt-out,
    ``opt_in_out --opt_out``, itself sends an event and writes to the home folder.)
    Call it before OpenVINO is imported.
    """
    os.environ.setdefault("OPENVINO_TELEMETRY", "0")
    for name in ("openvino_telemetry", "openvino_telemetry.backend"):
        if name not in sys.modules or sys.modules[name] is not None:
            sys.modules[name] = None  # type: ignore[assignment]


def _has_f16_weights(model: Any, ov: Any) -> bool:
    return any(
        op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16
        for op in model.get_ops()
    )


class OpenVinoBackend(Backend):
    key = "openvino"
    formats = ("openvino", "onnx")
    provider_names = ("CPU", "GPU", "NPU", "AUTO")

    @classmethod
    def probe(cls) -> BackendInfo:
        if importlib.util.find_spec("openvino") is None:
            return BackendInfo(
                cls.key,
                cls.formats,
                False,
                reason="openvino is not installed (pip install 'outpost[openvino]')",
            )
        try:
            ov_version = version("openvino")
        except PackageNotFoundError:
            ov_version = None
        return BackendInfo(cls.key, cls.formats, True, version=ov_version, providers=(DEVICE,))

    def __init__(
        self, model_path: Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        disable_openvino_telemetry()
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeUnavailableError(
                "the openvino runtime needs openvino; pip install 'outpost[openvino]'"
            ) from None
        core = ov.Core()
        model = core.read_model(str(model_path))
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
        }
        # An FP32 model runs in f32 (the CPU plugin would pick bf16 where the CPU has it); a
        # model exported with FP16 weights was asked for reduced precision, so it may use it.
        self.reduced_precision = _has_f16_weights(model, ov)
        if not self.reduced_precision:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = core.compile_model(model, DEVICE, config)
        self.request = self.compiled.create_infer_request()
        # What the plugin settled on (the benchmark prints them beside Ultralytics' choices).
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.to_string() if isinstance(hint, ov.Type) else str(hint)
        # A model of one static input reads it from a buffer this backend owns, shared with the
        # request: a call copies the tensor in and runs the request with nothing to dispatch,
        # which spares the Python wrapper's per-call input handling (0.15-0.25 ms of a 4-5 ms
        # 160 px detector; the outputs are bit-identical). Other models pass their input.
        self._input: np.ndarray | None = None
        inputs = self.compiled.inputs
        if len(inputs) == 1 and inputs[0].get_partial_shape().is_static:
            dtype = inputs[0].get_element_type().to_dtype()
            self._input = np.zeros(tuple(inputs[0].get_shape()), dtype)
            self.request.set_input_tensor(ov.Tensor(self._input, shared_memory=True))

    @property
    def active_providers(self) -> list[str]:
        return [DEVICE]

    def _infer(self, tensor: np.ndarray) -> None:
        if self._input is None:  # OpenVINO converts, or says why the tensor does not fit
            self.request.infer([np.ascontiguousarray(tensor)])
            return
        if tensor.shape != self._input.shape:  # checked here: OpenVINO would resize the buffer
            raise OutpostError(
                f"the openvino model takes an input of shape {self._input.shape}, not "
                f"{tensor.shape}; prepare the image at the package's input size"
            )
        np.copyto(self._input, tensor, casting="same_kind")
        self.request.infer(share_outputs=True)  # copied out below

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self._infer(tensor)
        # The output buffer is reused by the next inference: hand back a copy.
        out: np.ndarray = np.array(self.request.get_output_tensor(0).data, copy=True)
        return out

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        self._infer(tensor)
        return [
            np.array(self.request.get_output_tensor(i).data, copy=True)
            for i in range(len(self.compiled.outputs))
        ]
