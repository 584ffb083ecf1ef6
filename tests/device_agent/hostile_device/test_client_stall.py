"""The desktop against a device that never makes progress / trickles its answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from desktop_app.core import devices
from desktop_app.core.workspace import Workspace
from device_agent import http_api
from tests.device_agent.desktop_helpers import exported_and_paired


def test_a_chunked_upload_the_device_never_advances_does_not_spin_forever(
    start_agent: Any, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that opens uploads the old way (no streams) and answers every chunk with an
    unchanged offset: `outpost deploy` must give up (as the streamed paths do), not loop."""
    real_post, real_info = http_api.post_upload, http_api.get_info
    chunks = {"n": 0}

    async def get_info(request: web.Request) -> web.Response:  # an agent of protocol 1
        response = await real_info(request)
        info = json.loads(response.body)
        info.update(protocol=1, protocol_min=1)
        return web.json_response(info, status=response.status)

    async def post_upload(request: web.Request) -> web.Response:
        response = await real_post(request)
        state = json.loads(response.body)
        for key in ("chain", "piece_size", "pieces"):
            state.pop(key, None)
        return web.json_response(state, status=response.status)

    async def put_upload_chunk(request: web.Request) -> web.Response:
        await request.read()
        chunks["n"] += 1
        return web.json_response({"offset": int(request.headers["Upload-Offset"])})

    monkeypatch.setattr(http_api, "get_info", get_info)
    monkeypatch.setattr(http_api, "post_upload", post_upload)
    monkeypatch.setattr(http_api, "put_upload_chunk", put_upload_chunk)
    agent = start_agent()
    device_id = exported_and_paired(ws, agent, tmp_path)

    done: dict[str, Any] = {}

    def run() -> None:
        try:
            devices.deploy(ws, "exp1", device_id)
        except BaseException as exc:  # noqa: BLE001
            done["error"] = exc
        done["over"] = True

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert done.get("over"), f"deploy still running after 20 s, {chunks['n']} chunks sent"


def test_a_device_that_trickles_its_answer_does_not_hold_the_desktop(tmp_path: Path) -> None:
    """`outpost devices add HOST:PORT --timeout 1`: a device that answers one byte a second
    (a hung or hostile agent) must not keep the command for minutes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        body = b'{"agent_id": "x"}' + b" " * 200
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        for byte in body:
            if stop.wait(0.5):
                break
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    ws = Workspace.open(tmp_path / "ws")
    result: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            devices.add_device(ws, f"127.0.0.1:{port}", timeout=1.0)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc
        result["s"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(15)
    hung = thread.is_alive()
    stop.set()
    thread.join(5)
    ws.close()
    assert not hung, "devices add --timeout 1 still waiting after 15 s"
