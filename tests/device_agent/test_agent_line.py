"""A desktop's reads and images go through one kept-alive connection (``AgentLine``), signed
and checked as every other request: the same answers, errors and identity checks as httpx's
path, a connection the agent closed replaced, the agent's clock learnt, a busy line passed by."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from device_agent import line as agent_line
from device_agent.auth import FingerprintMismatchError, KeyPair
from device_agent.client import AgentClient, AgentRejectedError, AgentUnreachableError
from device_agent.errors import AgentAnswerError
from tests.fakes import EXPECTED, make_image_bytes


def _line(client: AgentClient) -> agent_line.AgentLine:
    line = client._line
    assert line is not None, "a paired desktop's client has a line"
    return line


def _close_agent_side(agent: Any) -> None:
    """The agent closes every kept-alive connection, as it does after its keep-alive timeout."""
    server = agent.service._runner.server

    async def close() -> None:
        for handler in list(server.connections):
            if handler.transport is not None:
                handler.transport.close()
        await asyncio.sleep(0.05)

    asyncio.run_coroutine_threadsafe(close(), agent.loop).result(10)


def test_reads_and_images_share_one_kept_alive_connection(agent: Any, package: Path) -> None:
    image = make_image_bytes()
    with agent.client() as client:
        assert client.info()["paired"] is True  # connecting to a device: the line opens
        client.upload_package(package)  # a stream: through httpx
        assert client.models()[0]["name"] == "shapes"
        assert client.ready()["models"] == ["shapes"]  # as a paired desktop
        for _ in range(5):
            assert client.infer(image)["detections"] == list(EXPECTED)
            found = client.infer_model("shapes", image, conf=0.85)["detections"]
            assert [d["class_name"] for d in found] == ["circle"]  # the threshold went along
        assert _line(client).opened == 1
    assert agent.service.stats.summary("shapes")["requests"] == 10


def test_a_connection_the_agent_closed_is_replaced(
    agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image_bytes()
    with agent.client() as client:
        client.upload_package(package)
        assert client.infer(image)["detections"] == list(EXPECTED)
        _close_agent_side(agent)  # seen before the next request goes out: a new connection
        assert client.infer(image)["detections"] == list(EXPECTED)
        assert _line(client).opened == 2
        # closed as the request leaves (not seen before): sent again on a new connection,
        # under a new nonce
        _close_agent_side(agent)
        monkeypatch.setattr(agent_line, "_readable", lambda sock: False)
        assert client.infer(image)["detections"] == list(EXPECTED)
        assert _line(client).opened == 3


def test_the_line_signs_again_with_the_agents_clock(agent: Any, package: Path) -> None:
    ahead = 7200.0
    with agent.client() as client:
        client.upload_package(package)
    agent.service.replay_guard.clock = lambda: time.time() + ahead
    with agent.client() as client:  # its first request is an image: refused, then signed again
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)
        assert abs(client.auth.clock_offset - ahead) < 5
        assert _line(client).opened == 1
    with agent.client() as client:  # and a read
        assert client.stats()["agent_id"] == agent.service.identity.agent_id
        assert abs(client.auth.clock_offset - ahead) < 5


def test_the_lines_errors_are_the_clients(agent: Any, package: Path) -> None:
    image = make_image_bytes()
    with agent.client() as client:
        client.upload_package(package)
        with pytest.raises(AgentRejectedError) as missing:
            client.infer_model("nope", image)
        assert missing.value.status == 404 and "nope" in missing.value.message
        with pytest.raises(AgentRejectedError) as bad:
            client.infer_model("shapes", b"not an image")
        assert bad.value.status == 400
        assert client.infer(image)["detections"] == list(EXPECTED)  # the line still serves
    impostor = KeyPair.generate().public_raw
    with AgentClient(agent.url, key=agent.desktop_key, agent_key=impostor) as client:
        with pytest.raises(FingerprintMismatchError, match="fingerprint mismatch"):
            client.infer(image)
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with AgentClient(
        f"http://127.0.0.1:{port}", timeout=2, key=agent.desktop_key, agent_id="0123456789abcdef"
    ) as client:
        with pytest.raises(
            AgentUnreachableError,
            match=f"cannot reach agent at http://127.0.0.1:{port}/v1/models/m/infer",
        ):
            client.infer_model("m", image)


def test_a_busy_line_passes_requests_to_httpx(agent: Any, package: Path) -> None:
    image = make_image_bytes()
    with agent.client() as client:
        client.upload_package(package)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: client.infer(image)["detections"], range(16)))
        assert results == [list(EXPECTED)] * 16
        assert _line(client).opened == 1
        with _line(client).lock:  # another thread's image in flight
            assert client.infer(image)["detections"] == list(EXPECTED)


def test_no_line_through_a_proxy(agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with agent.client() as client:
        assert client._line is None  # httpx sends it through the proxy, as everything else
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with agent.client() as client:
        assert client._line is not None
    with AgentClient(agent.url) as unsigned:
        assert unsigned._line is None


class _NotAnAgent(http.server.BaseHTTPRequestHandler):
    """Answers with 100 GiB declared, or a gzip body (a path with ``/gzip/``)."""

    def do_GET(self) -> None:  # noqa: N802
        self.do_POST()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if "/gzip/" in self.path:
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        self.send_header("Content-Length", str(100 << 30))
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_the_line_refuses_an_answer_no_agent_gives() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAnAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with AgentClient(
            url, timeout=10, key=KeyPair.generate(), agent_id="0123456789abcdef"
        ) as client:
            with pytest.raises(AgentAnswerError, match="is larger than 64 MiB, which no"):
                client.infer_model("huge", make_image_bytes())
            with pytest.raises(AgentAnswerError, match=r"is compressed \(gzip\), which no"):
                client.infer_model("gzip", make_image_bytes())
            with pytest.raises(AgentAnswerError, match="is larger than 64 MiB, which no"):
                client.stats()
    finally:
        server.shutdown()
        server.server_close()
