"""Export validation: the exported package, run by its runtime, against the PyTorch model.

Both sides see the same validation images at the same input size and thresholds, with the
same square letterbox (Ultralytics' ``rect=False``), so any difference is the export's.
Detections are matched one-to-one by class and IoU; the report holds the matched-detection
ratio, the largest box and score deviation among matched pairs, and whether they are within
the tolerance set for the export's precision.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.base import ExportError
from runtimes.detections import Detections
from runtimes.offline import apply_offline_env
from runtimes.predictor import Predictor
from runtimes.preprocess import letterbox, read_image, to_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MATCH_IOU = 0.9
# Detections are compared at the highest threshold of the ladder at which the PyTorch model
# gives enough boxes (the operating point for a trained model). Below 0.05 a barely trained
# model gives hundreds of near-tied boxes whose NMS order flips on the last float bit, so
# there the detection numbers are recorded but not decisive; the raw output comparison
# (every anchor's box and class scores, before thresholds and NMS) always is.
CONF_LADDER = (0.25, 0.05)
RAW_TOP_K = 100  # anchors per image whose raw boxes are compared
DEFAULT_IOU = 0.7
MAX_IMAGES = 16


@dataclass(frozen=True)
class Tolerance:
    """The most an export of one precision may differ from the PyTorch model."""

    min_match_ratio: float
    max_box_px: float
    max_score: float


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(min_match_ratio=0.95, max_box_px=2.0, max_score=0.02),
    "fp16": Tolerance(min_match_ratio=0.90, max_box_px=4.0, max_score=0.05),
    "int8": Tolerance(min_match_ratio=0.70, max_box_px=12.0, max_score=0.15),
}


def validation_images(folder: Path, limit: int = MAX_IMAGES) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def match_detections(
    reference: Detections, candidate: Detections, iou_threshold: float = MATCH_IOU
) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs ``(reference index, candidate index)``: same class, IoU ≥ threshold."""
    if not len(reference) or not len(candidate):
        return []
    iou = _iou_matrix(reference.xyxy.astype(np.float64), candidate.xyxy.astype(np.float64))
    iou[reference.class_id[:, None] != candidate.class_id[None, :]] = 0.0
    pairs: list[tuple[int, int]] = []
    used_r: set[int] = set()
    used_c: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] < iou_threshold:
            break
        if r in used_r or c in used_c:
            continue
        pairs.append((r, c))
        used_r.add(r)
        used_c.add(c)
    return pairs


