"""CoreML backend (macOS): ``coremltools.models.MLModel`` on an ``.mlpackage``.

CoreML predicts only on macOS; elsewhere the probe reports the backend unavailable. The
package ships the ``.mlpackage`` folder as ``model.mlpackage.zip``; it is unpacked beside
the archive on first load. The model takes an RGB image (Ultralytics' CoreML export scales
it by 1/255 inside), so the NCHW float tensor every backend receives is turned back into
an 8-bit image; the outputs come back as the same raw head ONNX Runtime gives (the
detections first, a segmentation model's prototypes second).
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.base import Backend, BackendInfo
from runtimes.errors import PackageError, RuntimeUnavailableError
from runtimes.package import extract_zip_safely

COMPUTE_UNITS = "ALL"  # CPU, GPU and the Neural Engine, as CoreML decides


def on_macos() -> bool:
    return platform.system() == "Darwin"


def coremltools_installed() -> bool:
    return importlib.util.find_spec("coremltools") is not None


def unpack_mlpackage(model_path: Path) -> Path:
    """The ``.mlpackage`` folder for ``model_path`` (a folder, or the zip shipping one)."""
    if model_path.is_dir():
        return model_path
    target = model_path.parent / "model.mlpackage"
    if target.is_dir():
        return target
    staging = model_path.parent / ".model.mlpackage.unpacking"
    shutil.rmtree(staging, ignore_errors=True)  # an earlier unpacking that was cut short
    try:
        extract_zip_safely(model_path, staging)
    except PackageError as exc:
        raise RuntimeUnavailableError(
            f"{model_path.name} holds an unsafe path or entry ({exc}); export the model again"
        ) from None
    if not (staging / "model.mlpackage").is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeUnavailableError(
            f"{model_path.name} holds no model.mlpackage folder; export the model again"
        )
    (staging / "model.mlpackage").rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def tensor_to_image(tensor: np.ndarray) -> np.ndarray:
    """A ``(1, 3, H, W)`` float tensor in [0, 1] (RGB) → an ``(H, W, 3)`` uint8 RGB image."""
    if tensor.ndim != 4 or tensor.shape[0] != 1 or tensor.shape[1] != 3:
        raise ValueError(f"expected a (1, 3, H, W) tensor, got {tensor.shape}")
    hwc = np.transpose(tensor[0], (1, 2, 0))
    return np.ascontiguousarray(np.clip(np.round(hwc * 255.0), 0, 255).astype(np.uint8))


def order_outputs(outputs: dict[str, Any], names: list[str]) -> list[np.ndarray]:
    """The model's outputs in its declared order, as float32 arrays, the detections (3-D)
    ahead of segmentation prototypes (4-D)."""
    arrays = [np.asarray(outputs[n], dtype=np.float32) for n in names if n in outputs]
    if len(arrays) > 1 and arrays[0].ndim == 4 and arrays[1].ndim != 4:
        arrays = [arrays[1], arrays[0], *arrays[2:]]
    return arrays


class CoreMlBackend(Backend):
    key = "coreml"
    formats = ("coreml",)
    provider_names = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")

    @classmethod
    def probe(cls) -> BackendInfo:
        if not on_macos():
            return BackendInfo(
                cls.key,
                cls.formats,
                False,
                reason=f"CoreML predicts only on macOS (this is {platform.system()})",
            )
        if not coremltools_installed():
            return BackendInfo(
                cls.key,
                cls.formats,
                False,
                reason="coremltools is not installed (pip install coremltools)",
            )
        try:
            ct_version: str | None = version("coremltools")
        except PackageNotFoundError:
            ct_version = None
        return BackendInfo(
            cls.key, cls.formats, True, version=ct_version, providers=(COMPUTE_UNITS,)
        )

    def __init__(
        self, model_path: Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        info = self.probe()
        if not info.available:
            raise RuntimeUnavailableError(f"the coreml runtime cannot run here: {info.reason}")
        import coremltools as ct

        folder = unpack_mlpackage(Path(model_path))
        # the compute units asked for (CPU_ONLY, CPU_AND_GPU, CPU_AND_NE), else ALL
        self.compute_units = next(
            (p for p in providers or [] if p in self.provider_names), COMPUTE_UNITS
        )
        units = getattr(ct.ComputeUnit, self.compute_units, None)
        if units is None:  # an older coremltools (CPU_AND_NE came with 6.0)
            raise RuntimeUnavailableError(
                f"this coremltools has no compute units {self.compute_units}; upgrade it"
            )
        self.model: Any = ct.models.MLModel(str(folder), compute_units=units)
        spec = self.model.get_spec()
        self.input_name = str(spec.description.input[0].name)
        self.output_names = [str(o.name) for o in spec.description.output]

    @property
    def active_providers(self) -> list[str]:
        return [self.compute_units]

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        from PIL import Image

        image = Image.fromarray(tensor_to_image(tensor), mode="RGB")
        outputs = self.model.predict({self.input_name: image})
        return order_outputs(outputs, self.output_names)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return self.run_all(tensor)[0]
