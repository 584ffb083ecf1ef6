"""Latency bookkeeping: bounded samples, percentiles, and a micro-benchmark helper."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np


def percentiles(samples: Iterable[float]) -> dict[str, float]:
    arr = np.fromiter(samples, dtype=np.float64)
    if arr.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(arr.mean()), 3),
    }


class LatencyWindow:
    """The last ``size`` latencies (ms) plus lifetime counters."""

    def __init__(self, size: int = 10_000) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.count = 0
        self.errors = 0

    def add(self, ms: float) -> None:
        self.samples.append(ms)
        self.count += 1

    def summary(self) -> dict[str, float | int]:
        return {"requests": self.count, "errors": self.errors, **percentiles(self.samples)}


def benchmark(fn: Callable[[], object], *, warmup: int = 3, runs: int = 20) -> dict[str, float]:
    """Time ``fn`` (ms) after ``warmup`` untimed calls, with a monotonic clock."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return percentiles(times)
