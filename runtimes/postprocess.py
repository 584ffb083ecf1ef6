"""Detection post-processing: YOLO output decoding, class-aware NMS, box rescaling.

Matches Ultralytics' ``non_max_suppression`` + ``scale_boxes`` (same thresholds, the
same class offset trick, float32 arithmetic, greedy suppression on IoU > threshold).
"""

from __future__ import annotations

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


def decode_yolo_detect(
    output: np.ndarray,
    *,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
    agnostic: bool = False,
    layout: str = "xywh_classes",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image of raw YOLO output.

    ``layout`` is ``xywh_classes`` for the raw head ``(1, 4 + nc, anchors)`` (NMS needed) or
    ``xyxy_score_class`` for the end-to-end head ``(1, max_det, 6)`` (NMS already applied).

    Returns ``(xyxy, scores, class_ids)`` in model-input pixels.
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
        )
    x = pred.T.astype(np.float32, copy=False)  # (anchors, 4 + nc)
    cls_scores = x[:, 4:]
    conf = cls_scores.max(axis=1)
    keep = conf > conf_threshold
    x, conf = x[keep], conf[keep]
    if not len(x):
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    cls = x[:, 4:].argmax(axis=1)
    boxes = xywh2xyxy(x[:, :4])
    if len(x) > MAX_NMS:
        top = np.argsort(-conf, kind="stable")[:MAX_NMS]
        boxes, conf, cls = boxes[top], conf[top], cls[top]
    offset = np.float32(0) if agnostic else cls.astype(np.float32)[:, None] * np.float32(MAX_WH)
    kept = nms(boxes + offset, conf, iou_threshold)[:max_det]
    return boxes[kept], conf[kept], cls[kept].astype(np.int64)


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
