"""Post-processing for every task: YOLO output decoding, class-aware NMS, box rescaling,
segmentation masks, pose keypoints and classification probabilities.

Matches Ultralytics' ``non_max_suppression`` + ``scale_boxes`` (same thresholds, the
same class offset trick, float32 arithmetic, greedy suppression on IoU > threshold), its
``process_mask`` (prototypes × coefficients, bilinear upsampling to the input, binarised,
cropped to the box) + ``scale_masks`` (letterbox padding removed, bilinear to the original
image), and its ``scale_coords`` for keypoints.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtimes.detections import Detections
from runtimes.preprocess import LetterboxInfo

MAX_WH = 7680  # class offset for batched NMS, as Ultralytics
MAX_NMS = 30000  # candidates kept before NMS


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on ``(N, 4)`` xyxy float32 boxes; returns kept indices by descending score."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    boxes = boxes.astype(np.float32, copy=False)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    thr = np.float32(iou_threshold)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > thr)]
    return np.asarray(keep, np.int64)


def xywh2xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh)
    half_w = xywh[:, 2] / 2
    half_h = xywh[:, 3] / 2
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def scale_boxes(xyxy: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Model-input pixels → original-image pixels, clipped to the image."""
    pad_x, pad_y = info.pad_xy
    gain_x, gain_y = info.gain_xy
    out = xyxy.copy()
    out[:, [0, 2]] -= pad_x
    out[:, [1, 3]] -= pad_y
    out[:, [0, 2]] /= gain_x
    out[:, [1, 3]] /= gain_y
    h0, w0 = info.orig_hw
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w0)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h0)
    return out