@dataclass
class ParityReport:
    precision: str
    runtime: str
    images: int
    conf: float
    iou: float
    reference_detections: int
    export_detections: int
    matched: int
    match_ratio: float
    max_box_deviation_px: float
    max_score_deviation: float
    detections_decisive: bool
    raw_max_box_deviation_px: float | None
    raw_max_score_deviation: float | None
    tolerance: dict[str, float]
    passed: bool
    failures: list[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    pairs_of_results: list[tuple[Detections, Detections]],
    precision: str,
    *,
    decisive: bool = True,
    raw: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Aggregate per-image (reference, export) detections, and the raw output deviations
    ``(box px, score)`` when known, into the parity numbers and the tolerance failures."""
    tol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    n_ref = n_exp = matched = 0
    box_dev = score_dev = 0.0
    for reference, candidate in pairs_of_results:
        n_ref += len(reference)
        n_exp += len(candidate)
        pairs = match_detections(reference, candidate)
        matched += len(pairs)
        for r, c in pairs:
            box_dev = max(box_dev, float(np.abs(reference.xyxy[r] - candidate.xyxy[c]).max()))
            score_dev = max(
                score_dev, abs(float(reference.confidence[r]) - float(candidate.confidence[c]))
            )
    ratio = matched / max(n_ref, n_exp) if max(n_ref, n_exp) else 1.0
    failures = []
    if decisive:
        if ratio < tol.min_match_ratio:
            failures.append(f"matched {ratio:.3f} of detections < {tol.min_match_ratio}")
        if box_dev > tol.max_box_px:
            failures.append(f"box deviation {box_dev:.2f} px > {tol.max_box_px}")
        if score_dev > tol.max_score:
            failures.append(f"score deviation {score_dev:.4f} > {tol.max_score}")
    if raw is not None:
        if raw[0] > tol.max_box_px:
            failures.append(f"raw box deviation {raw[0]:.2f} px > {tol.max_box_px}")
        if raw[1] > tol.max_score:
            failures.append(f"raw score deviation {raw[1]:.4f} > {tol.max_score}")
    numbers = {
        "reference_detections": n_ref,
        "export_detections": n_exp,
        "matched": matched,
        "match_ratio": round(ratio, 4),
        "max_box_deviation_px": round(box_dev, 4),
        "max_score_deviation": round(score_dev, 6),
        "detections_decisive": decisive,
        "raw_max_box_deviation_px": None if raw is None else round(raw[0], 4),
        "raw_max_score_deviation": None if raw is None else round(raw[1], 6),
        "tolerance": asdict(tol),
    }
    return numbers, failures


def _above(dets: Detections, conf: float) -> Detections:
    keep = dets.confidence > conf
    return Detections(dets.xyxy[keep], dets.confidence[keep], dets.class_id[keep], dets.class_names)


def _pick_conf(results: list[tuple[Detections, Detections]], n_images: int) -> tuple[float, bool]:
    """The threshold to compare detections at, and whether there are enough to decide on."""
    enough = max(5, n_images)
    for conf in CONF_LADDER:
        if sum(int((r.confidence > conf).sum()) for r, _ in results) >= enough:
            return conf, True
    return CONF_LADDER[-1], False


def _raw_deviation(
    reference: np.ndarray, candidate: np.ndarray, top_k: int = RAW_TOP_K
) -> tuple[float, float]:
    """Max |Δ| of the raw head ``(1, 4 + nc, anchors)``: class scores over every anchor, boxes
    (input px) over the ``top_k`` anchors the PyTorch model scores highest (the boxes that can
    become detections; an anchor no threshold would keep may wander a few pixels in fp16)."""
    ref = reference.reshape(reference.shape[-2], -1).astype(np.float64)
    cand = candidate.reshape(candidate.shape[-2], -1).astype(np.float64)
    if ref.shape != cand.shape:
        raise ExportError(
            f"the export's output shape {candidate.shape} differs from the PyTorch model's {reference.shape}"
        )
    diff = np.abs(ref - cand)
    top = np.argsort(-ref[4:].max(axis=0), kind="stable")[:top_k]
    return float(diff[:4, top].max()), float(diff[4:].max())


def validate_package(
    package: Path,
    checkpoint: Path,
    images: list[Path],
    *,
    precision: str,
    runtime: str | None = None,
    conf: float | None = None,
    iou: float = DEFAULT_IOU,
    config_dir: Path | None = None,
) -> ParityReport:
    """Run ``package`` with its runtime and the PyTorch ``checkpoint`` on ``images``; compare."""
    if not images:
        raise ExportError(
            "no validation images to check the export against; the run's data folder is missing"
        )
    if config_dir is not None:
        apply_offline_env(config_dir)  # before Ultralytics is imported
    try:
        import torch
        from ultralytics import YOLO  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ExportError(
            f"export validation needs {exc.name}; pip install 'outpost[export]'"
        ) from None
    t0 = time.perf_counter()
    low = conf if conf is not None else CONF_LADDER[-1]
    predictor = Predictor.from_path(package, runtime=runtime)
    threads = torch.get_num_threads()
    try:
        imgsz = predictor.input_hw[0]
        reference_model: Any = YOLO(str(checkpoint), task="detect")
        spec = predictor.manifest.model
        raw_layout = spec.postprocessing.output_layout == "xywh_classes"
        raw_dev = (0.0, 0.0)
        results = []
        for image in images:
            img = read_image(image)
            ours, _ = predictor.predict(img, conf=low, iou=iou)
            theirs = reference_model.predict(
                img, imgsz=imgsz, conf=low, iou=iou, rect=False, device="cpu", verbose=False
            )[0].boxes
            reference = Detections(
                theirs.xyxy.numpy().astype(np.float32),
                theirs.conf.numpy().astype(np.float32),
                theirs.cls.numpy().astype(np.int64),
                predictor.class_names,
            )
            results.append((reference, ours))
            if raw_layout:
                padded, _ = letterbox(img, predictor.input_hw, spec.preprocessing.pad_value)
                tensor = to_tensor(
                    padded,
                    rgb=spec.preprocessing.color == "RGB",
                    scale=spec.preprocessing.scale,
                    dtype=predictor.dtype,
                )
                with torch.inference_mode():
                    theirs_raw = reference_model.model(torch.from_numpy(tensor))
                while isinstance(theirs_raw, (list, tuple)):
                    theirs_raw = theirs_raw[0]
                box_d, score_d = _raw_deviation(
                    theirs_raw.float().numpy(), predictor.backend.run(tensor)
                )
                raw_dev = (max(raw_dev[0], box_d), max(raw_dev[1], score_d))
        runtime_key = predictor.backend.key
    finally:
        predictor.close()
        torch.set_num_threads(threads)  # a TorchScript runtime sets it process-wide
    chosen, decisive = (conf, True) if conf is not None else _pick_conf(results, len(images))
    results = [(_above(r, chosen), _above(c, chosen)) for r, c in results]
    numbers, failures = compare(
        results, precision, decisive=decisive, raw=raw_dev if raw_layout else None
    )
    return ParityReport(
        precision=precision,
        runtime=runtime_key,
        images=len(images),
        conf=chosen,
        iou=iou,
        passed=not failures,
        failures=failures,
        seconds=round(time.perf_counter() - t0, 3),
        **numbers,
    )
