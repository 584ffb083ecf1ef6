"""Runtime wrappers generated for each package: small standalone clients, one per language,
whose constants (class names, input size, preprocessing, thresholds) come from the manifest.

``build_package`` writes them into every package under ``wrappers/`` (listed in the
manifest's ``files`` like any other file); ``outpost export wrappers PKG --out DIR`` writes
them for an existing package.

- ``wrappers/python/outpost_predict.py``: numpy + the runtime (onnxruntime or openvino), no
  Outpost import; the same letterbox, decoding and NMS as ``outpost predict``.
- ``wrappers/cpp/main.cpp`` + ``CMakeLists.txt``: OpenVINO's C++ API (it reads the ONNX or
  OpenVINO IR file; its headers and CMake package ship in the ``openvino`` wheel) and OpenCV
  (Debian's ``libopencv-imgcodecs-dev``, ``libopencv-imgproc-dev``) for images.
- ``wrappers/swift/OutpostModel.swift`` (CoreML + Vision) and
  ``wrappers/kotlin/OutpostModel.kt`` (LiteRT): they cannot be compiled here; kept small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtimes.package import Manifest

TEMPLATES = Path(__file__).parent / "templates"
PYTHON = "wrappers/python/outpost_predict.py"
CPP = "wrappers/cpp/main.cpp"
CMAKE = "wrappers/cpp/CMakeLists.txt"
SWIFT = "wrappers/swift/OutpostModel.swift"
KOTLIN = "wrappers/kotlin/OutpostModel.kt"
README = "wrappers/README.md"
# Formats the Python and C++ clients run, in the order they prefer them.
CLIENT_FORMATS = ("onnx", "openvino")

README_TEXT = """# Runtime wrappers for {name}

Generated from this package's `manifest.json` (class names, input {w}x{h}, preprocessing,
thresholds conf {conf} / IoU {iou}); re-export the model rather than editing them.

## Python — `python/outpost_predict.py`

Standalone: numpy and the runtime only (`pip install numpy onnxruntime`, or `openvino`),
no Outpost import. OpenCV (`opencv-python-headless`), when installed, decodes any image and
resizes exactly as `outpost predict` does; without it PNG and binary PPM files are read and
resized by numpy.

    python wrappers/python/outpost_predict.py image.png            # from the package folder
    python outpost_predict.py image.png --model ../../{model_file}

It prints JSON: detections (class, confidence, `xyxy` in image pixels, after NMS), or the
top-{top_k} classes of a classifier. Segment masks and pose keypoints are not decoded here
(boxes are); use `outpost predict` or the agent for those.

## C++ — `cpp/main.cpp`, `cpp/CMakeLists.txt`

OpenVINO's C++ API runs the ONNX or OpenVINO IR file (its headers and CMake package ship in
the `openvino` pip wheel); OpenCV reads and resizes images (Debian:
`apt-get install libopencv-imgcodecs-dev libopencv-imgproc-dev`).

    cmake -S wrappers/cpp -B build -DOpenVINO_DIR=$(python -c "import openvino,os;print(os.path.dirname(openvino.__file__)+'/cmake')")
    cmake --build build
    ./build/outpost_predict {model_file} image.png [CONF] [IOU]

## Swift — `swift/OutpostModel.swift` (CoreML + Vision)

## Kotlin — `kotlin/OutpostModel.kt` (LiteRT)

The Swift and Kotlin clients cannot be compiled on this machine (no Apple or Android
toolchain): they are small, carry the manifest's constants, and expect the CoreML
(`--format coreml`) or TFLite (`--format tflite`) export of this run, detection output
`(1, 4 + classes, anchors)`.
"""


def client_formats(manifest: Manifest) -> list[dict[str, str]]:
    """The package's formats the Python and C++ clients can run, preferred first."""
    specs = [s for s in manifest.all_formats() if s.key in CLIENT_FORMATS]
    specs.sort(key=lambda s: CLIENT_FORMATS.index(s.key))
    return [{"key": s.key, "file": s.file, "runtime": s.runtime} for s in specs]


def wrapper_config(manifest: Manifest) -> dict[str, Any]:
    """Everything a client needs from the manifest, as plain JSON values."""
    model = manifest.model
    post = model.postprocessing
    return {
        "name": manifest.name,
        "task": model.task,
        "class_names": list(model.class_names),
        "input_hw": [model.input.height, model.input.width],
        "precision": model.precision,
        "preprocessing": model.preprocessing.model_dump(mode="json"),
        "postprocessing": {
            "kind": post.kind,
            "output_layout": post.output_layout,
            "box_units": post.box_units,
            "conf_threshold": post.conf_threshold,
            "iou_threshold": post.iou_threshold,
            "max_det": post.max_det,
            "agnostic_nms": post.agnostic_nms,
            "top_k": post.top_k,
        },
        "formats": client_formats(manifest),
    }


def _cpp_bool(value: bool) -> str:
    return "true" if value else "false"


