"""Usage and latency per model, as the agent measured it (server-side milliseconds).

Per model name: lifetime request/error counters and a bounded window of latencies (the
percentiles). Per model version, in addition: a fixed-bucket latency histogram, the
throughput over the last minute, and a per-minute time series over the last 24 hours held in
a ring buffer (:data:`SERIES_MINUTES` points, memory bounded whatever the uptime).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from runtimes.latency import LatencyWindow, percentiles

if TYPE_CHECKING:
    from device_agent.store import InstalledModel

# Upper bounds (ms) of the latency histogram buckets; the last bucket is +Inf.
HISTOGRAM_BOUNDS_MS: tuple[float, ...] = (
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
)
SERIES_MINUTES = 1440  # 24 h of per-minute points
THROUGHPUT_WINDOW_S = 60


class TimeRing:
    """Counts per time slot (``width_s`` seconds) over the last ``slots`` slots.

    Each slot remembers which slot number it holds, so a slot left over from an earlier lap of
    the ring is recognised as stale and reset; nothing grows with uptime.
    """

    def __init__(self, slots: int, width_s: int) -> None:
        self.slots = slots
        self.width_s = width_s
        self._stamp = [-1] * slots
        self._requests = [0] * slots
        self._errors = [0] * slots
        self._latency_sum = [0.0] * slots
        self._latency_count = [0] * slots

    def _slot(self, now: float) -> int:
        number = int(now // self.width_s)
        index = number % self.slots
        if self._stamp[index] != number:
            self._stamp[index] = number
            self._requests[index] = self._errors[index] = self._latency_count[index] = 0
            self._latency_sum[index] = 0.0
        return index

    def add(self, now: float, latency_ms: float | None) -> None:
        """Count one request at ``now``; ``latency_ms`` None means it failed."""
        index = self._slot(now)
        self._requests[index] += 1
        if latency_ms is None:
            self._errors[index] += 1
        else:
            self._latency_sum[index] += latency_ms
            self._latency_count[index] += 1

    def requests_since(self, now: float, seconds: float) -> int:
        """Requests in the slots that end after ``now - seconds`` (the current one included)."""
        first = int((now - seconds) // self.width_s) + 1
        last = int(now // self.width_s)
        return sum(
            self._requests[i] for i, stamp in enumerate(self._stamp) if first <= stamp <= last
        )

    def points(self, now: float, slots: int | None = None) -> list[dict[str, Any]]:
        """Non-empty slots of the last ``slots`` (default all), oldest first."""
        last = int(now // self.width_s)
        first = last - min(slots or self.slots, self.slots) + 1
        out = []
        for i in sorted(
            (i for i, stamp in enumerate(self._stamp) if first <= stamp <= last),
            key=lambda i: self._stamp[i],
        ):
            if not self._requests[i]:
                continue
            count = self._latency_count[i]
            out.append(
                {
                    "t": _iso(self._stamp[i] * self.width_s),
                    "requests": self._requests[i],
                    "errors": self._errors[i],
                    "mean_ms": round(self._latency_sum[i] / count, 3) if count else None,
                }
            )
        return out


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


class VersionUsage:
    """Usage of one model version: counters, histogram, throughput and per-minute series."""

    def __init__(self, window: int) -> None:
        self.latency = LatencyWindow(window)
        self.buckets = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)
        self.latency_sum = 0.0
        self.seconds = TimeRing(THROUGHPUT_WINDOW_S + 1, 1)
        self.minutes = TimeRing(SERIES_MINUTES, 60)

    def record(self, now: float, latency_ms: float | None) -> None:
        if latency_ms is None:
            self.latency.count += 1
            self.latency.errors += 1
        else:
            self.latency.add(latency_ms)
            self.latency_sum += latency_ms
            self.buckets[int(np.searchsorted(HISTOGRAM_BOUNDS_MS, latency_ms, side="left"))] += 1
        self.seconds.add(now, latency_ms)
        self.minutes.add(now, latency_ms)

    def throughput(self, now: float) -> float:
        """Requests per second over the last minute."""
        return round(self.seconds.requests_since(now, THROUGHPUT_WINDOW_S) / THROUGHPUT_WINDOW_S, 3)

    def histogram(self) -> dict[str, Any]:
        """Cumulative bucket counts (Prometheus style: ``le`` upper bounds, ``+Inf`` last)."""
        cumulative = np.cumsum(self.buckets).tolist()
        bounds = [_number(b) for b in HISTOGRAM_BOUNDS_MS] + ["+Inf"]
        return {
            "buckets": dict(zip(bounds, cumulative, strict=True)),
            "sum_ms": round(self.latency_sum, 3),
            "count": int(cumulative[-1]),
        }

    def report(self, now: float, minutes: int) -> dict[str, Any]:
        return {
            "requests": self.latency.count,
            "errors": self.latency.errors,
            "latency_ms": percentiles(self.latency.samples),
            "histogram": self.histogram(),
            "throughput_rps": self.throughput(now),
            "series": self.minutes.points(now, minutes),
        }


class UsageStats:
    """Counters and a bounded latency window per model name (and per version). Used from the
    event loop only.

    ``requests`` counts every inference request addressed to a model, ``errors`` the ones
    that failed; latency percentiles cover the successful ones.

    Args:
        window: latencies kept per model (and per version) for the percentiles.
        clock: seconds since the epoch (tests pass a fake one).
    """

    def __init__(self, window: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._window = window
        self._clock = clock
        self._models: dict[str, LatencyWindow] = {}
        self._versions: dict[tuple[str, str], VersionUsage] = {}
        self._latency_sums: dict[str, float] = {}  # every successful request's, since start
        self.since = _iso(clock())
        # This run's own id: a restart is a new one even within the second (or with a clock
        # that starts from the same saved time), so a desktop never mistakes two runs for one.
        self.run = secrets.token_hex(8)

    def _get(self, name: str) -> LatencyWindow:
        if name not in self._models:
            self._models[name] = LatencyWindow(self._window)
        return self._models[name]

    def _version(self, name: str, version: str | None) -> VersionUsage | None:
        if version is None:
            return None
        key = (name, version)
        if key not in self._versions:
            self._versions[key] = VersionUsage(self._window)
        return self._versions[key]

    def record(self, name: str, total_ms: float, version: str | None = None) -> None:
        self._get(name).add(total_ms)
        self._latency_sums[name] = self._latency_sums.get(name, 0.0) + total_ms
        usage = self._version(name, version)
        if usage is not None:
            usage.record(self._clock(), total_ms)

    def record_error(self, name: str, version: str | None = None) -> None:
        window = self._get(name)
        window.count += 1
        window.errors += 1
        usage = self._version(name, version)
        if usage is not None:
            usage.record(self._clock(), None)

    def throughput(self, name: str) -> float:
        """Requests per second over the last minute, all versions of ``name`` together."""
        now = self._clock()
        total = sum(u.throughput(now) for (n, _), u in self._versions.items() if n == name)
        return round(total, 3)

    def summary(self, name: str) -> dict[str, Any]:
        window = self._models.get(name)
        if window is None:
            return {
                "requests": 0,
                "errors": 0,
                "latency_ms": percentiles(()),
                "throughput_rps": 0.0,
            }
        return {
            "requests": window.count,
            "errors": window.errors,
            "latency_ms": percentiles(window.samples),
            "throughput_rps": self.throughput(name),
        }

    def versions(self, name: str, minutes: int = 60) -> dict[str, Any]:
        """Per-version usage of ``name`` with the last ``minutes`` of its per-minute series."""
        now = self._clock()
        return {
            version: usage.report(now, minutes)
            for (n, version), usage in sorted(self._versions.items())
            if n == name
        }

    def window(self, name: str) -> LatencyWindow | None:
        return self._models.get(name)

    def answered(self, name: str) -> tuple[int, float]:
        """Successful requests to ``name`` since the agent started and their summed latency
        (ms): cumulative, unlike the window the percentiles come from."""
        window = self._models.get(name)
        count = window.count - window.errors if window else 0
        return count, self._latency_sums.get(name, 0.0)

    def version_items(self) -> list[tuple[tuple[str, str], VersionUsage]]:
        return sorted(self._versions.items())

    def version_usage(self, name: str, version: str) -> VersionUsage | None:
        return self._versions.get((name, version))

    def names(self) -> list[str]:
        return sorted(self._models)

    def report(
        self, agent_id: str, models: list[InstalledModel], minutes: int = 60
    ) -> dict[str, Any]:
        """The ``GET /v1/stats`` body: every installed model, plus any that served and left.

        Each model also has ``versions``: the per-version usage with the last ``minutes``
        (at most :data:`SERIES_MINUTES`) of its per-minute series.
        """
        minutes = max(1, min(minutes, SERIES_MINUTES))
        out: dict[str, Any] = {}
        for model in models:
            out[model.name] = {
                "version": model.version,
                "format": model.format,
                "runtime": model.runtime,
                "providers": model.providers,
                **self.summary(model.name),
                "versions": self.versions(model.name, minutes),
            }
        for name in self.names():
            if name not in out:
                out[name] = {
                    "version": None,
                    "format": None,
                    "runtime": None,
                    "providers": [],
                    **self.summary(name),
                    "versions": self.versions(name, minutes),
                }
        return {
            "agent_id": agent_id,
            "since": self.since,
            "run": self.run,
            "histogram_bounds_ms": list(HISTOGRAM_BOUNDS_MS),
            "series_minutes": minutes,
            "models": out,
        }


QUANTILES = (("0.5", 50.0), ("0.9", 90.0), ("0.99", 99.0))
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def prometheus_text(
    stats: UsageStats,
    models: list[InstalledModel],
    concurrency: Mapping[str, int] | None = None,
) -> str:
    """The ``GET /v1/metrics`` body: Prometheus text exposition format 0.0.4.

    Per model (installed, or served since start): request and error counters and a latency
    summary (quantiles over the agent's bounded window of successful requests; ``_sum`` and
    ``_count`` over all of them); per model version, a latency histogram; plus the installed count
    and, given ``concurrency`` (``in_flight``, ``queued``, ``rejected``), the inference
    limiter's gauges and counter.
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
        "requests, milliseconds (quantiles over the recent window).",
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
        # _sum and _count are counters (every successful request since the agent started);
        # only the quantiles come from the recent window
        count, total = stats.answered(name)
        lines.append(
            f'outpost_inference_latency_ms_sum{{model="{label}"}} {_number(round(total, 3))}'
        )
        lines.append(f'outpost_inference_latency_ms_count{{model="{label}"}} {count}')
    lines += [
        "# HELP outpost_request_latency_ms Server-side latency of successful inference "
        "requests per model version since the agent started, milliseconds.",
        "# TYPE outpost_request_latency_ms histogram",
    ]
    for (name, version), usage in stats.version_items():
        labels = f'model="{_label(name)}",version="{_label(version)}"'
        histogram = usage.histogram()
        for bound, cumulative in histogram["buckets"].items():
            lines.append(f'outpost_request_latency_ms_bucket{{{labels},le="{bound}"}} {cumulative}')
        lines.append(f"outpost_request_latency_ms_sum{{{labels}}} {_number(histogram['sum_ms'])}")
        lines.append(f"outpost_request_latency_ms_count{{{labels}}} {histogram['count']}")
    lines += [
        "# HELP outpost_models_installed Models with an active version loaded.",
        "# TYPE outpost_models_installed gauge",
        f"outpost_models_installed {len(models)}",
    ]
    if concurrency is not None:
        lines += [
            "# HELP outpost_inference_in_flight Inference requests running now.",
            "# TYPE outpost_inference_in_flight gauge",
            f"outpost_inference_in_flight {int(concurrency.get('in_flight', 0))}",
            "# HELP outpost_inference_queued Inference requests waiting for a slot.",
            "# TYPE outpost_inference_queued gauge",
            f"outpost_inference_queued {int(concurrency.get('queued', 0))}",
            "# HELP outpost_inference_rejected_total Inference requests refused with 503 "
            "(the wait queue was full).",
            "# TYPE outpost_inference_rejected_total counter",
            f"outpost_inference_rejected_total {int(concurrency.get('rejected', 0))}",
        ]
    return "\n".join(lines) + "\n"
