"""Facts about this device: OS, CPU, memory, accelerators and the runtimes it can run.

:func:`host_facts` is cheap (a few small file reads) and runs at agent start.
:func:`device_details` may start subprocesses (``nvidia-smi``) and import runtime libraries
(OpenVINO to list its devices), so the agent calls it lazily, once, off the event loop, and
caches the answer. Every probe goes through the small boundary functions below
(:func:`read_text`, :func:`which`, :func:`run_command`, :func:`list_dir`, :func:`machine`,
:func:`system_platform`, :func:`environ`), which tests replace to play any device.

:func:`platform_profile` names the device family (Jetson, Linux, macOS, Android) and the
runtimes and execution providers that run models fastest on it, with those still missing
here, so ``GET /v1/info`` tells the user what to install (see the README's "Platforms").
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from runtimes.backends import BackendInfo, BackendRegistry, default_registry

PROBE_TIMEOUT_S = 5.0
INTEL_VENDOR = "0x8086"


# --- boundary: everything the probes learn from the machine goes through these ------------


def read_text(path: str) -> str | None:
    """A small system file's text (NULs dropped), or None when it cannot be read."""
    try:
        return Path(path).read_bytes()[:65536].replace(b"\x00", b"").decode("utf-8", "replace")
    except OSError:
        return None


def which(name: str) -> str | None:
    return shutil.which(name)


def run_command(argv: list[str]) -> str | None:
    """A command's stdout, or None when it fails or takes longer than a few seconds."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def list_dir(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern))


def machine() -> str:
    return platform.machine()


def system_platform() -> str:
    return sys.platform


def environ() -> dict[str, str]:
    return dict(os.environ)


def module_version(dist: str) -> str | None:
    """An installed distribution's version without importing it; None when absent."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# --- probes --------------------------------------------------------------------------------


def cpu_model() -> str | None:
    """The CPU's marketing name (``/proc/cpuinfo``, or sysctl on macOS)."""
    text = read_text("/proc/cpuinfo")
    if text:
        for key in ("model name", "Hardware", "Model", "cpu model"):
            for line in text.splitlines():
                name, _, value = line.partition(":")
                if name.strip() == key and value.strip():
                    return value.strip()
    if system_platform() == "darwin":
        out = run_command(["sysctl", "-n", "machdep.cpu.brand_string"])
        if out and out.strip():
            return out.strip()
    return platform.processor() or None


