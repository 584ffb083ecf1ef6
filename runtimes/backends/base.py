"""The interface every runtime backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Each runtime's own name for the CPU, the provider a wanted one falls back to.
CPU_PROVIDERS = ("CPUExecutionProvider", "CPU", "cpu", "CPU_ONLY")
# Providers that are remote endpoints, not a device of this machine.
NOT_COMPUTE_PROVIDERS = frozenset({"AzureExecutionProvider"})


def match_provider(name: str, names: Sequence[str]) -> str | None:
    """``name`` as ``names`` spell it: the exact spelling first, then in any case; None when
    none matches."""
    wanted = name.strip()
    if wanted in names:
        return wanted
    return next((p for p in names if p.lower() == wanted.lower()), None)


@dataclass(frozen=True)
class BackendInfo:
    """What a backend is and whether this machine can run it."""

    key: str
    formats: tuple[str, ...]
    available: bool
    version: str | None = None
    providers: tuple[str, ...] = ()
    reason: str | None = None  # why it is unavailable
    extras: dict[str, str] = field(default_factory=dict)


class Backend(ABC):
    """Runs one model file. Created by the registry with the model path and options."""

    key: str = ""
    formats: tuple[str, ...] = ()
    # Every provider (device) name the runtime knows, whether or not this machine has it.
    provider_names: tuple[str, ...] = ()

    @classmethod
    @abstractmethod
    def probe(cls) -> BackendInfo:
        """Report availability without raising (a missing library makes it unavailable)."""

    @classmethod
    def known_providers(cls) -> tuple[str, ...]:
        """Every execution provider name this runtime knows, available here or not (a
        provider asked for by another name is a typo, not a missing accelerator)."""
        return cls.provider_names or cls.probe().providers

    @classmethod
    def provider_named(cls, name: str) -> str | None:
        """``name`` as this runtime spells it (``gpu`` is OpenVINO's ``GPU``), or None when the
        runtime knows no provider of that name."""
        return match_provider(name, cls.known_providers())

    @classmethod
    def fallback_providers(cls, provider: str) -> list[str]:
        """What runs the parts of a model ``provider`` does not take, or all of it when it does
        not start, after it: the runtime's CPU."""
        return [p for p in cls.known_providers() if p in CPU_PROVIDERS and p != provider][:1]

    @abstractmethod
    def __init__(
        self, model_path: Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None: ...

    @property
    @abstractmethod
    def active_providers(self) -> list[str]:
        """The execution providers the loaded model actually runs on."""

    @property
    def provider_errors(self) -> dict[str, str]:
        """Why each provider asked for ahead of the active one did not load, in the runtime's
        own words; empty where the runtime does not say (ONNX Runtime falls back silently)."""
        return {}

    @abstractmethod
    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Run one input tensor; return the first output."""

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run one input tensor; return every output in the model's order (a segmentation
        model has two: detections and mask prototypes)."""
        return [self.run(tensor)]
