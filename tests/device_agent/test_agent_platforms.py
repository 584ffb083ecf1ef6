"""The platforms the agent runs on, played with the probes faked at the boundary only
(system files, commands on PATH, ``sys.platform``, the machine, the environment): Jetson,
Linux with an NVIDIA GPU, macOS, Android (Termux), an Intel box, a plain x86_64 Linux.

Each device's profile names its family and the runtimes and execution providers that suit
it, marked present or missing against the backends this device reports.
"""

from __future__ import annotations

import pytest

from device_agent import platform_info
from runtimes.backends import BackendInfo

ORT_CPU = BackendInfo(
    "onnxruntime", ("onnx",), True, version="1.20", providers=("CPUExecutionProvider",)
)
ORT_JETSON = BackendInfo(
    "onnxruntime",
    ("onnx",),
    True,
    version="1.20",
    providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
)
OPENVINO = BackendInfo("openvino", ("openvino", "onnx"), True, version="2025.1", providers=("CPU",))
COREML = BackendInfo("coreml", ("coreml",), True, version="8.0", providers=("ALL",))
LITERT = BackendInfo("litert", ("tflite",), True, version="1.2", providers=("cpu",))


def play(
    monkeypatch: pytest.MonkeyPatch,
    *,
    files: dict[str, str] | None = None,
    commands: dict[str, str] | None = None,
    globs: dict[str, list[str]] | None = None,
    system: str = "linux",
    arch: str = "x86_64",
    env: dict[str, str] | None = None,
) -> None:
    """Replace only the boundary functions: what the device's files, tools and OS say."""
    files, commands = files or {}, commands or {}
    monkeypatch.setattr(platform_info, "read_text", files.get)
    monkeypatch.setattr(platform_info, "which", lambda name: name if name in commands else None)
    monkeypatch.setattr(platform_info, "run_command", lambda argv: commands.get(argv[0]))
    monkeypatch.setattr(platform_info, "list_dir", lambda pattern: (globs or {}).get(pattern, []))
    monkeypatch.setattr(platform_info, "system_platform", lambda: system)
    monkeypatch.setattr(platform_info, "machine", lambda: arch)
    monkeypatch.setattr(platform_info, "environ", lambda: dict(env or {}))


def profile(infos: list[BackendInfo]) -> dict[str, object]:
    accels = platform_info.accelerators()
    return platform_info.platform_profile(accels, infos, platform_info.cpu_model())


def _suggested(p: dict[str, object]) -> list[tuple[str, str | None, bool]]:
    rows = p["suggested"]
    assert isinstance(rows, list)
    return [(r["runtime"], r["provider"], r["present"]) for r in rows]


def test_jetson_from_the_device_tree_wants_tensorrt_and_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    play(
        monkeypatch,
        files={
            "/proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
            "/etc/nv_tegra_release": "# R36 (release), REVISION: 4.0\n",
        },
        arch="aarch64",
    )
    bare = profile([ORT_CPU])  # the CPU-only wheel from PyPI
    assert (bare["family"], bare["arch"]) == ("jetson", "aarch64")
    assert _suggested(bare)[:2] == [
        ("onnxruntime", "TensorrtExecutionProvider", False),
        ("onnxruntime", "CUDAExecutionProvider", False),
    ]
    assert bare["missing"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    jetpack = profile([ORT_JETSON])  # JetPack's onnxruntime-gpu wheel
    assert jetpack["missing"] == []
    details = platform_info.device_details([ORT_JETSON])
    assert details["accelerators"][0]["kind"] == "jetson"
    assert details["platform_profile"]["family"] == "jetson"


def test_linux_with_an_nvidia_gpu_wants_the_cuda_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    play(monkeypatch, commands={"nvidia-smi": "NVIDIA L4, 23034, 550.54\n"})
    p = profile([ORT_CPU])
    assert p["family"] == "linux"
    assert _suggested(p)[0] == ("onnxruntime", "CUDAExecutionProvider", False)
    assert "CUDAExecutionProvider" in p["missing"]  # type: ignore[operator]


def test_macos_on_apple_silicon_wants_core_ml(monkeypatch: pytest.MonkeyPatch) -> None:
    play(
        monkeypatch,
        commands={"sysctl": "Apple M3\n"},
        system="darwin",
        arch="arm64",
    )
    p = profile([ORT_CPU, COREML])
    assert (p["family"], p["arch"]) == ("macos", "arm64")
    assert _suggested(p)[:2] == [
        ("coreml", None, True),
        ("onnxruntime", "CoreMLExecutionProvider", False),
    ]
    assert p["missing"] == ["CoreMLExecutionProvider"]


def test_android_under_termux_wants_litert(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"TERMUX_VERSION": "0.118.1", "PREFIX": "/data/data/com.termux/files/usr"}
    play(monkeypatch, arch="aarch64", env=env)
    p = profile([ORT_CPU])
    assert p["family"] == "android"
    assert _suggested(p)[0] == ("litert", None, False) and p["missing"] == ["litert"]
    assert profile([ORT_CPU, LITERT])["missing"] == []


def test_an_intel_box_wants_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i5-1135G7 @ 2.40GHz\n"
    play(
        monkeypatch,
        files={
            "/proc/cpuinfo": cpuinfo,
            "/sys/class/drm/card0/device/vendor": "0x8086\n",
            "/sys/class/drm/card0/device/device": "0x9a49\n",
        },
        globs={
            "/dev/dri/*": ["/dev/dri/card0"],
            "/sys/class/drm/*/device/vendor": ["/sys/class/drm/card0/device/vendor"],
        },
    )
    p = profile([ORT_CPU])
    assert p["family"] == "linux"
    assert ("openvino", None, False) in _suggested(p) and p["missing"] == ["openvino"]
    assert profile([ORT_CPU, OPENVINO])["missing"] == []


def test_a_plain_x86_64_linux_needs_nothing_more_than_onnx_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    play(monkeypatch, files={"/proc/cpuinfo": "model name\t: AMD EPYC 7B13\n"})
    p = profile([ORT_CPU])
    assert (p["family"], p["arch"]) == ("linux", "x86_64")
    assert _suggested(p) == [("onnxruntime", "CPUExecutionProvider", True)]
    assert p["missing"] == []
