"""TorchScript backend: ``torch.jit.load`` on the CPU.

torch is imported only when a model is loaded; ``probe`` looks for it without importing it,
so a device without torch (the agent's default install) reports this backend unavailable.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.base import Backend, BackendInfo
from runtimes.errors import RuntimeUnavailableError


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
        return BackendInfo(cls.key, cls.formats, True, version=torch_version, providers=("cpu",))

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
        torch.set_num_threads(threads or os.cpu_count() or 1)
        with warnings.catch_warnings():
            # torch >= 2.9 marks torch.jit as deprecated; the format still loads and runs.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(model_path), map_location="cpu")  # type: ignore[no-untyped-call]
        self.module.eval()

    @property
    def active_providers(self) -> list[str]:
        return ["cpu"]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self.module(self._torch.from_numpy(np.ascontiguousarray(tensor)))
        return first_output(out)

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        with self._torch.inference_mode():
            out = self.module(self._torch.from_numpy(np.ascontiguousarray(tensor)))
        return all_outputs(out)
