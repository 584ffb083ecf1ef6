"""Usage and latency per model, as the agent measured it (server-side milliseconds)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

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

    def window(self, name: str) -> LatencyWindow | None:
        return self._models.get(name)

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


QUANTILES = (("0.5", 50.0), ("0.9", 90.0), ("0.99", 99.0))
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def prometheus_text(stats: UsageStats, models: list[InstalledModel]) -> str:
    """The ``GET /v1/metrics`` body: Prometheus text exposition format 0.0.4.

    Per model (installed, or served since start): request and error counters and a latency
    summary over the agent's bounded window of successful requests; plus the installed count.
    """
    names = sorted({m.name for m in models} | set(stats.names()))
    windows = {name: stats.window(name) for name in names}
    lines = [
        "# HELP outpost_requests_total Inference requests addressed to a model since the agent started.",
        "# TYPE outpost_requests_total counter",
    ]
    lines += [
        f'outpost_requests_total{{model="{_label(n)}"}} {w.count if w else 0}'
        for n, w in windows.items()
    ]
    lines += [
        "# HELP outpost_errors_total Inference requests that failed.",
        "# TYPE outpost_errors_total counter",
    ]
    lines += [
        f'outpost_errors_total{{model="{_label(n)}"}} {w.errors if w else 0}'
        for n, w in windows.items()
    ]
    lines += [
        "# HELP outpost_inference_latency_ms Server-side latency of successful inference "
        "requests (recent window), milliseconds.",
        "# TYPE outpost_inference_latency_ms summary",
    ]
    for name, window in windows.items():
        samples = np.fromiter(window.samples if window else (), dtype=np.float64)
        label = _label(name)
        values = (
            np.percentile(samples, [q for _, q in QUANTILES])
            if samples.size
            else [float("nan")] * len(QUANTILES)
        )
        for (quantile, _), value in zip(QUANTILES, values, strict=True):
            shown = "NaN" if np.isnan(value) else _number(round(float(value), 3))
            lines.append(
                f'outpost_inference_latency_ms{{model="{label}",quantile="{quantile}"}} {shown}'
            )
        lines.append(
            f'outpost_inference_latency_ms_sum{{model="{label}"}} '
            f"{_number(round(float(samples.sum()), 3))}"
        )
        lines.append(f'outpost_inference_latency_ms_count{{model="{label}"}} {samples.size}')
    lines += [
        "# HELP outpost_models_installed Models with an active version loaded.",
        "# TYPE outpost_models_installed gauge",
        f"outpost_models_installed {len(models)}",
    ]
    return "\n".join(lines) + "\n"