def _cpp_constants(config: dict[str, Any]) -> str:
    pre, post = config["preprocessing"], config["postprocessing"]
    mean = pre.get("mean") or [0.0, 0.0, 0.0]
    std = pre.get("std") or [1.0, 1.0, 1.0]
    names = ", ".join(json.dumps(n, ensure_ascii=False) for n in config["class_names"])
    lines = [
        f"constexpr int kInputH = {config['input_hw'][0]};",
        f"constexpr int kInputW = {config['input_hw'][1]};",
        f"constexpr int kPad = {int(pre['pad_value'])};",
        f"constexpr double kScale = {float(pre['scale'])!r};",
        f"constexpr bool kRgb = {_cpp_bool(pre['color'] == 'RGB')};",
        f"constexpr bool kNormalize = {_cpp_bool(pre.get('mean') is not None)};",
        "constexpr float kMean[3] = {" + ", ".join(f"{float(v)!r}f" for v in mean) + "};",
        "constexpr float kStd[3] = {" + ", ".join(f"{float(v)!r}f" for v in std) + "};",
        f"constexpr bool kPilBilinear = {_cpp_bool(pre.get('interpolation') == 'pil_bilinear')};",
        f"constexpr bool kCenterCrop = {_cpp_bool(pre['resize'] == 'center_crop')};",
        f"constexpr bool kClassify = {_cpp_bool(post['kind'] == 'classify')};",
        f"constexpr bool kEnd2End = {_cpp_bool(post['output_layout'] == 'xyxy_score_class')};",
        f"constexpr bool kNormalizedBoxes = {_cpp_bool(post['box_units'] == 'normalized')};",
        f"constexpr bool kAgnostic = {_cpp_bool(post['agnostic_nms'])};",
        f"constexpr bool kFp32 = {_cpp_bool(config['precision'] == 'fp32')};",
        f"constexpr float kConf = {float(post['conf_threshold'])!r}f;",
        f"constexpr float kIou = {float(post['iou_threshold'])!r}f;",
        f"constexpr int kMaxDet = {int(post['max_det'])};",
        f"constexpr int kTopK = {int(post['top_k'])};",
        "const std::vector<std::string> kClassNames = {" + names + "};",
    ]
    return "\n".join(lines)


def _fill(template: str, values: dict[str, str]) -> str:
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"__{key}__", value)
    return text


def generate_wrappers(manifest: Manifest) -> dict[str, str]:
    """Package path → text of every wrapper file, generated from ``manifest``."""
    config = wrapper_config(manifest)
    post = config["postprocessing"]
    formats = config["formats"]
    model_file = formats[0]["file"] if formats else manifest.format.file
    names_list = ", ".join(json.dumps(n, ensure_ascii=False) for n in config["class_names"])
    common = {
        "NAME": manifest.name,
        "MODEL_FILE": model_file,
        "CLASS_NAMES": f"[{names_list}]",
        "INPUT_W": str(config["input_hw"][1]),
        "INPUT_H": str(config["input_hw"][0]),
        "CONF": repr(float(post["conf_threshold"])),
        "IOU": repr(float(post["iou_threshold"])),
        "MAX_DET": str(int(post["max_det"])),
        "PAD": str(int(config["preprocessing"]["pad_value"])),
        "TASK": manifest.model.task,
    }
    python = _fill("outpost_predict.py", {}).replace(
        "__OUTPOST_CONFIG__", json.dumps(config, ensure_ascii=False, sort_keys=True)
    )
    return {
        PYTHON: python,
        CPP: _fill("main.cpp", {**common, "CONSTANTS": _cpp_constants(config)}),
        CMAKE: _fill("CMakeLists.txt", common),
        SWIFT: _fill("OutpostModel.swift", common),
        KOTLIN: _fill("OutpostModel.kt", {**common, "CLASS_NAMES": names_list}),
        README: README_TEXT.format(
            name=manifest.name,
            w=config["input_hw"][1],
            h=config["input_hw"][0],
            conf=post["conf_threshold"],
            iou=post["iou_threshold"],
            top_k=post["top_k"],
            model_file=model_file,
        ),
    }


def write_wrappers(manifest: Manifest, folder: Path) -> dict[str, Path]:
    """Write the wrappers under ``folder`` (the package's ``wrappers/`` folder); returns
    package path → written file."""
    written: dict[str, Path] = {}
    for arcname, text in generate_wrappers(manifest).items():
        path = Path(folder).joinpath(*Path(arcname).parts[1:])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written[arcname] = path
    return written


def export_wrappers(package: Path, out: Path) -> dict[str, Path]:
    """Write the wrappers of an existing package (a ``.outpost.zip`` or an extracted folder)
    into ``out/wrappers/`` through a temp folder and a rename; ``out`` must not hold one yet.

    Raises:
        OutpostError: ``out/wrappers`` exists, or the package is not readable.
    """
    import shutil
    import tempfile

    from runtimes.errors import OutpostError
    from runtimes.package import PackageReader, read_manifest_dir

    package = Path(package)
    if package.is_dir():
        manifest = read_manifest_dir(package)
    else:
        with PackageReader(package) as reader:
            manifest = reader.manifest
    dest = Path(out) / "wrappers"
    if dest.exists():
        raise OutpostError(f"{dest} already exists; pick another --out folder or remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wrappers.", dir=dest.parent))
    try:
        written = write_wrappers(manifest, tmp)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: dest / path.relative_to(tmp) for name, path in written.items()}