def decode_yolo(
    output: np.ndarray,
    *,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
    agnostic: bool = False,
    layout: str = "xywh_classes",
    extra: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image of raw YOLO output whose rows end in ``extra`` task columns.

    ``layout`` is ``xywh_classes`` for the raw head ``(1, 4 + nc + extra, anchors)`` (NMS
    needed) or ``xyxy_score_class`` for the end-to-end head ``(1, max_det, 6 + extra)`` (NMS
    already applied). The extra columns are 32 mask coefficients for segment and
    ``keypoints × (2|3)`` values (model-input pixels) for pose.

    Returns ``(xyxy, scores, class_ids, extra columns)`` in model-input pixels.
    """
    pred = np.asarray(output)
    if pred.ndim == 3:
        pred = pred[0]
    if pred.ndim != 2:
        raise ValueError(f"unexpected detection output shape {output.shape}")
    if layout == "xyxy_score_class":
        rows = pred[pred[:, 4] > conf_threshold][:max_det]
        return (
            rows[:, :4].astype(np.float32),
            rows[:, 4].astype(np.float32),
            rows[:, 5].astype(np.int64),
            rows[:, 6 : 6 + extra].astype(np.float32),
        )
    x = pred.T.astype(np.float32, copy=False)  # (anchors, 4 + nc + extra)
    end = x.shape[1] - extra
    if end <= 4:
        raise ValueError(
            f"detection output {output.shape} has no class columns beside {extra} extra"
        )
    conf = x[:, 4:end].max(axis=1)
    keep = conf > conf_threshold
    x, conf = x[keep], conf[keep]
    if not len(x):
        return (
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0, extra), np.float32),
        )
    cls = x[:, 4:end].argmax(axis=1)
    boxes = xywh2xyxy(x[:, :4])
    tail = x[:, end:]
    if len(x) > MAX_NMS:
        top = np.argsort(-conf, kind="stable")[:MAX_NMS]
        boxes, conf, cls, tail = boxes[top], conf[top], cls[top], tail[top]
    offset = np.float32(0) if agnostic else cls.astype(np.float32)[:, None] * np.float32(MAX_WH)
    kept = nms(boxes + offset, conf, iou_threshold)[:max_det]
    return boxes[kept], conf[kept], cls[kept].astype(np.int64), tail[kept]


def decode_yolo_detect(
    output: np.ndarray,
    *,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
    agnostic: bool = False,
    layout: str = "xywh_classes",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image of raw YOLO detection output (see :func:`decode_yolo`).

    Returns ``(xyxy, scores, class_ids)`` in model-input pixels.
    """
    boxes, scores, cls, _ = decode_yolo(
        output,
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        max_det=max_det,
        agnostic=agnostic,
        layout=layout,
    )
    return boxes, scores, cls


def postprocess_detect(
    output: np.ndarray,
    info: LetterboxInfo,
    class_names: tuple[str, ...],
    *,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
    agnostic: bool = False,
    layout: str = "xywh_classes",
    box_units: str = "pixels",
    input_hw: tuple[int, int] | None = None,
) -> Detections:
    boxes, scores, cls = decode_yolo_detect(
        output,
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        max_det=max_det,
        agnostic=agnostic,
        layout=layout,
    )
    if box_units == "normalized" and input_hw is not None:
        boxes = boxes * np.array([input_hw[1], input_hw[0], input_hw[1], input_hw[0]], np.float32)
    return Detections(scale_boxes(boxes, info), scores, cls, class_names)


def _bilinear(plane: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(mode="bilinear", align_corners=False)`` of one float32 plane."""
    if plane.shape == hw:
        return plane
    return np.asarray(
        cv2.resize(plane, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR), dtype=np.float32
    )


def crop_to_boxes(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Zero every mask outside its ``xyxy`` box (pixel centres ``x1 <= c < x2``), as Ultralytics."""
    n, h, w = masks.shape
    cols = np.arange(w, dtype=np.float32)[None, None, :]
    rows = np.arange(h, dtype=np.float32)[None, :, None]
    x1, y1, x2, y2 = (boxes[:, i][:, None, None] for i in range(4))
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    cropped: np.ndarray = masks * inside.astype(masks.dtype)
    return cropped


def process_masks(
    protos: np.ndarray,
    coefficients: np.ndarray,
    boxes: np.ndarray,
    input_hw: tuple[int, int],
) -> np.ndarray:
    """Ultralytics ``process_mask(upsample=True)``: ``(N, H, W)`` uint8 masks at the model input.

    Args:
        protos: ``(C, mh, mw)`` prototypes (batch dimension already dropped).
        coefficients: ``(N, C)`` mask coefficients of the kept detections.
        boxes: ``(N, 4)`` xyxy boxes in model-input pixels.
        input_hw: the model input size.
    """
    c, mh, mw = protos.shape
    if not len(coefficients):
        return np.zeros((0, *input_hw), np.uint8)
    planes = (coefficients.astype(np.float32) @ protos.astype(np.float32).reshape(c, -1)).reshape(
        -1, mh, mw
    )
    up = np.stack([_bilinear(p, input_hw) for p in planes])
    return crop_to_boxes((up > 0).astype(np.uint8), boxes)


def scale_masks(masks: np.ndarray, info: LetterboxInfo, threshold: float = 0.5) -> np.ndarray:
    """Model-input masks → ``(N, H0, W0)`` bool masks on the original image (Ultralytics
    ``scale_masks``: the letterbox padding is cut off, the rest resized bilinearly as
    ``F.interpolate(align_corners=False)``, then thresholded).

    Each mask is resized only where its pixels can reach: the output rows and columns whose
    two source taps touch the mask's nonzero box (everywhere else the bilinear value is 0).
    The rest of the array stays as ``np.zeros`` left it, so a 12-megapixel photo's masks cost
    the area of their boxes, not N full-size planes. (A mask whose box covers over a third of
    the image is resized whole by OpenCV, faster at that size.)
    """
    h0, w0 = info.orig_hw
    out = np.zeros((len(masks), h0, w0), bool)
    if not len(masks):
        return out
    left, top = info.pad_xy
    bottom = top + max(round(h0 * info.gain_xy[1]), 1)
    right = left + max(round(w0 * info.gain_xy[0]), 1)
    content = masks[:, top:bottom, left:right]
    if content.shape[1:] == (h0, w0):
        return np.asarray(content > threshold)
    rows_i0, rows_i1, rows_w = _bilinear_taps(content.shape[1], h0)
    cols_i0, cols_i1, cols_w = _bilinear_taps(content.shape[2], w0)
    for k, mask in enumerate(content):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not rows.size:
            continue
        ys = _reach(rows_i0, rows_i1, rows[0], rows[-1])
        xs = _reach(cols_i0, cols_i1, cols[0], cols[-1])
        plane = mask.astype(np.float32)
        if 3 * (ys.stop - ys.start) * (xs.stop - xs.start) > h0 * w0:
            out[k] = _bilinear(plane, (h0, w0)) > threshold  # OpenCV's resize is faster there
            continue
        wx = cols_w[xs]
        across = plane[:, cols_i0[xs]] * (1 - wx) + plane[:, cols_i1[xs]] * wx
        wy = rows_w[ys][:, None]
        values = across[rows_i0[ys]] * (1 - wy) + across[rows_i1[ys]] * wy
        out[k, ys, xs] = values > threshold
    return out


def _bilinear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index of a bilinear resize (``align_corners=False``, as
    ``F.interpolate`` and OpenCV's ``INTER_LINEAR``): its two source indices and the second's
    weight (float32)."""
    scale = np.float32(size_in / size_out)
    src = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _reach(i0: np.ndarray, i1: np.ndarray, first: int, last: int) -> slice:
    """The output indices whose taps ``i0``/``i1`` touch source indices ``first..last``."""
    hit = np.flatnonzero((i0 <= last) & (i1 >= first))
    return slice(int(hit[0]), int(hit[-1]) + 1)


def scale_keypoints(keypoints: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """``(N, K, 2|3)`` keypoints, model-input pixels → original-image pixels, clipped."""
    out = keypoints.astype(np.float32, copy=True)
    pad_x, pad_y = info.pad_xy
    gain_x, gain_y = info.gain_xy
    h0, w0 = info.orig_hw
    out[..., 0] = ((out[..., 0] - pad_x) / gain_x).clip(0, w0)
    out[..., 1] = ((out[..., 1] - pad_y) / gain_y).clip(0, h0)
    return out


def postprocess_segment(
    outputs: list[np.ndarray],
    info: LetterboxInfo,
    class_names: tuple[str, ...],
    *,
    input_hw: tuple[int, int],
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
    agnostic: bool = False,
    layout: str = "xywh_classes",
    mask_output: int = 1,
    mask_channels: int = 32,
    mask_threshold: float = 0.5,
) -> Detections:
    """Boxes and per-detection masks of a YOLO segmentation head (detections + prototypes).

    As Ultralytics, a detection whose mask is empty at the model input is dropped.
    """
    if len(outputs) <= mask_output:
        raise ValueError(
            f"a segmentation model needs its prototype output #{mask_output}; got {len(outputs)} outputs"
        )
    boxes, scores, cls, coeffs = decode_yolo(
        outputs[0],
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        max_det=max_det,
        agnostic=agnostic,
        layout=layout,
        extra=mask_channels,
    )
    protos = np.asarray(outputs[mask_output])
    if protos.ndim == 4:
        protos = protos[0]
    masks = process_masks(protos, coeffs, boxes, input_hw)
    keep = masks.reshape(len(masks), -1).max(axis=1) > 0 if len(masks) else np.zeros(0, bool)
    boxes, scores, cls, masks = boxes[keep], scores[keep], cls[keep], masks[keep]
    return Detections(
        scale_boxes(boxes, info),
        scores,
        cls,
        class_names,
        masks=scale_masks(masks, info, mask_threshold),
    )


def postprocess_pose(
    output: np.ndarray,
    info: LetterboxInfo,
    class_names: tuple[str, ...],
    *,
    kpt_shape: tuple[int, int],
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
    agnostic: bool = False,
    layout: str = "xywh_classes",
) -> Detections:
    """Boxes and ``(N, K, 2|3)`` keypoints of a YOLO pose head, in original-image pixels."""
    k, ndim = kpt_shape
    boxes, scores, cls, kpts = decode_yolo(
        output,
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        max_det=max_det,
        agnostic=agnostic,
        layout=layout,
        extra=k * ndim,
    )
    return Detections(
        scale_boxes(boxes, info),
        scores,
        cls,
        class_names,
        keypoints=scale_keypoints(kpts.reshape(-1, k, ndim), info),
    )


def postprocess_classify(output: np.ndarray, class_names: tuple[str, ...]) -> Detections:
    """Class probabilities of a classification head (``(1, C)``, already softmaxed by the
    export; a row that does not sum to 1 is softmaxed here)."""
    probs = np.asarray(output, dtype=np.float32).reshape(-1)
    if probs.size != len(class_names):
        raise ValueError(
            f"classification output has {probs.size} values for {len(class_names)} classes"
        )
    if np.any(probs < 0) or abs(float(probs.sum()) - 1.0) > 1e-3:
        shifted = np.exp(probs - probs.max())
        probs = (shifted / shifted.sum()).astype(np.float32)
    empty = Detections.empty(class_names)
    return Detections(empty.xyxy, empty.confidence, empty.class_id, class_names, probs=probs)
