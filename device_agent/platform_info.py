"""Facts about this device: OS, CPU architecture and the runtimes it can run."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from runtimes.backends import BackendInfo, BackendRegistry, default_registry


def host_facts() -> dict[str, Any]:
    return {
        "platform": sys.platform,
        "os": platform.platform(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count() or 1,
    }


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
