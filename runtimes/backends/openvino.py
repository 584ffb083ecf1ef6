"""OpenVINO backend: ``openvino.Core`` on the CPU, or an Intel GPU; FP32 inference precision.

OpenVINO runs bf16 on CPUs that support it (and f16 on GPUs) unless told otherwise, which
moves boxes by about a pixel; the backend asks for f32 so an FP32 export keeps the PyTorch
model's answers, and lets an FP16 export (FP16 weights in the IR) run at the device's reduced
precision. It also reads ONNX files directly (``--runtime openvino`` on an ONNX package).

Devices are the runtime's "providers": ``CPU`` always, ``GPU`` where the host shows an Intel
GPU (a DRM card of vendor 0x8086; OpenVINO's GPU plugin also needs Intel's compute runtime,
and says so when it is missing). The probe reads sysfs rather than importing OpenVINO, so an
idle agent does not load it. A GPU compiles its kernels on the first load; they are cached in
the model's folder (``CACHE_DIR``), so a restart loads in seconds.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.base import Backend, BackendInfo
from runtimes.errors import OutpostError, RuntimeUnavailableError

CPU = "CPU"
GPU = "GPU"
INTEL_VENDOR = "0x8086"
SYSFS_ROOT = "/"  # where /sys and /dev are read from (tests point it at a fake tree)
GPU_CACHE_DIR = "openvino-cache"  # the GPU's compiled kernels, in the model's folder


def intel_gpu_present(root: str | None = None) -> bool:
    """Whether the host shows an Intel GPU: a DRM render node, and a card of vendor 0x8086."""
    base = root or SYSFS_ROOT
    if not glob.glob(os.path.join(base, "dev", "dri", "renderD*")):
        return False
    for vendor_file in glob.glob(
        os.path.join(base, "sys", "class", "drm", "card*", "device", "vendor")
    ):
        card = vendor_file.split(os.sep)[-3]
        if "-" in card:  # a connector (card0-HDMI-A-1), not a card
            continue
        try:
            with open(vendor_file, encoding="ascii", errors="replace") as f:
                if f.read().strip().lower() == INTEL_VENDOR:
                    return True
        except OSError:
            continue
    return False


def openvino_devices() -> tuple[str, ...]:
    """The devices the backend offers here, the CPU first."""
    return (CPU, GPU) if sys.platform.startswith("linux") and intel_gpu_present() else (CPU,)


def _error_line(exc: BaseException) -> str:
    """OpenVINO's own message on one line (its exceptions carry a C++ source location first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Exception from src/")]
    text = " ".join(useful or lines) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


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
    provider_names = (CPU, GPU)

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
        return BackendInfo(
            cls.key, cls.formats, True, version=ov_version, providers=openvino_devices()
        )

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
        # An FP32 model runs in f32 (the CPU plugin would pick bf16 where the CPU has it, the
        # GPU plugin f16); a model exported with FP16 weights was asked for reduced precision,
        # so it may use it.
        self.reduced_precision = _has_f16_weights(model, ov)
        # The devices asked for, in order, then the CPU (as ONNX Runtime falls back to it):
        # the first that compiles the model runs it, and why each one before it did not is
        # kept (``provider_errors``), in the runtime's words.
        wanted = [p for p in (providers or []) if p in self.provider_names]
        self._provider_errors: dict[str, str] = {}
        compiled = None
        for device in dict.fromkeys([*wanted, CPU]):
            config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
            if device == CPU:
                config["INFERENCE_NUM_THREADS"] = int(threads or os.cpu_count() or 1)
            else:
                cache = Path(model_path).parent / GPU_CACHE_DIR
                try:
                    cache.mkdir(exist_ok=True)
                    config["CACHE_DIR"] = str(cache)
                except OSError:  # a read-only folder: compile every time
                    pass
            if not self.reduced_precision:
                config["INFERENCE_PRECISION_HINT"] = "f32"
            try:
                compiled = core.compile_model(model, device, config)
            except Exception as exc:  # OpenVINO raises RuntimeError with its own text
                self._provider_errors[device] = _error_line(exc)
                continue
            self.device = device
            break
        if compiled is None:
            raise RuntimeUnavailableError(
                "openvino could not load the model on "
                + "; ".join(f"{d}: {e}" for d, e in self._provider_errors.items())
            )
        self.compiled = compiled
        self.request = self.compiled.create_infer_request()
        # What the plugin settled on (the benchmark prints them beside Ultralytics' choices).
        self.threads = (
            int(self.compiled.get_property("INFERENCE_NUM_THREADS")) if self.device == CPU else None
        )
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
        return [self.device]

    @property
    def provider_errors(self) -> dict[str, str]:
        return dict(self._provider_errors)

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
