"""Image preprocessing: decode and letterbox, matching Ultralytics' LetterBox exactly.

A letterbox resizes with OpenCV's bilinear filter by default; ``interpolation="pil_bilinear"``
resizes as Pillow's ``Image.resize(..., BILINEAR)`` does, bit for bit (the antialiased
filter and 8-bit fixed-point arithmetic of its resampler), for models trained on images
Pillow resized (timm runs). :func:`to_tensor` optionally normalises with a per-channel
mean and std after scaling.
"""

from __future__ import annotations

import functools
import io
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtimes.errors import ImageDecodeError
from runtimes.image_header import image_header_size

MAX_IMAGE_PIXELS = 100_000_000
NPY_CONTENT_TYPE = "application/x-npy"  # a decoded frame: NumPy's .npy bytes (np.save)
NPY_MAGIC = b"\x93NUMPY"
FRAME_CHANNELS = ("bgr", "rgb")  # the channel orders a decoded frame may come in
PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was placed on the model input: per-axis gain and the top-left padding."""

    orig_hw: tuple[int, int]
    gain_xy: tuple[float, float]
    pad_xy: tuple[int, int]


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 array, or raise ImageDecodeError.

    The size is read from the header first (:func:`runtimes.image_header.image_header_size`):
    an image over ``max_pixels``, or bytes that are not a PNG, JPEG, GIF, BMP, WebP or TIFF
    with a readable header, are refused before the decoder allocates anything. (A JPEG of a
    few hundred bytes whose header claims 30000 x 30000 pixels would otherwise cost gigabytes
    of memory and seconds of CPU to decode, then be refused.)
    """
    if not data:
        raise ImageDecodeError("the image is empty; send a JPEG or PNG file")
    size = image_header_size(data)
    if size is None:
        raise ImageDecodeError(
            "the image could not be decoded (not a JPEG, PNG, GIF, BMP, WebP or TIFF file, or "
            "its header is cut short); send a valid JPEG or PNG file"
        )
    _check_pixels(*size, max_pixels)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError("the image could not be decoded; send a valid JPEG or PNG file")
    _check_pixels(img.shape[1], img.shape[0], max_pixels)
    return img


