"""Multi-format packages and the runtime wrappers generated into every package.

- a package holding ONNX and OpenVINO of one model: manifest ``format`` + ``alternates``,
  each with its own parity, and ``outpost predict --runtime openvino`` running the IR;
- the standalone Python client, run isolated from the repository (``-I``, no ``site``
  processing, only site-packages on the path), against ``outpost predict`` on the same image;
- the C++ client compiled with CMake against OpenVINO's C++ API and OpenCV, run the same way;
- the Swift and Kotlin clients carry the manifest's constants.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from desktop_app import cli
from exporters.base import ExportError, ExportRequest, try_export
from exporters.package import build_package
from exporters.registry import default_registry
from exporters.validation import validate_package
from exporters.wrappers import CPP, KOTLIN, PYTHON, SWIFT, export_wrappers, generate_wrappers
from runtimes.errors import OutpostError
from runtimes.package import PackageReader
from runtimes.predictor import Predictor
from tests.exporters.test_timm_export import NAMES, class_images, timm_checkpoint

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
cv2 = pytest.importorskip("cv2")

IMGSZ = 64
TIMM_IMGSZ = 40
WRAPPER_FILES = {
    PYTHON,
    CPP,
    "wrappers/cpp/CMakeLists.txt",
    SWIFT,
    KOTLIN,
    "wrappers/README.md",
}
# Runs a script as __main__ with only site-packages on the path: no ``.pth`` processing (so no
# editable install of this repository), no script folder, no user site, no PYTHON* variables.
BOOT = (
    "import runpy, sys; sys.path[:0] = [sys.argv.pop(1)]; "
    "script = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_path(script, run_name='__main__')"
)


def isolated(script: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    site = sysconfig.get_paths()["purelib"]
    cmd = [sys.executable, "-I", "-S", "-c", BOOT, site, str(script), *args]
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=script.parent, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def detect_checkpoint(folder: Path, config_dir: Path) -> Path:
    """A random-weight YOLO11n detector whose boxes vary with the image (as the task tests)."""
    from runtimes.offline import apply_offline_env

    apply_offline_env(config_dir)
    from ultralytics import YOLO  # type: ignore[attr-defined]

    torch.manual_seed(0)
    model: Any = YOLO("yolo11n.yaml")
    head = model.model.model[-1]
    with torch.no_grad():
        for module in model.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0.0, 0.5)
        for branch in head.cv3:
            branch[-1].bias.fill_(1.0)
    path = folder / "detect.pt"
    model.save(str(path))
    return path


def scene(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(img, (w // 6, h // 5), (w // 2, h // 2), (255, 255, 255), -1)
    cv2.circle(img, (3 * w // 4, 2 * h // 3), min(h, w) // 6, (20, 40, 220), -1)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture(scope="module")
def detect_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """An ONNX detection package, its extracted folder, and two test images."""
    folder = tmp_path_factory.mktemp("det")
    config_dir = folder / "cfg"
    checkpoint = detect_checkpoint(folder, config_dir)
    artifact = try_export(
        default_registry().get("onnx"),
        ExportRequest(
            checkpoint,
            "ultralytics",
            "detect",
            IMGSZ,
            folder / "build",
            options={"config_dir": str(config_dir)},
        ),
    )
    package = folder / "det.outpost.zip"
    build_package(
        artifact,
        name="det",
        version="1",
        out_path=package,
        framework="ultralytics",
        task="detect",
        provenance={},
    )
    with PackageReader(package) as reader:
        reader.extract(folder / "pkg")
    images = [scene(folder / "a.png", 48, 80, 0), scene(folder / "b.png", 90, 70, 1)]
    return package, folder / "pkg", images


def outpost_predict(
    package: Path, image: Path, capfd: pytest.CaptureFixture[str], *extra: str
) -> Any:
    assert cli.main(["predict", str(package), str(image), "--json", *extra]) == 0
    return json.loads(capfd.readouterr().out)


def boxes_of(detections: list[dict[str, Any]]) -> list[tuple[int, list[float]]]:
    return [(d["class_id"], d["xyxy"]) for d in detections]


def assert_same_boxes(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], px: float) -> None:
    assert len(ours) == len(theirs) > 0
    for (ca, a), (cb, b) in zip(boxes_of(ours), boxes_of(theirs), strict=True):
        assert ca == cb
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= px


def test_package_lists_every_wrapper(detect_package: tuple[Path, Path, list[Path]]) -> None:
    package, folder, _ = detect_package
    with PackageReader(package) as reader:
        reader.verify()
        assert WRAPPER_FILES <= set(reader.manifest.files)
    assert all((folder / name).is_file() for name in WRAPPER_FILES)


def test_python_wrapper_matches_outpost_predict(
    detect_package: tuple[Path, Path, list[Path]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    package, folder, images = detect_package
    script = folder / PYTHON
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, importlib.util as u\n"
        "print(json.dumps([u.find_spec(m) is not None for m in ('numpy', 'runtimes', 'exporters')]))\n"
    )
    assert isolated(probe) == [True, False, False]  # numpy yes, this repository no
    for image in images:
        ours = outpost_predict(package, image, capfd)["results"][0]["detections"]
        theirs = isolated(script, str(image))["results"][0]["detections"]
        assert_same_boxes(ours, theirs, 1e-3)
        for a, b in zip(ours, theirs, strict=True):
            assert abs(a["confidence"] - b["confidence"]) <= 1e-5


def test_python_wrapper_without_opencv(detect_package: tuple[Path, Path, list[Path]]) -> None:
    """Without OpenCV the client reads the PNG itself and resizes with numpy; the detections
    stay the same to within a pixel."""
    package, folder, images = detect_package
    env = {**os.environ, "OUTPOST_WRAPPER_NO_OPENCV": "1"}
    predictor = Predictor.from_path(package)
    try:
        for image in images:
            dets, _ = predictor.predict(cv2.imread(str(image)))
            theirs = isolated(folder / PYTHON, str(image), env=env)["results"][0]["detections"]
            assert_same_boxes(dets.to_list(), theirs, 1.0)
    finally:
        predictor.close()


def _cpp_toolchain() -> tuple[str, str] | str:
    """(cmake, OpenVINO's CMake folder), or the exact reason the C++ test cannot run here."""
    for tool in ("g++", "cmake"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install g++ cmake)"
    try:
        import openvino
    except ImportError:
        return "openvino is not installed (pip install 'outpost[openvino]'): the C++ client uses its C++ API"
    ov_cmake = Path(openvino.__file__).parent / "cmake"
    if not (ov_cmake / "OpenVINOConfig.cmake").is_file():
        return f"the openvino wheel has no CMake package at {ov_cmake}"
    if not any(
        Path(p, "opencv4/opencv2/imgcodecs.hpp").is_file()
        for p in ("/usr/include", "/usr/local/include")
    ):
        return "OpenCV headers are missing (apt-get install libopencv-imgcodecs-dev libopencv-imgproc-dev)"
    return (str(shutil.which("cmake")), str(ov_cmake))


@pytest.mark.slow
def test_cpp_wrapper_compiles_and_matches_outpost_predict(
    detect_package: tuple[Path, Path, list[Path]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    toolchain = _cpp_toolchain()
    if isinstance(toolchain, str):
        pytest.skip(toolchain)
    cmake, ov_cmake = toolchain
    package, folder, images = detect_package
    build = tmp_path / "build"
    for cmd in (
        [cmake, "-S", str(folder / "wrappers/cpp"), "-B", str(build), f"-DOpenVINO_DIR={ov_cmake}"],
        [cmake, "--build", str(build)],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with PackageReader(package) as reader:
        model_file = folder / reader.manifest.format.file
    for image in images:
        ours = outpost_predict(package, image, capfd)["results"][0]["detections"]
        run = subprocess.run(
            [str(build / "outpost_predict"), str(model_file), str(image)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        theirs = json.loads(run.stdout)["detections"]
        assert_same_boxes(ours, theirs, 1.0)


def test_swift_and_kotlin_carry_the_manifest_constants(
    detect_package: tuple[Path, Path, list[Path]],
) -> None:
    package, _, _ = detect_package
    with PackageReader(package) as reader:
        manifest = reader.manifest
    files = generate_wrappers(manifest)
    names = manifest.model.class_names
    swift, kotlin, cpp = files[SWIFT], files[KOTLIN], files[CPP]
    post = manifest.model.postprocessing
    assert f"classNames: [String] = {json.dumps(names)}" in swift
    assert f"inputWidth = {IMGSZ}" in swift and f"inputHeight = {IMGSZ}" in swift
    assert f"confThreshold: Float = {post.conf_threshold!r}" in swift
    assert f"iouThreshold: Float = {post.iou_threshold!r}" in swift
    assert f"val CLASS_NAMES = listOf({', '.join(json.dumps(n) for n in names)})" in kotlin
    assert (
        f"INPUT_WIDTH = {IMGSZ}" in kotlin
        and f"CONF_THRESHOLD = {post.conf_threshold!r}f" in kotlin
    )
    assert f"constexpr int kInputW = {IMGSZ};" in cpp and "constexpr bool kEnd2End = false;" in cpp
    readme = files["wrappers/README.md"]
    assert "cannot be compiled on this machine" in readme


def test_exports_wrappers_command(
    detect_package: tuple[Path, Path, list[Path]], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    package, folder, _ = detect_package
    out = tmp_path / "clients"
    assert cli.main(["exports", "wrappers", str(package), "--out", str(out), "--json"]) == 0
    written = json.loads(capfd.readouterr().out)
    assert set(written) == WRAPPER_FILES
    for name in WRAPPER_FILES:
        assert (out / name).read_text() == (folder / name).read_text()
    with pytest.raises(OutpostError, match="already exists"):
        export_wrappers(package, out)


# --- multi-format packages ---------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """A timm classifier packaged as ONNX + OpenVINO in one package, each format validated."""
    pytest.importorskip("openvino")
    pytest.importorskip("timm")
    folder = tmp_path_factory.mktemp("bundle")
    checkpoint = timm_checkpoint(folder, imgsz=TIMM_IMGSZ)
    images = class_images(folder / "data")
    parts = []
    for fmt in ("onnx", "openvino"):
        artifact = try_export(
            default_registry().get(fmt),
            ExportRequest(checkpoint, "timm", "classify", TIMM_IMGSZ, folder / f"build-{fmt}"),
        )
        single = folder / f"{fmt}.outpost.zip"
        args = {"name": "bundle", "version": "1", "framework": "timm", "task": "classify"}
        build_package(artifact, out_path=single, provenance={}, wrappers=False, **args)
        report = validate_package(single, checkpoint, images, precision="fp32")
        parts.append((artifact, report.as_dict()))
    package = folder / "bundle.outpost.zip"
    build_package(
        parts[0][0],
        validation=parts[0][1],
        alternates=parts[1:],
        out_path=package,
        provenance={},
        **args,
    )
    return package, checkpoint, images


def test_bundle_manifest_holds_every_format(timm_bundle: tuple[Path, Path, list[Path]]) -> None:
    package, checkpoint, images = timm_bundle
    with PackageReader(package) as reader:
        reader.verify()
        manifest = reader.manifest
    assert manifest.format.key == "onnx" and [a.key for a in manifest.alternates] == ["openvino"]
    assert manifest.format.file == "onnx/model.onnx"
    assert manifest.format_for("openvino").file == "openvino/model.xml"
    assert {"onnx/model.onnx", "openvino/model.xml", "openvino/model.bin"} <= set(manifest.files)
    for spec in manifest.all_formats():
        validation = spec.details["validation"]
        assert validation["passed"] and validation["top1_agreement"] == 1.0
        assert validation["runtime"] == spec.runtime
    for key in ("onnx", "openvino"):
        report = validate_package(package, checkpoint, images, precision="fp32", format_key=key)
        assert (
            report.passed and report.runtime == {"onnx": "onnxruntime", "openvino": "openvino"}[key]
        )


def test_predict_runtime_picks_the_matching_format(
    timm_bundle: tuple[Path, Path, list[Path]], capfd: pytest.CaptureFixture[str]
) -> None:
    package, _, images = timm_bundle
    import argparse

    args = argparse.Namespace(package=package, runtime="openvino", format=None)
    assert cli._predict_format(args) == "openvino"
    args.runtime = "onnxruntime"
    assert cli._predict_format(args) == "onnx"
    via_ov = outpost_predict(package, images[0], capfd, "--runtime", "openvino")
    via_ort = outpost_predict(package, images[0], capfd)
    assert via_ov["runtime"] == "openvino" and via_ort["runtime"] == "onnxruntime"
    top_ov = via_ov["results"][0]["classification"]
    top_ort = via_ort["results"][0]["classification"]
    assert [c["class_id"] for c in top_ov] == [c["class_id"] for c in top_ort]
    assert (
        max(abs(a["confidence"] - b["confidence"]) for a, b in zip(top_ov, top_ort, strict=True))
        < 1e-4
    )
    predictor = Predictor.from_path(package, format_key="openvino")
    try:
        assert predictor.format.file == "openvino/model.xml"
    finally:
        predictor.close()


def test_python_wrapper_runs_a_timm_classifier(
    timm_bundle: tuple[Path, Path, list[Path]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    package, _, images = timm_bundle
    with PackageReader(package) as reader:
        folder = reader.extract(tmp_path / "pkg")
    for image in images[:3]:
        ours = outpost_predict(package, image, capfd)["results"][0]["classification"]
        theirs = isolated(folder / PYTHON, str(image))["results"][0]["classification"]
        assert [c["class_name"] for c in ours] == [c["class_name"] for c in theirs]
        assert [c["class_name"] for c in theirs][0] in NAMES
        assert (
            max(abs(a["confidence"] - b["confidence"]) for a, b in zip(ours, theirs, strict=True))
            < 1e-5
        )


def test_a_format_twice_in_one_package_is_refused(
    timm_bundle: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    _, checkpoint, _ = timm_bundle
    artifact = try_export(
        default_registry().get("onnx"),
        ExportRequest(checkpoint, "timm", "classify", TIMM_IMGSZ, tmp_path / "build"),
    )
    out = tmp_path / "twice.outpost.zip"
    with pytest.raises(ExportError, match="onnx is asked for twice"):
        build_package(
            artifact,
            name="x",
            version="1",
            out_path=out,
            framework="timm",
            task="classify",
            provenance={},
            alternates=[(artifact, None)],
        )
    assert not out.exists()
