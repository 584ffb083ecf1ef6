"""Runtime backends, registered explicitly in one registry keyed by backend and format."""

from __future__ import annotations

from importlib.metadata import entry_points

from runtimes.backends.base import Backend, BackendInfo
from runtimes.backends.coreml import CoreMlBackend
from runtimes.backends.litert import LiteRtBackend
from runtimes.backends.onnxruntime import OnnxRuntimeBackend
from runtimes.backends.openvino import OpenVinoBackend
from runtimes.backends.torchscript import TorchScriptBackend
from runtimes.errors import RuntimeUnavailableError

ENTRY_POINT_GROUP = "outpost.runtimes"


class BackendRegistry:
    def __init__(self) -> None:
        self._backends: dict[str, type[Backend]] = {}

    def register(self, backend: type[Backend]) -> None:
        if backend.key in self._backends:
            raise ValueError(f"backend {backend.key!r} is already registered")
        self._backends[backend.key] = backend

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in self._backends:
                self.register(ep.load())

    def keys(self) -> list[str]:
        return list(self._backends)

    def get(self, key: str) -> type[Backend]:
        try:
            return self._backends[key]
        except KeyError:
            raise RuntimeUnavailableError(
                f"unknown runtime {key!r}; choose one of {', '.join(self._backends)}"
            ) from None

    def for_format(self, fmt: str, prefer: str | None = None) -> type[Backend]:
        """The first available backend that runs ``fmt`` (``prefer`` first if given)."""
        candidates = [b for b in self._backends.values() if fmt in b.formats]
        if prefer:
            candidates.sort(key=lambda b: b.key != prefer)
        reasons = []
        for backend in candidates:
            info = backend.probe()
            if info.available:
                return backend
            reasons.append(f"{backend.key}: {info.reason}")
        detail = "; ".join(reasons) if reasons else "no backend is registered for it"
        raise RuntimeUnavailableError(f"no runtime here can run format {fmt!r} ({detail})")

    def runnable_formats(self) -> list[str]:
        """The formats some available backend here runs, in registration order."""
        out: list[str] = []
        for backend in self._backends.values():
            if backend.probe().available:
                out += [f for f in backend.formats if f not in out]
        return out

    def probe_all(self) -> list[BackendInfo]:
        return [b.probe() for b in self._backends.values()]


def default_registry() -> BackendRegistry:
    registry = BackendRegistry()
    # Order matters: for a format several backends run, the first available one is the default.
    registry.register(OnnxRuntimeBackend)
    registry.register(OpenVinoBackend)
    registry.register(TorchScriptBackend)
    registry.register(LiteRtBackend)
    registry.register(CoreMlBackend)
    registry.load_entry_points()
    return registry


__all__ = [
    "Backend",
    "BackendInfo",
    "BackendRegistry",
    "CoreMlBackend",
    "LiteRtBackend",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "TorchScriptBackend",
    "default_registry",
]
