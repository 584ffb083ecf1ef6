"""Deploys, model actions and benchmarks against devices that answer oddly or are off: no traceback, nothing odd stored, every failure in the history."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.models import Deployment, DeviceBenchmark
from desktop_app.core.workspace import Workspace
from device_agent.client import AgentClient
from tests.desktop_app.test_core_device_commands import paired  # noqa: F401
from tests.device_agent.conftest import AgentThread


def _deployments(ws: Workspace) -> int:
    with ws.session() as s:
        return int(s.scalar(select(func.count(Deployment.id))) or 0)


@pytest.mark.parametrize(
    "answer",
    [
        {"version": "2", "warnings": 5},
        {"version": "2", "fallback": [{"wanted": "CUDAExecutionProvider", "using": "CPU"}]},
        {"version": "2", "format": "onnx", "providers": [1, 2]},
        {"version": "2", "fallback": {"using": "CPU"}, "warnings": ["x"]},
    ],
    ids=["warnings-int", "fallback-list", "providers-ints", "fallback-no-wanted"],
)
def test_deploy_with_an_odd_install_answer_gives_no_traceback(
    ws: Workspace,
    paired: tuple[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    answer: dict[str, Any],
) -> None:
    device_id, _ = paired
    monkeypatch.setattr(AgentClient, "upload_package", lambda self, *a, **k: dict(answer))
    code = outpost(["deploy", "exp2", "--device", device_id, "--workspace", str(ws.root)])
    assert "Traceback" not in capfd.readouterr().err
    assert code in (0, 1)


def test_activate_with_an_odd_fallback_gives_no_traceback(
    ws: Workspace,
    paired: tuple[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device_id, _ = paired
    monkeypatch.setattr(
        AgentClient, "activate", lambda self, *a, **k: {"version": "1", "fallback": "CPU"}
    )
    code = outpost(["devices", "activate", device_id, "shapes", "--workspace", str(ws.root)])
    assert code in (0, 1)


@pytest.mark.parametrize(
    "result",
    [
        {"runs": 4, "latency_ms": {"p50": None, "p90": 1.0, "p99": 1.0, "mean": 1.0}},
        {"runs": "four", "latency_ms": {}},
        {"runs": 4, "latency_ms": "fast"},
        {"runs": 4, "latency_ms": {"p50": math.nan, "p90": 1, "p99": 1, "mean": 1}},
        {"runs": 2**70, "latency_ms": {}},
    ],
    ids=["p50-null", "runs-text", "latency-str", "p50-nan", "runs-huge"],
)
def test_bench_with_an_odd_answer_gives_no_traceback(
    ws: Workspace,
    paired: tuple[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    result: dict[str, Any],
) -> None:
    device_id, _ = paired
    monkeypatch.setattr(AgentClient, "bench", lambda self, *a, **k: dict(result))
    code = outpost(["bench", "exp1", "--device", device_id, "--workspace", str(ws.root)])
    assert code == 1
    with ws.session() as s:
        assert s.scalar(select(func.count(DeviceBenchmark.id))) == 0


def test_bench_stores_device_text_bounded(
    ws: Workspace,
    paired: tuple[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device_id, _ = paired
    hostile = {
        "runs": 4,
        "format": "\x1b[2J" + "f" * 10_000,
        "runtime": "\x1b]0;x\x07" + "r" * 10_000,
        "latency_ms": {"p50": 1, "p90": 1, "p99": 1, "mean": 1},
    }
    monkeypatch.setattr(AgentClient, "bench", lambda self, *a, **k: dict(hostile))
    try:
        devices.bench_export(ws, "exp1", device_id, runs=4)
    except devices.DeviceError:
        return
    with ws.session() as s:
        row = s.scalars(select(DeviceBenchmark)).one()
        assert len(row.format) <= 32 and "\x1b" not in row.format
        assert row.runtime is None or (len(row.runtime) <= 64 and "\x1b" not in row.runtime)


@pytest.mark.parametrize(
    "command",
    [["deploy", "exp2", "--device", "{id}"], ["devices", "deactivate", "{id}", "shapes"]],
    ids=["deploy", "deactivate"],
)
def test_a_command_to_a_device_that_is_off_is_recorded_as_failed(
    ws: Workspace,
    agent: AgentThread,
    paired: tuple[str, Path],  # noqa: F811
    command: list[str],
) -> None:
    """The history keeps a deploy or a model action whatever its outcome: a device that is
    off when it is attempted is a failed row too (connecting used to come before recording)."""
    device_id, _ = paired
    before = _deployments(ws)
    agent.stop()
    argv = [part.format(id=device_id) for part in command]
    assert outpost([*argv, "--workspace", str(ws.root)]) == 1
    assert _deployments(ws) == before + 1
    history = devices.deployment_history(ws, device_id)
    assert history[0]["status"] == "failed" and "cannot reach agent" in history[0]["message"]
