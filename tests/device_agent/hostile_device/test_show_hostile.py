"""Odd or hostile `/v1/info` details through `outpost devices show`: shown printable and bounded, never a traceback."""

from __future__ import annotations

from typing import Any

import pytest

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.workspace import Workspace
from tests.device_agent.conftest import AgentThread
from tests.device_agent.desktop_helpers import paired_device


def _serve_details(agent: AgentThread, details: dict[str, Any]) -> None:
    async def device_details() -> dict[str, Any]:
        return details

    agent.service.device_details = device_details  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "details",
    [
        {"accelerators": ["gpu"]},
        {"runtimes": ["onnxruntime"]},
        {"ram_bytes": "lots"},
        {"accelerators": 5},
    ],
    ids=["accelerators-str", "runtimes-str", "ram-text", "accelerators-int"],
)
def test_hostile_info_gives_no_traceback(
    agent: AgentThread, ws: Workspace, details: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    device_id = paired_device(ws, agent)
    _serve_details(agent, details)
    code = outpost(["devices", "show", device_id, "--workspace", str(ws.root)])
    assert "Traceback" not in capfd.readouterr().err
    assert code in (0, 1)


def test_hostile_info_is_sanitised_before_printed_and_stored(
    agent: AgentThread, ws: Workspace, capfd: pytest.CaptureFixture[str]
) -> None:
    device_id = paired_device(ws, agent)
    _serve_details(agent, {"cpu_model": "\x1b]0;owned\x07\x1b[2J" + "A" * 100_000})
    assert outpost(["devices", "show", device_id, "--workspace", str(ws.root)]) == 0
    out = capfd.readouterr().out
    assert "\x1b" not in out
    stored = devices.get_device(ws, device_id).info[devices.DETAILS_KEY]["cpu_model"]
    assert "\x1b" not in stored and len(stored) <= 1000
