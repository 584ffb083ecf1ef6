"""Run a package: preprocessing, a backend, and postprocessing driven by the manifest."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.backends import BackendRegistry, default_registry
from runtimes.detections import Detections
from runtimes.errors import PackageError
from runtimes.package import Manifest, PackageReader, read_manifest_dir
from runtimes.postprocess import postprocess_detect
from runtimes.preprocess import decode_image, letterbox, to_tensor


@dataclass(frozen=True)
class Timing:
    """Milliseconds spent in each stage of one prediction."""

    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.preprocess_ms + self.inference_ms + self.postprocess_ms

    def as_dict(self) -> dict[str, float]:
        return {
            "decode": round(self.decode_ms, 3),
            "preprocess": round(self.preprocess_ms, 3),
            "inference": round(self.inference_ms, 3),
            "postprocess": round(self.postprocess_ms, 3),
            "total": round(self.total_ms, 3),
        }


class Predictor:
    """A loaded model ready to answer. Thread-compatible: one call at a time per instance."""

    def __init__(
        self,
        folder: Path,
        *,
        runtime: str | None = None,
        threads: int | None = None,
        registry: BackendRegistry | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest_dir(self.folder)
        registry = registry or default_registry()
        backend_cls = (
            registry.get(runtime) if runtime else registry.for_format(self.manifest.format.key)
        )
        if self.manifest.format.key not in backend_cls.formats:
            raise PackageError(
                f"runtime {backend_cls.key} cannot run format {self.manifest.format.key}; pick another --runtime"
            )
        self.backend = backend_cls(self.folder / self.manifest.format.file, threads=threads)
        spec = self.manifest.model
        self.class_names = tuple(spec.class_names)
        self.input_hw = (spec.input.height, spec.input.width)
        self.dtype = spec.input.dtype
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def from_path(cls, path: Path, **kwargs: object) -> Predictor:
        """Open an extracted package folder, or verify and unpack a ``.outpost.zip``."""
        path = Path(path)
        if path.is_dir():
            return cls(path, **kwargs)  # type: ignore[arg-type]
        if not path.exists():
            raise PackageError(
                f"{path} does not exist; pass a .outpost.zip or an extracted package folder"
            )
        tmp = tempfile.TemporaryDirectory(prefix="outpost-pkg-")
        with PackageReader(path) as reader:
            folder = reader.extract(Path(tmp.name) / "pkg")
        predictor = cls(folder, **kwargs)  # type: ignore[arg-type]
        predictor._tmp = tmp
        return predictor

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def warmup(self, runs: int = 2) -> None:
        tensor = np.zeros((1, 3, *self.input_hw), dtype=self.dtype)
        for _ in range(runs):
            self.backend.run(tensor)

    def predict(
        self,
        img_bgr: np.ndarray,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        decode_ms: float = 0.0,
    ) -> tuple[Detections, Timing]:
        post = self.manifest.model.postprocessing
        pre = self.manifest.model.preprocessing
        t0 = time.perf_counter()
        padded, info = letterbox(img_bgr, self.input_hw, pre.pad_value)
        tensor = to_tensor(padded, rgb=pre.color == "RGB", scale=pre.scale, dtype=self.dtype)
        t1 = time.perf_counter()
        raw = self.backend.run(tensor)
        t2 = time.perf_counter()
        dets = postprocess_detect(
            raw,
            info,
            self.class_names,
            conf_threshold=post.conf_threshold if conf is None else conf,
            iou_threshold=post.iou_threshold if iou is None else iou,
            max_det=post.max_det if max_det is None else max_det,
            agnostic=post.agnostic_nms,
            layout=post.output_layout,
            box_units=post.box_units,
            input_hw=self.input_hw,
        )
        t3 = time.perf_counter()
        timing = Timing(decode_ms, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return dets, timing

    def predict_bytes(self, data: bytes, **kwargs: float | int | None) -> tuple[Detections, Timing]:
        t0 = time.perf_counter()
        img = decode_image(data)
        return self.predict(img, decode_ms=(time.perf_counter() - t0) * 1e3, **kwargs)  # type: ignore[arg-type]
