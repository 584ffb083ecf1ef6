"""An odd answer while an upload resumes: a typed error, and a failed deployment recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.workspace import Workspace
from device_agent import http_api
from tests.device_agent.desktop_helpers import exported_and_paired


@pytest.mark.parametrize(
    "status",
    [{"size": 1}, {"offset": "zero"}, {"offset": None}, {"offset": 3, "received": 5}],
)
def test_an_odd_upload_status_gives_a_typed_error(
    start_agent: Any,
    ws: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    status: dict[str, Any],
) -> None:
    async def put_upload_chunk(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": "offset mismatch"}, status=409)

    async def get_upload(request: web.Request) -> web.Response:
        return web.json_response(status)

    monkeypatch.setattr(http_api, "put_upload_chunk", put_upload_chunk)
    monkeypatch.setattr(http_api, "get_upload", get_upload)
    agent = start_agent()
    device_id = exported_and_paired(ws, agent, tmp_path)
    monkeypatch.setattr("device_agent.client.time.sleep", lambda s: None)  # no backoff waits
    code = outpost(["deploy", "exp1", "--device", device_id, "--workspace", str(ws.root)])
    assert code == 1
    assert "Traceback" not in capfd.readouterr().err
    history = devices.deployment_history(ws, device_id)
    assert history and history[0]["status"] == "failed"  # recorded, as any failed push
