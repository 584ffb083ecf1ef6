"""Usage and latency per model, as the agent measured it (server-side milliseconds)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from runtimes.latency import LatencyWindow, percentiles

if TYPE_CHECKING:
    from device_agent.store import InstalledModel


class UsageStats:
    """Counters and a bounded latency window per model name. Used from the event loop only.

    ``requests`` counts every inference request addressed to a model, ``errors`` the ones
    that failed; latency percentiles cover the successful ones.
    """

    def __init__(self, window: int = 10_000) -> None:
        self._window = window
        self._models: dict[str, LatencyWindow] = {}
        self.since = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def _get(self, name: str) -> LatencyWindow:
        if name not in self._models:
            self._models[name] = LatencyWindow(self._window)
        return self._models[name]

    def record(self, name: str, total_ms: float) -> None:
        self._get(name).add(total_ms)

    def record_error(self, name: str) -> None:
        window = self._get(name)
        window.count += 1
        window.errors += 1

    def summary(self, name: str) -> dict[str, Any]:
        window = self._models.get(name)
        if window is None:
            return {"requests": 0, "errors": 0, "latency_ms": percentiles(())}
        return {
            "requests": window.count,
            "errors": window.errors,
            "latency_ms": percentiles(window.samples),
        }

    def names(self) -> list[str]:
        return sorted(self._models)

    def report(self, agent_id: str, models: list[InstalledModel]) -> dict[str, Any]:
        """The ``GET /v1/stats`` body: every installed model, plus any that served and left."""
        out: dict[str, Any] = {}
        for model in models:
            out[model.name] = {
                "version": model.version,
                "format": model.format,
                "runtime": model.runtime,
                "providers": model.providers,
                **self.summary(model.name),
            }
        for name in self.names():
            if name not in out:
                out[name] = {
                    "version": None,
                    "format": None,
                    "runtime": None,
                    "providers": [],
                    **self.summary(name),
                }
        return {"agent_id": agent_id, "since": self.since, "models": out}
