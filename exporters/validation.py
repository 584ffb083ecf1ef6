"""Export validation: the exported package, run by its runtime, against the PyTorch model.

Both sides see the same validation images at the same input size and thresholds, with the
same square letterbox (Ultralytics' ``rect=False``), so any difference is the export's.
Detections are matched one-to-one by class and IoU; the report holds the matched-detection
ratio, the largest box and score deviation among matched pairs, and whether they are within
the tolerance set for the export's precision. Per task it adds: the largest keypoint
deviation (pose, px on the original image), the mean and lowest mask IoU of matched pairs
(segment, masks at the original image size), and for a classifier the top-1 agreement and
the largest class-probability deviation (classify has no boxes).

:func:`measure_latency` times the package through its runtime (p50/p90, warm-up excluded).
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.base import ExportError
from runtimes.detections import Detections
from runtimes.latency import benchmark
from runtimes.offline import apply_offline_env
from runtimes.predictor import Predictor
from runtimes.preprocess import read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MATCH_IOU = 0.9
# Detections are compared at the highest threshold of the ladder at which the PyTorch model
# gives enough boxes (the operating point for a trained model). Below 0.05 a barely trained
# model gives hundreds of near-tied boxes whose NMS order flips on the last float bit, so
# there the detection numbers are recorded but not decisive; the raw output comparison
# (every anchor's box and class scores, before thresholds and NMS) always is.
CONF_LADDER = (0.25, 0.05)
RAW_TOP_K = 100  # anchors per image whose raw boxes are compared
# ... of which only those the lowest threshold of the ladder could keep (a trained model's
# background anchors, scored ~0.01, may wander far in int8 and never become a detection);
# when none reach it (a barely trained model) all top-k anchors are compared.
RAW_MIN_SCORE = min(CONF_LADDER)
DEFAULT_IOU = 0.7
MAX_IMAGES = 16


@dataclass(frozen=True)
class Tolerance:
    """The most an export of one precision may differ from the PyTorch model."""

    min_match_ratio: float  # matched detections; for classify, top-1 agreement
    max_box_px: float  # boxes, and keypoints (pose)
    max_score: float  # detection scores; for classify, class probabilities
    min_mask_iou: float  # segment: mean IoU of matched pairs' masks
    max_map_drop: float  # mAP50-95 (classify: top-1 accuracy) lost against the PyTorch model


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(0.95, 2.0, 0.02, min_mask_iou=0.90, max_map_drop=0.01),
    "fp16": Tolerance(0.90, 4.0, 0.05, min_mask_iou=0.85, max_map_drop=0.02),
    "int8": Tolerance(0.70, 12.0, 0.15, min_mask_iou=0.60, max_map_drop=0.05),
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
    task: str = "detect"
    max_keypoint_deviation_px: float | None = None
    raw_max_keypoint_deviation_px: float | None = None
    mean_mask_iou: float | None = None
    min_mask_iou: float | None = None
    top1_agreement: float | None = None
    raw_top1_agreement: float | None = None
    max_prob_deviation: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_report(
    precision: str,
    runtime: str,
    images: int,
    numbers: dict[str, Any],
    tolerance: dict[str, float],
    failures: list[str],
    *,
    seconds: float,
    note: str,
    iou: float = 0.0,
) -> ParityReport:
    """A classifier's parity report: ``numbers`` from :func:`compare_classification` (its
    ``tolerance`` already taken out), the detection fields left neutral."""
    numbers = dict(numbers)
    return ParityReport(
        precision=precision,
        runtime=runtime,
        images=images,
        conf=0.0,
        iou=iou,
        reference_detections=0,
        export_detections=0,
        matched=0,
        match_ratio=1.0,
        max_box_deviation_px=0.0,
        max_score_deviation=0.0,
        detections_decisive=False,
        raw_max_box_deviation_px=None,
        raw_max_score_deviation=numbers.pop("raw_max_score_deviation", None),
        tolerance=tolerance,
        passed=not failures,
        failures=failures,
        seconds=seconds,
        task="classify",
        notes=[note],
        **numbers,
    )


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
    kpt_dev, ious = _task_deviations(pairs_of_results)
    failures = []
    if decisive:
        if ratio < tol.min_match_ratio:
            failures.append(f"matched {ratio:.3f} of detections < {tol.min_match_ratio}")
        if box_dev > tol.max_box_px:
            failures.append(f"box deviation {box_dev:.2f} px > {tol.max_box_px}")
        if score_dev > tol.max_score:
            failures.append(f"score deviation {score_dev:.4f} > {tol.max_score}")
        if kpt_dev is not None and kpt_dev > tol.max_box_px:
            failures.append(f"keypoint deviation {kpt_dev:.2f} px > {tol.max_box_px}")
        if ious and float(np.mean(ious)) < tol.min_mask_iou:
            failures.append(f"mean mask IoU {float(np.mean(ious)):.3f} < {tol.min_mask_iou}")
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
        "max_keypoint_deviation_px": None if kpt_dev is None else round(kpt_dev, 4),
        "mean_mask_iou": round(float(np.mean(ious)), 4) if ious else None,
        "min_mask_iou": round(float(np.min(ious)), 4) if ious else None,
    }
    return numbers, failures


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of one size (1.0 when both are empty)."""
    union = int(np.logical_or(a, b).sum())
    return int(np.logical_and(a, b).sum()) / union if union else 1.0


