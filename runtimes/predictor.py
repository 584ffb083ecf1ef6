"""Run a package: preprocessing, a backend, and postprocessing driven by the manifest."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtimes.backends import BackendRegistry, default_registry
from runtimes.backends.base import CPU_PROVIDERS, NOT_COMPUTE_PROVIDERS, Backend
from runtimes.detections import Detections
from runtimes.errors import PackageError, UnknownProviderError
from runtimes.package import FormatSpec, Manifest, PackageReader, read_manifest_dir
from runtimes.postprocess import (
    postprocess_classify,
    postprocess_detect,
    postprocess_pose,
    postprocess_segment,
)
from runtimes.preprocess import (
    FRAME_CHANNELS,
    LetterboxInfo,
    decode_frame,
    decode_image,
    letterbox,
    to_tensor,
)


def center_crop(img: np.ndarray, new_hw: tuple[int, int]) -> tuple[np.ndarray, LetterboxInfo]:
    """Shortest side to the input size, then the centred crop (Ultralytics' classification
    transforms: torchvision ``Resize(size)`` + ``CenterCrop(size)``; cv2's area filter stands in
    for PIL's antialiased bilinear when shrinking, so pixels may differ by a few levels)."""
    h0, w0 = img.shape[:2]
    th, tw = new_hw
    size = min(th, tw)
    if h0 <= w0:
        nh, nw = size, max(int(size * w0 / h0), 1)
    else:
        nh, nw = max(int(size * h0 / w0), 1), size
    if (nh, nw) != (h0, w0):
        shrink = nh < h0 or nw < w0
        img = cv2.resize(
            img, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    top = max(int(round((nh - th) / 2.0)), 0)
    left = max(int(round((nw - tw) / 2.0)), 0)
    crop = img[top : top + th, left : left + tw]
    if crop.shape[:2] != (th, tw):  # a non-square input larger than the resized image
        crop = cv2.copyMakeBorder(
            crop, 0, th - crop.shape[0], 0, tw - crop.shape[1], cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
    info = LetterboxInfo(orig_hw=(h0, w0), gain_xy=(nw / w0, nh / h0), pad_xy=(-left, -top))
    return np.ascontiguousarray(crop), info


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


def _provider_of(backend_cls: type[Backend], provider: str) -> str:
    """``provider`` as ``backend_cls``'s runtime spells it, or UnknownProviderError."""
    named = backend_cls.provider_named(provider)
    if named is None or named in NOT_COMPUTE_PROVIDERS:
        known = ", ".join(
            p for p in backend_cls.known_providers() if p not in NOT_COMPUTE_PROVIDERS
        )
        what = (
            f"runtime {backend_cls.key}'s {named} is a remote endpoint, not a device"
            if named
            else f"runtime {backend_cls.key} knows no provider {provider!r}"
        )
        raise UnknownProviderError(
            f"{what} (it knows: {known or 'none'}); name one of those, or pick the runtime "
            "with --runtime"
        )
    return named


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class Predictor:
    """A loaded model ready to answer. Thread-compatible: one call at a time per instance.

    Args:
        folder: an extracted package folder.
        runtime: the backend key to run it with (default: the first available backend for
            the chosen format).
        threads: intra-op threads for the backend (its default when None).
        registry: the backends to choose from (default: :func:`default_registry`).
        format_key: which format of a multi-format package to load (``onnx``,
            ``torchscript``, ``openvino``, ...; see ``Manifest.all_formats``). None picks the
            primary format, or, when ``runtime`` is given and cannot run the primary, the
            first of the package's formats that runtime runs.
        provider: the execution provider (device) to run it on, in any case
            (``CUDAExecutionProvider``, OpenVINO's ``GPU``, ...; UnknownProviderError when the
            runtime knows no such name). One the machine lacks, or that fails to load the
            model, leaves the runtime's own fallback, reported by :attr:`fallback`.
    """

    def __init__(
        self,
        folder: Path,
        *,
        runtime: str | None = None,
        threads: int | None = None,
        registry: BackendRegistry | None = None,
        format_key: str | None = None,
        provider: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest_dir(self.folder)
        registry = registry or default_registry()
        backend_cls = registry.get(runtime) if runtime else None
        if format_key is not None:
            fmt = self.manifest.format_for(format_key)
        elif backend_cls is not None:
            runnable = [f for f in self.manifest.all_formats() if f.key in backend_cls.formats]
            fmt = runnable[0] if runnable else self.manifest.format
        else:
            fmt = self.manifest.format
        if backend_cls is None:
            backend_cls = registry.for_format(fmt.key)
        if fmt.key not in backend_cls.formats:
            raise PackageError(
                f"runtime {backend_cls.key} cannot run format {fmt.key}; pick another --runtime"
            )
        self.format: FormatSpec = fmt
        self.provider: str | None = None
        self._provider_error: str | None = None
        model_path = self.folder / fmt.file
        if provider is None:
            self.backend = backend_cls(model_path, threads=threads)
        else:
            self.provider = _provider_of(backend_cls, provider)
            after = backend_cls.fallback_providers(self.provider)
            cpu = next((p for p in after if p in CPU_PROVIDERS), None)
            try:  # the wanted provider, then what takes over from it, as the agent loads one
                self.backend = backend_cls(
                    model_path, threads=threads, providers=[self.provider, *after]
                )
            except Exception as exc:  # each runtime raises its own types
                if cpu is None:
                    raise
                self._provider_error = f"{self.provider} failed to load it: {_one_line(exc)}"
                self.backend = backend_cls(model_path, threads=threads, providers=[cpu])
        spec = self.manifest.model
        self.class_names = tuple(spec.class_names)
        self.input_hw = (spec.input.height, spec.input.width)
        self.dtype = spec.input.dtype
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def fallback(self) -> dict[str, str] | None:
        """When the provider asked for does not run the model (missing here, or it failed to
        load it): ``{wanted, using, reason}``; None when it runs it, or none was asked for."""
        wanted = self.provider
        active = self.backend.active_providers
        if wanted is None or (active and active[0] == wanted):
            return None
        using = ", ".join(active) or "nothing"
        error = self._provider_error or self.backend.provider_errors.get(wanted)
        reason = error or f"{wanted} is not available here; {self.backend.key} runs on {using}"
        return {"wanted": wanted, "using": using, "reason": reason}

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

    def prepare(
        self, img_bgr: np.ndarray, *, rgb_input: bool = False
    ) -> tuple[np.ndarray, LetterboxInfo]:
        """The model input tensor for one BGR image (RGB with ``rgb_input``: the channels are
        swapped in the tensor, not before), and how the image was placed on it."""
        pre = self.manifest.model.preprocessing
        if pre.resize == "center_crop":
            placed, info = center_crop(img_bgr, self.input_hw)
        else:
            placed, info = letterbox(
                img_bgr, self.input_hw, pre.pad_value, interpolation=pre.interpolation
            )
        tensor = to_tensor(
            placed,
            rgb=(pre.color == "RGB") != rgb_input,
            scale=pre.scale,
            mean=pre.mean,
            std=pre.std,
        )
        return tensor.astype(self.dtype, copy=False), info

    def decode(
        self,
        outputs: list[np.ndarray],
        info: LetterboxInfo,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
    ) -> Detections:
        """Raw model outputs → :class:`Detections`, as the manifest's post-processing says."""
        post = self.manifest.model.postprocessing
        if post.kind == "classify":
            return postprocess_classify(outputs[0], self.class_names)
        common = {
            "conf_threshold": post.conf_threshold if conf is None else conf,
            "iou_threshold": post.iou_threshold if iou is None else iou,
            "max_det": post.max_det if max_det is None else max_det,
            "agnostic": post.agnostic_nms,
            "layout": post.output_layout,
        }
        if post.kind == "yolo_segment":
            mask = post.mask
            return postprocess_segment(
                outputs,
                info,
                self.class_names,
                input_hw=self.input_hw,
                mask_output=mask.output if mask else 1,
                mask_channels=mask.channels if mask else 32,
                mask_threshold=mask.threshold if mask else 0.5,
                **common,  # type: ignore[arg-type]
            )
        if post.kind == "yolo_pose":
            if not post.kpt_shape:
                raise PackageError(
                    "the manifest of a pose package has no postprocessing.kpt_shape; re-export it"
                )
            k, ndim = post.kpt_shape
            return postprocess_pose(
                outputs[0],
                info,
                self.class_names,
                kpt_shape=(k, ndim),
                **common,  # type: ignore[arg-type]
            )
        return postprocess_detect(
            outputs[0],
            info,
            self.class_names,
            box_units=post.box_units,
            input_hw=self.input_hw,
            **common,  # type: ignore[arg-type]
        )

    def predict(
        self,
        img_bgr: np.ndarray,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        decode_ms: float = 0.0,
        rgb_input: bool = False,
        hold: contextlib.AbstractContextManager[Any] | None = None,
    ) -> tuple[Detections, Timing]:
        """Detections for one BGR image (RGB with ``rgb_input``) and the time of each stage.

        ``hold`` (a lock, say) is held around the runtime call only: callers that share this
        predictor across threads serialise its backend, while the decode, the tensor and the
        post-processing of other requests run beside it. The time spent waiting for ``hold``
        is in no stage.
        """
        t0 = time.perf_counter()
        tensor, info = self.prepare(img_bgr, rgb_input=rgb_input)
        prepared = time.perf_counter()
        needs_all = self.manifest.model.postprocessing.kind == "yolo_segment"
        with hold if hold is not None else contextlib.nullcontext():
            t1 = time.perf_counter()
            outputs = self.backend.run_all(tensor) if needs_all else [self.backend.run(tensor)]
            t2 = time.perf_counter()
        dets = self.decode(outputs, info, conf=conf, iou=iou, max_det=max_det)
        t3 = time.perf_counter()
        timing = Timing(decode_ms, (prepared - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return dets, timing

    def predict_bytes(self, data: bytes, **kwargs: Any) -> tuple[Detections, Timing]:
        """One encoded image (JPEG, PNG, ...); ``kwargs`` as for :meth:`predict`."""
        t0 = time.perf_counter()
        img = decode_image(data)
        return self.predict(img, decode_ms=(time.perf_counter() - t0) * 1e3, **kwargs)

    def predict_frame_bytes(
        self, data: bytes, *, channels: str = "bgr", **kwargs: Any
    ) -> tuple[Detections, Timing]:
        """One decoded frame, sent as ``.npy`` bytes (:func:`runtimes.preprocess.decode_frame`)
        with its channels in ``channels`` order (``bgr``, as OpenCV holds frames, or ``rgb``):
        the same detections as :meth:`predict_bytes` of a lossless encoding of it."""
        if channels not in FRAME_CHANNELS:
            raise ValueError(f"channels must be one of {FRAME_CHANNELS}, got {channels!r}")
        t0 = time.perf_counter()
        frame = decode_frame(data)
        decode_ms = (time.perf_counter() - t0) * 1e3
        return self.predict(frame, decode_ms=decode_ms, rgb_input=channels == "rgb", **kwargs)
