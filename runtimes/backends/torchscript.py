"""TorchScript backend: ``torch.jit.load`` on the CPU, or on an NVIDIA GPU when asked.

torch is imported only when a model is loaded; ``probe`` looks for it without importing it,
so a device without torch (the agent's default install) reports this backend unavailable.
``probe`` lists the ``cuda`` provider when the installed torch is a CUDA build and the
machine has an NVIDIA driver; loading with ``providers=["cuda", "cpu"]`` then runs on the
GPU, or on the CPU when CUDA cannot start (``active_providers`` says which, so the agent
reports the fallback). Without ``providers`` the model runs on the CPU: the same numbers as
the export's parity check, whatever the machine.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.base import Backend, BackendInfo
from runtimes.errors import RuntimeUnavailableError

CUDA = "cuda"
CPU = "cpu"


def cuda_possible() -> bool:
    """Whether the installed torch is a CUDA build and an NVIDIA driver is present, decided
    without importing torch (``torch/version.py`` names the CUDA version of the build)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    if not (os.path.exists("/proc/driver/nvidia/version") or glob.glob("/dev/nvidia[0-9]*")):
        return False
    for folder in spec.submodule_search_locations:
        try:
            text = Path(folder, "version.py").read_text(encoding="utf-8")
        except OSError:
            continue
        if re.search(r"^cuda\b[^=\n]*=\s*['\"]\d", text, re.MULTILINE):
            return True
    return False


def all_outputs(out: Any) -> list[np.ndarray]:
    """Every tensor of a model output (a tensor, or a flat tuple/list/dict of them) as numpy;
    a nested first element (a training-mode head) counts as its first tensor."""
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [first_output(item) for item in out]


def first_output(out: Any) -> np.ndarray:
    """The first tensor of a model output (a tensor, or a tuple/list/dict of them) as numpy."""
    while isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    array: np.ndarray = out.detach().cpu().float().numpy()
    return array


class TorchScriptBackend(Backend):
    key = "torchscript"
    formats = ("torchscript",)
    provider_names = (CUDA, CPU)

    @classmethod
    def probe(cls) -> BackendInfo:
        if importlib.util.find_spec("torch") is None:
            return BackendInfo(
                cls.key, cls.formats, False, reason="torch is not installed (pip install torch)"
            )
        try:
            torch_version = version("torch").split("+")[0]
        except PackageNotFoundError:
            torch_version = None
        providers = (CUDA, CPU) if cuda_possible() else (CPU,)
        return BackendInfo(cls.key, cls.formats, True, version=torch_version, providers=providers)

    def __init__(
        self, model_path: Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        try:
            import torch
        except ImportError:
            raise RuntimeUnavailableError(
                "the torchscript runtime needs torch; pip install torch"
            ) from None
        self._torch = torch
        # torch's pool spins on every core it owns; one core stays with the caller, which
        # letterboxes the next image and runs NMS (the LiteRT backend's policy, uncapped).
        self.threads = int(threads) if threads else max(1, (os.cpu_count() or 1) - 1)
        torch.set_num_threads(self.threads)
        wanted = [p.lower() for p in providers or [CPU]]
        unknown = [p for p in wanted if p not in (CUDA, CPU)]
        if unknown:
            raise RuntimeUnavailableError(
                f"the torchscript runtime has no provider {unknown[0]}; use cuda or cpu"
            )
        self.device = CPU
        if wanted[0] == CUDA:
            if torch.cuda.is_available():
                self.device = CUDA
            elif CPU not in wanted:
                raise RuntimeUnavailableError(
                    "the torchscript runtime cannot use CUDA here (torch sees no GPU); "
                    "ask for the cpu provider"
                )
        with warnings.catch_warnings():
            # torch >= 2.9 marks torch.jit as deprecated; the format still loads and runs.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(model_path), map_location=self.device)  # type: ignore[no-untyped-call]
        self.module.eval()

    @property
    def active_providers(self) -> list[str]:
        return [self.device]

    def _forward(self, tensor: np.ndarray) -> Any:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(tensor))
        with torch.inference_mode():
            if self.device == CUDA:
                x = x.to(CUDA, non_blocking=False)
            return self.module(x)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return first_output(self._forward(tensor))

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        return all_outputs(self._forward(tensor))