def ram_bytes() -> int | None:
    """Total physical memory in bytes."""
    text = read_text("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                parts = line.split()
                with contextlib.suppress(IndexError, ValueError):
                    return int(parts[1]) * 1024
    if system_platform() == "darwin":
        out = run_command(["sysctl", "-n", "hw.memsize"])
        with contextlib.suppress(TypeError, ValueError):
            return int(str(out).strip())
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    return None


def host_facts() -> dict[str, Any]:
    return {
        "platform": sys.platform,
        "os": platform.platform(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count() or 1,
        "cpu_model": cpu_model(),
        "ram_bytes": ram_bytes(),
    }


def _cuda() -> list[dict[str, Any]]:
    if which("nvidia-smi"):
        out = run_command(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader,nounits",
            ]
        )
        gpus = []
        for line in (out or "").splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 3 and fields[0]:
                memory = int(fields[1]) * (1 << 20) if fields[1].isdigit() else None
                gpus.append(
                    {"kind": "cuda", "name": fields[0], "memory_bytes": memory, "driver": fields[2]}
                )
        if gpus:
            return gpus
    text = read_text("/proc/driver/nvidia/version")
    if text:
        first = text.strip().splitlines()[0] if text.strip() else ""
        return [{"kind": "cuda", "name": "NVIDIA GPU", "driver": first or None}]
    return []


def _jetson() -> list[dict[str, Any]]:
    release = read_text("/etc/nv_tegra_release")
    model = (read_text("/proc/device-tree/model") or "").strip()
    if release is None and "jetson" not in model.lower():
        return []
    l4t = (
        release.strip().splitlines()[0].lstrip("# ").strip()
        if release and release.strip()
        else None
    )
    return [{"kind": "jetson", "name": model or "NVIDIA Jetson", "l4t": l4t}]


def _apple_neural_engine() -> list[dict[str, Any]]:
    if system_platform() == "darwin" and machine() == "arm64":
        return [{"kind": "apple-neural-engine", "name": "Apple Neural Engine"}]
    return []


def _intel_gpu() -> list[dict[str, Any]]:
    if not list_dir("/dev/dri/*"):
        return []
    cards = []
    for vendor_file in list_dir("/sys/class/drm/*/device/vendor"):
        card = vendor_file.split("/")[4]
        if card.startswith("card") and "-" not in card:
            if (read_text(vendor_file) or "").strip().lower() == INTEL_VENDOR:
                device = (read_text(vendor_file.replace("/vendor", "/device")) or "").strip()
                cards.append({"kind": "intel-gpu", "name": card, "device_id": device or None})
    return cards


def accelerators() -> list[dict[str, Any]]:
    """Every accelerator this device shows: CUDA GPUs, Jetson modules, the Apple Neural
    Engine, Intel GPUs. Empty on a CPU-only machine."""
    return [*_cuda(), *_jetson(), *_apple_neural_engine(), *_intel_gpu()]


def probe_runtimes(registry: BackendRegistry | None = None) -> list[BackendInfo]:
    """Probe every registered backend; a missing library shows as unavailable, never raises."""
    return (registry or default_registry()).probe_all()


def runtimes_json(infos: list[BackendInfo]) -> list[dict[str, Any]]:
    return [
        {
            "key": info.key,
            "version": info.version,
            "formats": list(info.formats),
            "providers": list(info.providers),
            "available": info.available,
            "reason": info.reason,
        }
        for info in infos
    ]


def onnxruntime_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def openvino_devices() -> list[str]:
    import openvino

    return list(openvino.Core().available_devices)


# Runtimes that are not agent backends (yet) but that a device may have: reported as found.
_OTHER_RUNTIMES: tuple[tuple[str, str, str, bool], ...] = (
    # key, module, distribution, macOS only
    ("tflite", "tflite_runtime", "tflite-runtime", False),
    ("litert", "ai_edge_litert", "ai-edge-litert", False),
    ("coremltools", "coremltools", "coremltools", True),
)


def runtime_details(infos: list[BackendInfo]) -> list[dict[str, Any]]:
    """Every runtime with its version and execution providers / devices, as this device runs
    them: the agent's backends (with ``available_providers`` from ONNX Runtime and
    ``devices`` from OpenVINO), then TFLite/LiteRT and (on macOS) coremltools when installed.
    torch is never imported here: its version comes from the package metadata."""
    out = runtimes_json(infos)
    for entry in out:
        if not entry["available"]:
            continue
        with contextlib.suppress(Exception):  # a broken install is reported, never fatal
            if entry["key"] == "onnxruntime":
                entry["available_providers"] = onnxruntime_providers()
            elif entry["key"] == "openvino":
                entry["devices"] = openvino_devices()
    darwin = system_platform() == "darwin"
    for key, module, dist, mac_only in _OTHER_RUNTIMES:
        if (mac_only and not darwin) or not has_module(module):
            continue
        if any(e["key"] == key for e in out):  # an agent backend already reports it
            continue
        out.append(
            {
                "key": key,
                "version": module_version(dist),
                "formats": [],
                "providers": [],
                "available": True,
                "reason": "installed; the agent has no backend for it yet",
            }
        )
    if not any(e["key"] == "torchscript" for e in out) and has_module("torch"):
        out.append(
            {
                "key": "torch",
                "version": module_version("torch"),
                "formats": [],
                "providers": [],
                "available": True,
                "reason": "installed; the agent has no backend for it",
            }
        )
    return out


def device_family(accels: list[dict[str, Any]]) -> str:
    """``jetson``, ``android``, ``macos``, ``windows``, ``linux`` (or the raw platform name)."""
    system = system_platform()
    env = environ()
    if any(a["kind"] == "jetson" for a in accels):
        return "jetson"
    if system == "android" or "ANDROID_ROOT" in env or "TERMUX_VERSION" in env:
        return "android"
    if system == "darwin":
        return "macos"
    if system.startswith("win"):
        return "windows"
    return "linux" if system.startswith("linux") else system


def _suggestions(
    family: str, accels: list[dict[str, Any]], cpu: str | None
) -> list[tuple[str, str | None, str]]:
    """(runtime, provider or None, why) best first, for this kind of device."""
    kinds = {a["kind"] for a in accels}
    out: list[tuple[str, str | None, str]] = []
    if family == "jetson":
        why = "JetPack's onnxruntime-gpu wheel runs ONNX on the Jetson's GPU"
        out += [
            ("onnxruntime", "TensorrtExecutionProvider", why + " through TensorRT"),
            ("onnxruntime", "CUDAExecutionProvider", why + " through CUDA"),
        ]
    elif "cuda" in kinds:
        why = "onnxruntime-gpu runs ONNX on the NVIDIA GPU"
        out += [
            ("onnxruntime", "CUDAExecutionProvider", why),
            ("onnxruntime", "TensorrtExecutionProvider", why + " through TensorRT (if installed)"),
        ]
    if family == "macos":
        out += [
            ("coreml", None, "Core ML runs .mlpackage models on the Neural Engine and GPU"),
            ("onnxruntime", "CoreMLExecutionProvider", "ONNX Runtime hands ONNX to Core ML"),
        ]
    if family == "android":
        out.append(("litert", None, "LiteRT (TFLite) runs .tflite models on Android (Termux)"))
    if "intel-gpu" in kinds or (cpu is not None and "intel" in cpu.lower()):
        out.append(("openvino", None, "OpenVINO runs models fastest on Intel CPUs and GPUs"))
    out.append(("onnxruntime", "CPUExecutionProvider", "ONNX Runtime on the CPU runs anywhere"))
    return out


def platform_profile(
    accels: list[dict[str, Any]], infos: list[BackendInfo], cpu: str | None = None
) -> dict[str, Any]:
    """The device family and the runtimes that suit it, each marked present or missing.

    Args:
        accels: :func:`accelerators` of this device.
        infos: the probed backends (:func:`probe_runtimes`).
        cpu: the CPU's name (:func:`cpu_model`), which tells an Intel box.
    """
    family = device_family(accels)
    available = {i.key: i for i in infos if i.available}
    suggested = []
    for runtime, provider, why in _suggestions(family, accels, cpu):
        info = available.get(runtime)
        present = info is not None and (provider is None or provider in info.providers)
        suggested.append({"runtime": runtime, "provider": provider, "present": present, "why": why})
    return {
        "family": family,
        "arch": machine(),
        "suggested": suggested,
        "missing": [s["provider"] or s["runtime"] for s in suggested if not s["present"]],
    }


def device_details(infos: list[BackendInfo]) -> dict[str, Any]:
    """Accelerators, runtimes and the platform profile in detail (slow probes: call once,
    off the event loop)."""
    accels = accelerators()
    return {
        "accelerators": accels,
        "runtimes": runtime_details(infos),
        "platform_profile": platform_profile(accels, infos, cpu_model()),
    }
