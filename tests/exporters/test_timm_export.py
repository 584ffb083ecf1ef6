"""timm classifiers export to ONNX, TorchScript and OpenVINO: a real timm model rebuilt from
an Outpost timm checkpoint (``weights_only=True``), its manifest's preprocessing (Pillow
bilinear letterbox, mean/std), and parity against the PyTorch model on validation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporters.base import ExportError, ExportRequest, try_export
from exporters.formats.timm_common import (
    capability_matrix,
    load_timm_checkpoint,
    reference_input,
    reference_probabilities,
)
from exporters.package import build_package
from exporters.registry import default_registry
from exporters.validation import timm_accuracy, validate_package
from runtimes.package import Manifest, PackageReader, Preprocessing
from runtimes.predictor import Predictor
from runtimes.preprocess import _pil_resample_axis, letterbox, read_image, resize_pil_bilinear

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")

IMGSZ = 40
NAMES = ["circle", "square", "stripes"]


def timm_checkpoint(folder: Path, arch: str = "resnet10t", imgsz: int = IMGSZ) -> Path:
    """An Outpost timm checkpoint (the trainer's keys) of a random-weight model whose
    classifier is scaled so its top class changes with the image (seed 1 gives two classes
    over :func:`class_images`)."""
    torch.manual_seed(1)
    model = timm.create_model(arch, pretrained=False, num_classes=len(NAMES))
    with torch.no_grad():
        model.get_classifier().weight.mul_(5)
    cfg = model.pretrained_cfg
    ckpt = {
        "arch": arch,
        "num_classes": len(NAMES),
        "class_names": list(NAMES),
        "imgsz": imgsz,
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "state_dict": model.state_dict(),
        "epoch": 1,
        "optimizer": {},
    }
    path = folder / "best.pt"
    torch.save(ckpt, path)
    return path


def class_images(folder: Path, per_class: int = 2) -> list[Path]:
    """``val/<class>/*.png`` of several sizes and aspect ratios (so the letterbox resizes)."""
    rng = np.random.default_rng(0)
    paths = []
    for c, name in enumerate(NAMES):
        for i in range(per_class):
            h, w = 30 + 17 * i + 5 * c, 70 - 9 * i
            img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
            if name == "circle":
                cv2.circle(img, (w // 2, h // 2), min(h, w) // 3, (40, 200, 240), -1)
            elif name == "square":
                cv2.rectangle(img, (5, 5), (w // 2, h // 2), (230, 60, 60), -1)
            else:
                for x in range(0, w, 6):
                    cv2.line(img, (x, 0), (x, h - 1), (250, 250, 250), 2)
            path = folder / "val" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), img)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("timm")
    return timm_checkpoint(folder), class_images(folder / "data")


@pytest.fixture(scope="module")
def onnx_package(
    run_files: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return export_timm(run_files[0], "onnx", tmp_path_factory.mktemp("timm-onnx"))


def export_timm(
    checkpoint: Path, fmt: str, out: Path, precision: str = "fp32", **options: object
) -> Path:
    artifact = try_export(
        default_registry().get(fmt),
        ExportRequest(checkpoint, "timm", "classify", IMGSZ, out / "build", precision, options),
    )
    package = out / f"timm-{fmt}-{precision}.outpost.zip"
    build_package(
        artifact,
        name="timm-test",
        version="1",
        out_path=package,
        framework="timm",
        task="classify",
        provenance={},
    )
    return package


@pytest.mark.parametrize(
    ("fmt", "precision"),
    [
        ("onnx", "fp32"),
        pytest.param("torchscript", "fp32", marks=pytest.mark.slow),
        pytest.param("openvino", "fp32", marks=pytest.mark.slow),
        pytest.param("openvino", "fp16", marks=pytest.mark.slow),
    ],
)
def test_timm_formats_match_pytorch(
    fmt: str, precision: str, run_files: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    if fmt == "openvino":
        pytest.importorskip("openvino")
    checkpoint, images = run_files
    package = export_timm(checkpoint, fmt, tmp_path, precision)
    with PackageReader(package) as reader:
        manifest = reader.manifest
    pre = manifest.model.preprocessing
    model = load_timm_checkpoint(checkpoint)
    assert (pre.resize, pre.interpolation, pre.pad_value) == ("letterbox", "pil_bilinear", 114)
    assert pre.mean == list(model.mean) and pre.std == list(model.std)
    assert manifest.model.postprocessing.output_layout == "class_probs"
    assert manifest.model.class_names == NAMES
    assert manifest.model.framework == "timm" and manifest.model.architecture == "resnet10t"

    report = validate_package(package, checkpoint, images, precision=precision)
    assert report.passed, report.failures
    assert report.top1_agreement == 1.0 and report.raw_top1_agreement == 1.0
    limit = 1e-4 if precision == "fp32" else 0.05
    assert report.max_prob_deviation is not None and report.max_prob_deviation <= limit
    # The reference really varies with the image, so agreement is not trivial.
    probs = [reference_probabilities(model, reference_input(p, model)) for p in images]
    assert len({int(np.argmax(p)) for p in probs}) > 1

    accuracy = timm_accuracy(package, checkpoint, images)
    assert accuracy["images"] == len(images) and accuracy["export"] == accuracy["pytorch"]


def test_runtime_input_is_the_training_input(
    run_files: tuple[Path, list[Path]], onnx_package: Path
) -> None:
    """The package's preprocessing rebuilds the run's own validation tensor bit for bit."""
    checkpoint, images = run_files
    package = onnx_package
    model = load_timm_checkpoint(checkpoint)
    predictor = Predictor.from_path(package)
    try:
        for image in images:
            ours, _ = predictor.prepare(read_image(image))
            np.testing.assert_array_equal(ours, reference_input(image, model))
    finally:
        predictor.close()


def test_pil_bilinear_resize_matches_pillow() -> None:
    rng = np.random.default_rng(3)
    for h, w, nw, nh in [(37, 91, 40, 16), (120, 45, 15, 40), (20, 20, 40, 40), (64, 33, 64, 17)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = np.asarray(
            Image.fromarray(img[:, :, ::-1]).resize((nw, nh), Image.Resampling.BILINEAR)
        )[:, :, ::-1]
        np.testing.assert_array_equal(resize_pil_bilinear(img, (nw, nh)), expected)
        # The numpy port (used where Pillow is missing) is Pillow's resampler for one axis.
        one_axis = np.asarray(
            Image.fromarray(img[:, :, ::-1]).resize((nw, h), Image.Resampling.BILINEAR)
        )[:, :, ::-1]
        np.testing.assert_array_equal(_pil_resample_axis(img, nw, 1), one_axis)
        placed, info = letterbox(img, (IMGSZ, IMGSZ), interpolation="pil_bilinear")
        assert placed.shape == (IMGSZ, IMGSZ, 3) and info.orig_hw == (h, w)


def test_preprocessing_new_fields_are_optional() -> None:
    """Packages without the fields still load; packages that do not use them do not write them."""
    assert Preprocessing.model_validate({"resize": "letterbox"}).mean is None
    dumped = Preprocessing().model_dump(mode="json")
    assert not {"mean", "std", "interpolation"} & set(dumped)
    timm_pre = Preprocessing(mean=[0.5, 0.5, 0.5], std=[0.25] * 3, interpolation="pil_bilinear")
    assert Preprocessing.model_validate(timm_pre.model_dump(mode="json")) == timm_pre


def test_capabilities_list_timm_classify_only() -> None:
    caps = {c.key: c for c in default_registry().capabilities()}
    for key in ("onnx", "torchscript", "openvino"):
        pairs = {(p["framework"], p["task"]) for p in capability_matrix(caps[key])}
        assert ("timm", "classify") in pairs and ("ultralytics", "detect") in pairs
        assert not {("timm", t) for t in ("detect", "segment", "pose")} & pairs


def test_timm_detect_is_refused_before_any_file(
    run_files: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    checkpoint, _ = run_files
    out = tmp_path / "build"
    with pytest.raises(ExportError, match="timm models supports classify only, not detect"):
        try_export(
            default_registry().get("onnx"),
            ExportRequest(checkpoint, "timm", "detect", IMGSZ, out),
        )
    assert not out.exists()


class Payload:
    """A class whose unpickling would run code."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this ran",))


@pytest.mark.parametrize("kind", ["code", "corrupt", "not_timm"])
def test_bad_checkpoints_fail_with_one_line(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    if kind == "code":
        torch.save({"arch": "resnet10t", "payload": Payload()}, path)
        match = "holds code, not only tensors"
    elif kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 not a checkpoint")
        match = "is not a readable PyTorch checkpoint"
    else:
        torch.save({"state_dict": {}}, path)
        match = "is not an Outpost timm checkpoint \\(no 'arch'\\)"
    with pytest.raises(ExportError, match=match) as info:
        try_export(
            default_registry().get("onnx"),
            ExportRequest(path, "timm", "classify", IMGSZ, tmp_path / "build"),
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "build" / "model.onnx").exists()


def test_checkpoint_of_another_architecture_size_is_refused(tmp_path: Path) -> None:
    path = timm_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["num_classes"], ckpt["class_names"] = 2, ["a", "b"]
    torch.save(ckpt, path)
    with pytest.raises(ExportError, match="does not fit resnet10t"):
        load_timm_checkpoint(path)


def test_manifest_round_trips_through_the_reader(onnx_package: Path) -> None:
    with PackageReader(onnx_package) as reader:
        raw = reader.manifest.to_json()
    assert Manifest.parse(raw.encode()).model.preprocessing.interpolation == "pil_bilinear"
    assert "alternates" not in raw  # a single-format package writes no alternates key


@pytest.mark.slow
def test_timm_openvino_int8_is_calibrated_and_within_tolerance(
    run_files: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    checkpoint, images = run_files
    package = export_timm(
        checkpoint, "openvino", tmp_path, "int8", calibration_images=[str(p) for p in images]
    )
    with PackageReader(package) as reader:
        details = reader.manifest.format.details
    assert details["quantized"] == "int8" and details["calibration_images"] == len(images)
    report = validate_package(package, checkpoint, images, precision="int8")
    assert report.passed, report.failures
    assert report.max_prob_deviation is not None and report.max_prob_deviation <= 0.15


def test_timm_int8_without_calibration_images_is_refused(
    run_files: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out = tmp_path / "build"
    with pytest.raises(ExportError, match="needs calibration images"):
        try_export(
            default_registry().get("openvino"),
            ExportRequest(run_files[0], "timm", "classify", IMGSZ, out, "int8"),
        )
    assert not out.exists()
