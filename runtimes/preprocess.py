"""Image preprocessing: decode and letterbox, matching Ultralytics' LetterBox exactly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtimes.errors import ImageDecodeError

MAX_IMAGE_PIXELS = 100_000_000


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was placed on the model input: per-axis gain and the top-left padding."""

    orig_hw: tuple[int, int]
    gain_xy: tuple[float, float]
    pad_xy: tuple[int, int]


def decode_image(data: bytes) -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 array, or raise ImageDecodeError."""
    if not data:
        raise ImageDecodeError("the image is empty; send a JPEG or PNG file")
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError("the image could not be decoded; send a valid JPEG or PNG file")
    if img.shape[0] * img.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"the image is larger than {MAX_IMAGE_PIXELS} pixels; resize it first"
        )
    return img


def read_image(path: Path) -> np.ndarray:
    """Read an image file as BGR uint8 (cv2.imread semantics), or raise ImageDecodeError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return decode_image(data)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from None


def letterbox(
    img: np.ndarray, new_hw: tuple[int, int], pad_value: int = 114
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio and pad to ``new_hw``, centred (Ultralytics semantics)."""
    h0, w0 = img.shape[:2]
    nh, nw = new_hw
    r = min(nh / h0, nw / w0)
    unpad_w, unpad_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = (nw - unpad_w) / 2, (nh - unpad_h) / 2
    if (w0, h0) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(
        img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3
    )
    info = LetterboxInfo(orig_hw=(h0, w0), gain_xy=(unpad_w / w0, unpad_h / h0), pad_xy=(left, top))
    return img, info


def to_tensor(
    img_bgr: np.ndarray, *, rgb: bool = True, scale: float = 1 / 255.0, dtype: str = "float32"
) -> np.ndarray:
    """HWC BGR uint8 → NCHW float tensor (RGB by default), scaled."""
    chw = img_bgr[:, :, ::-1].transpose(2, 0, 1) if rgb else img_bgr.transpose(2, 0, 1)
    out = np.ascontiguousarray(chw[None], dtype=np.float32)
    divisor = 1.0 / scale
    if abs(divisor - round(divisor)) < 1e-6:
        out /= np.float32(round(divisor))  # bit-identical to Ultralytics' ``div_(255)``
    else:
        out *= np.float32(scale)
    return out.astype(dtype, copy=False)