def _task_deviations(
    pairs_of_results: list[tuple[Detections, Detections]],
) -> tuple[float | None, list[float]]:
    """Largest keypoint ``x, y`` deviation (px) and every mask IoU over matched pairs."""
    kpt_dev: float | None = None
    ious: list[float] = []
    for reference, candidate in pairs_of_results:
        pairs = match_detections(reference, candidate)
        if reference.keypoints is not None and candidate.keypoints is not None:
            for r, c in pairs:
                d = float(
                    np.abs(reference.keypoints[r, :, :2] - candidate.keypoints[c, :, :2]).max()
                )
                kpt_dev = d if kpt_dev is None else max(kpt_dev, d)
            kpt_dev = 0.0 if kpt_dev is None else kpt_dev
        if reference.masks is not None and candidate.masks is not None:
            ious.extend(mask_iou(reference.masks[r], candidate.masks[c]) for r, c in pairs)
    return kpt_dev, ious


def compare_classification(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    precision: str,
    *,
    raw: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Per-image ``(reference, export)`` class probabilities → top-1 agreement, the largest
    probability deviation, and the tolerance failures.

    ``raw`` holds the same comparison on one shared input tensor (the export alone); the
    end-to-end pairs include the runtime's own resize, so they decide only the top-1
    agreement, while the raw pairs decide both numbers.
    """
    tol = TOLERANCES.get(precision, TOLERANCES["fp32"])

    def agreement(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
        if not items:
            return 1.0, 0.0
        same = sum(int(np.argmax(a) == np.argmax(b)) for a, b in items)
        dev = max(
            float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) for a, b in items
        )
        return same / len(items), dev

    top1, dev = agreement(pairs)
    failures = []
    if top1 < tol.min_match_ratio:
        failures.append(f"top-1 agreement {top1:.3f} < {tol.min_match_ratio}")
    numbers: dict[str, Any] = {
        "top1_agreement": round(top1, 4),
        "max_prob_deviation": round(dev, 6),
        "tolerance": asdict(tol),
    }
    if raw is not None:
        raw_top1, raw_dev = agreement(raw)
        numbers["raw_top1_agreement"] = round(raw_top1, 4)
        numbers["raw_max_score_deviation"] = round(raw_dev, 6)
        if raw_top1 < tol.min_match_ratio:
            failures.append(f"raw top-1 agreement {raw_top1:.3f} < {tol.min_match_ratio}")
        if raw_dev > tol.max_score:
            failures.append(f"raw probability deviation {raw_dev:.4f} > {tol.max_score}")
    return numbers, failures


def _above(dets: Detections, conf: float) -> Detections:
    keep = dets.confidence > conf
    return Detections(
        dets.xyxy[keep],
        dets.confidence[keep],
        dets.class_id[keep],
        dets.class_names,
        masks=None if dets.masks is None else dets.masks[keep],
        keypoints=None if dets.keypoints is None else dets.keypoints[keep],
    )


def _pick_conf(results: list[tuple[Detections, Detections]], n_images: int) -> tuple[float, bool]:
    """The threshold to compare detections at, and whether there are enough to decide on."""
    enough = max(5, n_images)
    for conf in CONF_LADDER:
        if sum(int((r.confidence > conf).sum()) for r, _ in results) >= enough:
            return conf, True
    return CONF_LADDER[-1], False


def _raw_deviation(
    reference: np.ndarray,
    candidate: np.ndarray,
    top_k: int = RAW_TOP_K,
    *,
    nc: int | None = None,
    kpt_shape: tuple[int, int] | None = None,
) -> tuple[float, float, float | None]:
    """Max |Δ| of the raw head ``(1, 4 + nc + extra, anchors)``: class scores over every anchor,
    boxes (input px) over the ``top_k`` anchors the PyTorch model scores highest, less those no
    threshold of the ladder would keep (the boxes that can become detections; an anchor no
    threshold would keep may wander a few pixels in fp16 and far in int8),
    and for pose the keypoints' ``x, y`` (input px) over the same anchors."""
    ref = reference.reshape(reference.shape[-2], -1).astype(np.float64)
    cand = candidate.reshape(candidate.shape[-2], -1).astype(np.float64)
    if ref.shape != cand.shape:
        raise ExportError(
            f"the export's output shape {candidate.shape} differs from the PyTorch model's {reference.shape}"
        )
    end = 4 + nc if nc is not None else ref.shape[0]
    diff = np.abs(ref - cand)
    scores = ref[4:end].max(axis=0)
    top = np.argsort(-scores, kind="stable")[:top_k]
    kept = top[scores[top] >= RAW_MIN_SCORE]
    top = kept if kept.size else top
    kpt_dev = None
    if kpt_shape is not None:
        k, ndim = kpt_shape
        kpts = diff[end : end + k * ndim, top].reshape(k, ndim, -1)
        kpt_dev = float(kpts[:, :2].max()) if kpts.size else 0.0
    return float(diff[:4, top].max()), float(diff[4:end].max()), kpt_dev


def reference_detections(result: Any, task: str, class_names: tuple[str, ...]) -> Detections:
    """An Ultralytics ``Results`` as :class:`Detections` (masks scaled to the original image
    with Ultralytics' own ``scale_masks``, keypoints as Ultralytics gives them)."""
    boxes = result.boxes
    masks = keypoints = None
    if task == "segment":
        h0, w0 = result.orig_shape
        if result.masks is None or not len(boxes):
            masks = np.zeros((0, h0, w0), bool)
        else:
            from ultralytics.utils.ops import scale_masks

            data = result.masks.data.float()
            masks = scale_masks(data[None], (h0, w0))[0].numpy() > 0.5
    if task == "pose":
        kp = result.keypoints
        keypoints = (
            np.zeros((0, 0, 3), np.float32) if kp is None else kp.data.numpy().astype(np.float32)
        )
    return Detections(
        boxes.xyxy.numpy().astype(np.float32),
        boxes.conf.numpy().astype(np.float32),
        boxes.cls.numpy().astype(np.int64),
        class_names,
        masks=masks,
        keypoints=keypoints,
    )


def _first_tensor(out: Any) -> Any:
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out


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
    format_key: str | None = None,
) -> ParityReport:
    """Run ``package`` with its runtime and the PyTorch ``checkpoint`` on ``images``; compare.

    ``format_key`` picks one format of a multi-format package (default: its primary one). A
    timm package is compared with its checkpoint by :func:`validate_timm_package`.
    """
    if not images:
        raise ExportError(
            "no validation images to check the export against; the run's data folder is missing"
        )
    if _framework_of(package) == "timm":
        return validate_timm_package(
            package, checkpoint, images, precision=precision, runtime=runtime, format_key=format_key
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
    predictor = Predictor.from_path(package, runtime=runtime, format_key=format_key)
    threads = torch.get_num_threads()
    spec = predictor.manifest.model
    task = spec.task
    post = spec.postprocessing
    kpt_shape = (post.kpt_shape[0], post.kpt_shape[1]) if post.kpt_shape else None
    try:
        imgsz = predictor.input_hw[0]
        reference_model: Any = YOLO(str(checkpoint), task=task)
        raw_layout = post.output_layout in ("xywh_classes", "class_probs")
        raw_dev = (0.0, 0.0)
        raw_kpt: float | None = None
        results: list[tuple[Detections, Detections]] = []
        probs: list[tuple[np.ndarray, np.ndarray]] = []
        raw_probs: list[tuple[np.ndarray, np.ndarray]] = []
        for image in images:
            img = read_image(image)
            ours, _ = predictor.predict(img, conf=low, iou=iou)
            theirs = reference_model.predict(
                img, imgsz=imgsz, conf=low, iou=iou, rect=False, device="cpu", verbose=False
            )[0]
            tensor, _ = predictor.prepare(img)
            if raw_layout:
                with torch.inference_mode():
                    theirs_raw = _first_tensor(reference_model.model(torch.from_numpy(tensor)))
                ours_raw = predictor.backend.run(tensor)
            if task == "classify":
                assert ours.probs is not None
                probs.append((theirs.probs.data.numpy().astype(np.float32), ours.probs))
                raw_probs.append((theirs_raw.float().numpy().reshape(-1), ours_raw.reshape(-1)))
                continue
            results.append((reference_detections(theirs, task, predictor.class_names), ours))
            if raw_layout:
                box_d, score_d, kpt_d = _raw_deviation(
                    theirs_raw.float().numpy(),
                    ours_raw,
                    nc=len(predictor.class_names),
                    kpt_shape=kpt_shape if task == "pose" else None,
                )
                raw_dev = (max(raw_dev[0], box_d), max(raw_dev[1], score_d))
                if kpt_d is not None:
                    raw_kpt = max(raw_kpt or 0.0, kpt_d)
        runtime_key = predictor.backend.key
    finally:
        predictor.close()
        torch.set_num_threads(threads)  # a TorchScript runtime sets it process-wide
    if task == "classify":
        numbers, failures = compare_classification(probs, precision, raw=raw_probs)
        tol = numbers.pop("tolerance")
        return classification_report(
            precision,
            runtime_key,
            len(images),
            numbers,
            tol,
            failures,
            seconds=round(time.perf_counter() - t0, 3),
            iou=iou,
            note="classify: the runtime resizes with OpenCV where Ultralytics uses PIL, so "
            "end-to-end probabilities differ by the resize; the raw numbers (one shared "
            "input tensor) measure the export itself",
        )
    chosen, decisive = (conf, True) if conf is not None else _pick_conf(results, len(images))
    results = [(_above(r, chosen), _above(c, chosen)) for r, c in results]
    numbers, failures = compare(
        results, precision, decisive=decisive, raw=raw_dev if raw_layout else None
    )
    if raw_kpt is not None and raw_kpt > TOLERANCES.get(precision, TOLERANCES["fp32"]).max_box_px:
        failures.append(f"raw keypoint deviation {raw_kpt:.2f} px > the box tolerance")
    return ParityReport(
        precision=precision,
        runtime=runtime_key,
        images=len(images),
        conf=chosen,
        iou=iou,
        passed=not failures,
        failures=failures,
        seconds=round(time.perf_counter() - t0, 3),
        task=task,
        raw_max_keypoint_deviation_px=None if raw_kpt is None else round(raw_kpt, 4),
        **numbers,
    )


def measure_latency(
    package: Path,
    image: Path | None = None,
    *,
    runs: int = 30,
    warmup: int = 5,
    runtime: str | None = None,
    format_key: str | None = None,
) -> dict[str, Any]:
    """p50/p90 (ms) of one full prediction (preprocess, inference, postprocess) through the
    package's runtime on this machine; the warm-up runs are not counted."""
    predictor = Predictor.from_path(package, runtime=runtime, format_key=format_key)
    try:
        h, w = predictor.input_hw
        img = read_image(image) if image is not None else np.full((h, w, 3), 114, np.uint8)
        stats = benchmark(lambda: predictor.predict(img), warmup=warmup, runs=runs)
        runtime_key = predictor.backend.key
    finally:
        predictor.close()
    return {
        "p50_ms": stats["p50"],
        "p90_ms": stats["p90"],
        "runs": runs,
        "warmup": warmup,
        "runtime": runtime_key,
        "machine": platform.platform(terse=True)
        + f" {platform.machine()} {platform.processor()}".rstrip(),
    }


def _framework_of(package: Path) -> str:
    """The ``model.framework`` of a package zip or extracted folder."""
    from runtimes.package import PackageReader, read_manifest_dir

    path = Path(package)
    if path.is_dir():
        return read_manifest_dir(path).model.framework
    with PackageReader(path) as reader:
        return reader.manifest.model.framework


def validate_timm_package(
    package: Path,
    checkpoint: Path,
    images: list[Path],
    *,
    precision: str,
    runtime: str | None = None,
    format_key: str | None = None,
) -> ParityReport:
    """A timm package against its PyTorch checkpoint on ``images``.

    End to end: the package's runtime on the decoded image (the manifest's preprocessing)
    against the PyTorch model on the input the run's own validation builds (Pillow decode,
    resize and letterbox, mean/std); both the top-1 agreement and the largest
    class-probability deviation decide. Raw: the export alone on that same reference tensor.
    """
    from exporters.formats.timm_common import (
        load_timm_checkpoint,
        reference_input,
        reference_probabilities,
    )

    if not images:
        raise ExportError(
            "no validation images to check the export against; the run's data folder is missing"
        )
    t0 = time.perf_counter()
    model = load_timm_checkpoint(checkpoint)
    import torch

    threads = torch.get_num_threads()
    predictor = Predictor.from_path(package, runtime=runtime, format_key=format_key)
    probs: list[tuple[np.ndarray, np.ndarray]] = []
    raw: list[tuple[np.ndarray, np.ndarray]] = []
    try:
        for image in images:
            ours, _ = predictor.predict(read_image(image))
            tensor = reference_input(image, model)
            theirs = reference_probabilities(model, tensor)
            assert ours.probs is not None
            probs.append((theirs, ours.probs))
            raw_out = predictor.backend.run(tensor.astype(predictor.dtype, copy=False))
            raw.append((theirs, np.asarray(raw_out, np.float32).reshape(-1)))
        runtime_key = predictor.backend.key
    finally:
        predictor.close()
        torch.set_num_threads(threads)
    numbers, failures = compare_classification(probs, precision, raw=raw)
    tol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    if numbers["max_prob_deviation"] > tol.max_score:
        failures.append(
            f"probability deviation {numbers['max_prob_deviation']:.4f} > {tol.max_score}"
        )
    numbers.pop("tolerance")
    return classification_report(
        precision,
        runtime_key,
        len(images),
        numbers,
        asdict(tol),
        failures,
        seconds=round(time.perf_counter() - t0, 3),
        note="timm: the runtime's preprocessing (Pillow-bilinear letterbox, mean/std) is the "
        "run's own, so the end-to-end probabilities decide as well as the raw ones",
    )


def timm_accuracy(
    package: Path,
    checkpoint: Path,
    images: list[Path],
    *,
    runtime: str | None = None,
    format_key: str | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy of a timm package and of its PyTorch checkpoint on labelled images
    (``<split>/<class>/image``: the parent folder names the class)."""
    from exporters.formats.timm_common import (
        load_timm_checkpoint,
        reference_input,
        reference_probabilities,
    )

    if not images:
        return {"images": 0, "note": "no validation images"}
    model = load_timm_checkpoint(checkpoint)
    import torch

    threads = torch.get_num_threads()
    predictor = Predictor.from_path(package, runtime=runtime, format_key=format_key)
    ours = theirs = 0
    try:
        for image in images:
            label = (
                model.class_names.index(image.parent.name)
                if image.parent.name in model.class_names
                else -1
            )
            dets, _ = predictor.predict(read_image(image))
            assert dets.probs is not None
            ours += int(int(np.argmax(dets.probs)) == label)
            ref = reference_probabilities(model, reference_input(image, model))
            theirs += int(int(np.argmax(ref)) == label)
    finally:
        predictor.close()
        torch.set_num_threads(threads)
    return {
        "images": len(images),
        "metric": "top1",
        "export": round(ours / len(images), 4),
        "pytorch": round(theirs / len(images), 4),
    }