def decode_frame(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A decoded frame sent as NumPy ``.npy`` bytes → an ``HxWx3`` uint8 array, its channels in
    the order they were sent (the caller knows which), or raise ImageDecodeError.

    For a camera pipeline that already holds decoded pixels: nothing is encoded on the sender
    nor decoded here, and the pixels are the sender's own (no JPEG loss). The array must be
    uint8, ``HxW`` (grey), ``HxWx1``, ``HxWx3`` or ``HxWx4`` (the fourth channel, alpha, is
    dropped, as :func:`decode_image` drops a PNG's); the body must hold exactly the header's
    pixels. Only the header is parsed (NumPy's own reader, no pickles); a C-ordered
    three-channel frame is used in place, without a copy.
    """
    if not data.startswith(NPY_MAGIC):
        raise ImageDecodeError(
            "the frame is not NumPy .npy bytes (np.save of a uint8 HxWx3 array); send one, or "
            "send JPEG/PNG bytes with another Content-Type"
        )
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unknown .npy format version {version}")
    except (ValueError, SyntaxError, TypeError, tokenize.TokenError):  # numpy's parser
        raise ImageDecodeError(
            "the frame's .npy header does not parse; send the bytes np.save writes for a "
            "uint8 height x width x 3 array"
        ) from None
    channels = _frame_channels(dtype, shape)
    height, width = shape[:2]
    _check_pixels(width, height, max_pixels)
    offset = stream.tell()
    count = height * width * channels
    if len(data) - offset != count:
        raise ImageDecodeError(
            f"the frame holds {len(data) - offset} bytes of pixels where its header says "
            f"{tuple(shape)} ({count} bytes); send the whole np.save output"
        )
    pixels = np.frombuffer(data, np.uint8, count, offset)
    if fortran:
        frame = np.ascontiguousarray(pixels.reshape(tuple(shape)[::-1]).T)
    else:
        frame = pixels.reshape(shape)
    if channels == 1:
        return cv2.cvtColor(frame.reshape(height, width), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)  # the first three, in their order
    return frame


def _frame_channels(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """How many channels a frame of ``dtype`` and ``shape`` has, or ImageDecodeError when it
    is not uint8 ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4``."""
    if dtype != np.uint8:
        raise ImageDecodeError(
            f"the frame's pixels are {dtype}, not uint8; send 0-255 pixels as uint8"
        )
    channels = 1 if len(shape) == 2 else shape[-1] if len(shape) == 3 else 0
    if channels not in (1, 3, 4) or min(shape) < 1:
        raise ImageDecodeError(
            f"the frame's shape is {tuple(shape)}; send height x width x 3 pixels (or x 1, "
            "x 4, or height x width for grey)"
        )
    return int(channels)


def encode_frame(frame: np.ndarray) -> bytes:
    """A decoded uint8 frame as ``.npy`` bytes (``np.save``, no pickles): what
    :func:`decode_frame` reads. Raises ImageDecodeError for a frame it would refuse."""
    _frame_channels(frame.dtype, frame.shape)
    if not (frame.flags.c_contiguous or frame.flags.f_contiguous):
        frame = np.ascontiguousarray(frame)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(frame))
    fortran = frame.flags.f_contiguous and not frame.flags.c_contiguous  # as the header says
    pixels = frame.T if fortran else frame  # C-contiguous either way: the bytes as they lie
    # one copy (np.save into a BytesIO takes about 1 ms more for a 640x640 frame)
    return b"".join((header.getvalue(), pixels.data))


def encode_frame_png(frame: np.ndarray, channels: str = "bgr") -> bytes:
    """A decoded uint8 frame (its colour channels in ``channels`` order) as PNG bytes: lossless,
    so :func:`decode_image` gives back its pixels in BGR order (alpha dropped)."""
    count = _frame_channels(frame.dtype, frame.shape)
    if channels not in FRAME_CHANNELS:
        raise ValueError(f"channels must be one of {FRAME_CHANNELS}, got {channels!r}")
    if channels == "rgb" and count in (3, 4):
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR if count == 3 else cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV encodes every uint8 frame checked above
        raise ImageDecodeError("the frame could not be encoded as PNG")
    return encoded.tobytes()


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"the image is {width}x{height} pixels, over the {max_pixels / 1e6:g}-megapixel "
            "limit; resize it first"
        )


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


def _pil_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear resampling weights for one axis: the first input index of each output
    pixel ``(out,)`` and the fixed-point weights ``(out, k)`` (zero beyond each pixel's span)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.int64)
    one = 1 << PIL_PRECISION_BITS
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        x = np.arange(xmax, dtype=np.float64)
        w = np.clip(1.0 - np.abs((x + xmin - center + 0.5) / filterscale), 0.0, None)
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one))
        starts[xx] = xmin
        weights[xx, :xmax] = fixed.astype(np.int64)
    return starts, weights


def _pil_resample_axis(img: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One pass of Pillow's 8-bit bilinear resampler along ``axis`` (0: rows, 1: columns)."""
    in_size = img.shape[axis]
    starts, weights = _pil_coefficients(in_size, out_size)
    src = np.moveaxis(img, axis, 0).astype(np.int64)
    acc = np.full((out_size, *src.shape[1:]), 1 << (PIL_PRECISION_BITS - 1), np.int64)
    extra = (1,) * (src.ndim - 1)
    for k in range(weights.shape[1]):
        index = np.minimum(starts + k, in_size - 1)
        acc += src[index] * weights[:, k].reshape(out_size, *extra)
    out = np.clip(acc >> PIL_PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def resize_pil_bilinear(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 ``HxWxC`` image to ``size_wh`` as Pillow's ``Image.resize(size,
    BILINEAR)`` does: with Pillow itself when it is installed (bit-exact), else with a numpy
    port of its resampler (each single-axis pass is bit-exact; Pillow picks the order of the
    two passes itself, so a two-axis resize may differ from it by one level on some pixels).
    """
    width, height = size_wh
    if img.ndim == 3 and img.shape[2] == 3:
        try:
            from PIL import Image
        except ImportError:
            pass
        else:
            rgb = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
            resized = rgb.resize((width, height), Image.Resampling.BILINEAR)
            return np.ascontiguousarray(np.asarray(resized)[:, :, ::-1])
    out = img
    if height / img.shape[0] < width / img.shape[1]:  # the stronger reduction first
        if out.shape[0] != height:
            out = _pil_resample_axis(out, height, 0)
        if out.shape[1] != width:
            out = _pil_resample_axis(out, width, 1)
        return out
    if out.shape[1] != width:
        out = _pil_resample_axis(out, width, 1)
    if out.shape[0] != height:
        out = _pil_resample_axis(out, height, 0)
    return out


def letterbox(
    img: np.ndarray,
    new_hw: tuple[int, int],
    pad_value: int = 114,
    *,
    interpolation: str | None = None,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio and pad to ``new_hw``, centred (Ultralytics semantics).

    ``interpolation``: None or ``linear`` (OpenCV's bilinear, as Ultralytics) or
    ``pil_bilinear`` (Pillow's, see :func:`resize_pil_bilinear`).
    """
    h0, w0 = img.shape[:2]
    nh, nw = new_hw
    r = min(nh / h0, nw / w0)
    unpad_w, unpad_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = (nw - unpad_w) / 2, (nh - unpad_h) / 2
    if (w0, h0) != (unpad_w, unpad_h):
        if interpolation == "pil_bilinear":
            img = resize_pil_bilinear(img, (unpad_w, unpad_h))
        else:
            img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    if top or bottom or left or right:  # else the image already fills the input: no copy
        img = cv2.copyMakeBorder(
            img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3
        )
    info = LetterboxInfo(orig_hw=(h0, w0), gain_xy=(unpad_w / w0, unpad_h / h0), pad_xy=(left, top))
    return img, info


@functools.lru_cache(maxsize=8)
def _quotients(divisor: int) -> np.ndarray:
    """Every uint8 value divided by ``divisor`` in float32, as a 256-entry lookup table."""
    table = np.arange(256, dtype=np.float32) / np.float32(divisor)
    table.flags.writeable = False
    return table


def to_tensor(
    img_bgr: np.ndarray,
    *,
    rgb: bool = True,
    scale: float = 1 / 255.0,
    dtype: str = "float32",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """HWC BGR uint8 → NCHW float tensor (RGB by default), scaled, then ``(x - mean) / std``
    per channel (in the tensor's channel order) when ``mean``/``std`` are given."""
    divisor = 1.0 / scale
    whole = abs(divisor - round(divisor)) < 1e-6
    if whole and img_bgr.ndim == 3 and img_bgr.dtype == np.uint8:
        # Split the planes (OpenCV), then look each byte up in a table of its 256 quotients,
        # straight into the tensor: the same float32s as converting first and dividing after
        # (the table holds those very divisions), in about a third of the time.
        channels = img_bgr.shape[2]
        planes = (
            cv2.split(img_bgr)
            if channels in (3, 4)
            else [np.ascontiguousarray(img_bgr[:, :, c]) for c in range(channels)]
        )
        out = np.empty((1, channels, *img_bgr.shape[:2]), np.float32)
        table = _quotients(round(divisor))
        for c in range(channels):
            cv2.LUT(planes[channels - 1 - c if rgb else c], table, dst=out[0, c])
    else:
        chw = img_bgr[:, :, ::-1].transpose(2, 0, 1) if rgb else img_bgr.transpose(2, 0, 1)
        out = np.ascontiguousarray(chw[None], dtype=np.float32)
        if whole:
            out /= np.float32(round(divisor))  # bit-identical to Ultralytics' ``div_(255)``
        else:
            out *= np.float32(scale)
    if mean is not None:
        out -= np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    if std is not None:
        out /= np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return out.astype(dtype, copy=False)
