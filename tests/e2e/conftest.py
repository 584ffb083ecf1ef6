"""One real demo run shared by the end-to-end tests (few epochs, small images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

OUTPOST = [sys.executable, "-m", "desktop_app.cli"]


@dataclass
class DemoRun:
    summary: dict[str, Any]
    workspace: Path
    audit_log: Path
    stderr: str


def run_outpost(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OUTPOST, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    base = tmp_path_factory.mktemp("demo")
    ws = base / "ws"
    audit = base / "audit.log"
    proc = run_outpost(
        "demo",
        "--json",
        "--workspace",
        str(ws),
        "--epochs",
        "3",
        "--imgsz",
        "128",
        "--count",
        "40",
        env={"OUTPOST_NETWORK_AUDIT": str(audit)},
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return DemoRun(json.loads(proc.stdout), ws, audit, proc.stderr)
