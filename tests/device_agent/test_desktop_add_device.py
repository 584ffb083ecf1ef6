"""``outpost devices add HOST:PORT``: a device recorded by its address where mDNS does not
reach, then paired and used like a discovered one; and everything that is not an agent
refused with one line, nothing recorded."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.workspace import Workspace
from device_agent import DEFAULT_PORT, PROTOCOL_VERSION, __version__
from device_agent.auth import KeyPair, agent_id_for, b64
from device_agent.client import AgentUnreachableError
from device_agent.discovery import DeviceInfo
from device_agent.pairing import issue_code
from tests.fakes import make_image_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.4.17", ("10.0.4.17", DEFAULT_PORT)),
        ("10.0.4.17:9000", ("10.0.4.17", 9000)),
        (" http://jetson-7.local:8765/ ", ("jetson-7.local", 8765)),
        ("[fe80::1%eth0]:9000", ("fe80::1%eth0", 9000)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("fd00::17", ("fd00::17", DEFAULT_PORT)),
    ],
)
def test_addresses_are_read_as_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert devices.parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "cannot read the address"),
        ("a b:80", "cannot read the address"),
        ("host/path:80", "without a path"),
        ("10.0.0.1:8765/v1", "without a path"),
        ("[::1", "write \\[IPV6\\]:PORT"),
        ("[::1]x", "write \\[IPV6\\]:PORT"),
        ("10.0.0.1:0", "from 1 to 65535"),
        ("10.0.0.1:70000", "from 1 to 65535"),
        ("10.0.0.1:８０", "from 1 to 65535"),
        ("10.0.0.1:http", "from 1 to 65535"),
        ("https://10.0.0.1:8765", "over http://HOST:PORT"),
        ("ftp://10.0.0.1", "over http://HOST:PORT"),
    ],
)
def test_unreadable_addresses_say_what_to_write(text: str, reason: str) -> None:
    with pytest.raises(devices.DeviceError, match=reason):
        devices.parse_address(text)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_device_added_by_address_pairs_and_serves(
    ws: Workspace, agent: Any, package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _port(agent.url)
    agent_id = agent.service.identity.agent_id
    root = ["--workspace", str(ws.root)]
    assert outpost(["devices", "add", f"127.0.0.1:{port}", *root]) == 0
    out = capsys.readouterr().out
    assert f"{agent_id}) at 127.0.0.1:{port}" in out
    assert f"outpost devices pair {agent_id} --code NNNNNN" in out
    assert agent.service.identity.key.fingerprint in out
    (row,) = devices.list_devices(ws)
    assert (row["id"], row["address"], row["port"], row["paired"]) == (
        agent_id,
        "127.0.0.1",
        port,
        False,
    )
    assert row["version"] == __version__
    assert not agent.service.pairing.desktops  # nothing is trusted by adding

    code = issue_code(agent.service.data_dir).code
    assert outpost(["devices", "pair", agent_id[:6], "--code", code, *root]) == 0
    _, client = devices.connect(ws, agent_id)
    with client:
        client.upload_package(package)
        client.infer(make_image_bytes())
    # its details fill the columns mDNS would have: platform and arch come from the device
    detail = devices.device_detail(ws, agent_id)
    (row,) = devices.list_devices(ws)
    assert row["paired"] is True
    assert row["platform"] and row["platform"] == detail["platform"]
    assert row["arch"] and row["arch"] == detail["arch"]

    # added again (the same address): still one device, still paired
    answer = devices.add_device(ws, f"http://127.0.0.1:{port}")
    assert (answer["id"], answer["paired"]) == (agent_id, True)
    assert len(devices.list_devices(ws)) == 1


def test_a_paired_device_that_moved_keeps_its_pairing(
    ws: Workspace, start_agent: Callable[..., Any], tmp_path: Path
) -> None:
    first = start_agent(tmp_path / "device")
    agent_id = first.service.identity.agent_id
    devices.add_device(ws, f"127.0.0.1:{_port(first.url)}")
    devices.pair(ws, agent_id, issue_code(first.service.data_dir).code)
    first.stop()
    moved = start_agent(tmp_path / "device")  # the same device (its key), on another port
    with pytest.raises(AgentUnreachableError, match="check that outpost-agent is running"):
        devices.connect(ws, agent_id)  # its old address: no mDNS to fall back on
    devices.add_device(ws, f"127.0.0.1:{_port(moved.url)}")
    dev, client = devices.connect(ws, agent_id)
    with client:
        assert client.info()["paired"] is True
    assert dev.port == _port(moved.url)


def test_a_paired_device_moves_only_where_it_answers_with_its_key(
    ws: Workspace,
    start_agent: Callable[..., Any],
    tmp_path: Path,
    serve: Callable[[Callable[[], tuple[int, str, bytes]]], Any],
) -> None:
    """An advertisement or a public /v1/info proves nothing: anyone on the LAN can send a
    paired device's. Neither moves the device; the agent signing with the pinned key does."""
    first = start_agent(tmp_path / "device")
    agent_id = first.service.identity.agent_id
    devices.add_device(ws, f"127.0.0.1:{_port(first.url)}")
    devices.pair(ws, agent_id, issue_code(first.service.data_dir).code)
    public = first.service.identity.key
    # a replay of its public /v1/info at another address
    replay = serve(
        lambda: _info(agent_id=agent_id, name="cam", public_key=public.public_b64, protocol=4)
    )
    with pytest.raises(devices.DeviceError, match="did not answer with its key"):
        devices.add_device(ws, f"127.0.0.1:{replay.port}")
    assert devices.get_device(ws, agent_id).port == _port(first.url)

    def advertised(
        port: int, name: str = "spoof", addresses: tuple[str, ...] = ("127.0.0.1",)
    ) -> DeviceInfo:
        return DeviceInfo(agent_id, name, addresses[0], port, addresses, "", "", 4, "", ())

    # an advertisement from another host: kept as a candidate, the device stays
    other = start_agent(tmp_path / "other")  # another agent (another key) there
    devices._upsert(ws, advertised(_port(other.url)))
    dev = devices.get_device(ws, agent_id)
    assert (dev.port, dev.name) == (_port(first.url), first.service.identity.name)
    assert dev.info[devices.CANDIDATE_KEY]["port"] == _port(other.url)  # and not renamed
    first.stop()
    with pytest.raises(AgentUnreachableError):  # the candidate does not hold the key
        devices.connect(ws, agent_id)
    assert devices.get_device(ws, agent_id).port == _port(first.url)
    # the real device, restarted on another port and advertised there, its first address
    # one that does not reach it (a docker bridge sorts first): moved on first use
    moved = start_agent(tmp_path / "device")
    devices._upsert(ws, advertised(_port(moved.url), "cam", ("127.0.0.2", "127.0.0.1")))
    dev, client = devices.connect(ws, agent_id)
    with client:
        assert client.info()["paired"] is True
    assert (dev.host, dev.port) == ("127.0.0.1", _port(moved.url))
    assert devices.CANDIDATE_KEY not in dev.info


class _Server:
    """A plain HTTP server on 127.0.0.1 that answers every GET with ``answer``."""

    def __init__(self, answer: Callable[[], tuple[int, str, bytes]]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                status, content_type, body = answer()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[], tuple[int, str, bytes]]], _Server]]:
    servers: list[_Server] = []

    def start(answer: Callable[[], tuple[int, str, bytes]]) -> _Server:
        servers.append(_Server(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _info(**fields: Any) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(fields).encode()


def _liar() -> tuple[int, str, bytes]:
    key = KeyPair.generate()
    # another agent's id with this key: the id does not stand for the key
    return _info(agent_id="0123456789abcdef", name="x", public_key=key.public_b64, protocol=4)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            lambda: (404, "text/html", b"<html>" + b"x" * 500 + b"</html>"),
            r"does not answer as an outpost-agent \(HTTP 404 to /v1/info\)",
        ),
        (
            lambda: (200, "text/html", b"<html>hello</html>"),
            r"does not answer as an outpost-agent \(its /v1/info is not an agent's\)",
        ),
        (lambda: _info(name="printer", protocol=4), "no id or key in its /v1/info"),
        (
            lambda: _info(agent_id="0123456789abcdef", public_key="!!", protocol=4),
            "no id or key",
        ),
        (_liar, "calls itself 0123456789abcdef but its key stands for"),
        (
            lambda: _info(agent_id="x", public_key=b64(b"k" * 32), protocol=99, protocol_min=99),
            "agent speaks protocol 99.*update the desktop",
        ),
    ],
)
def test_what_is_not_an_agent_is_refused_and_nothing_is_recorded(
    ws: Workspace,
    serve: Callable[[Callable[[], tuple[int, str, bytes]]], _Server],
    capsys: pytest.CaptureFixture[str],
    answer: Callable[[], tuple[int, str, bytes]],
    reason: str,
) -> None:
    server = serve(answer)
    with pytest.raises(Exception, match=reason):
        devices.add_device(ws, f"127.0.0.1:{server.port}")
    assert outpost(["devices", "add", f"127.0.0.1:{server.port}", "--workspace", str(ws.root)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and len(err) < 400
    assert devices.list_devices(ws) == []


def test_an_address_where_nothing_listens_is_unreachable(
    ws: Workspace, serve: Callable[[Callable[[], tuple[int, str, bytes]]], _Server]
) -> None:
    server = serve(lambda: _info())
    port = server.port
    server.close()
    with pytest.raises(
        AgentUnreachableError, match=f"cannot reach agent at http://127.0.0.1:{port}"
    ):
        devices.add_device(ws, f"127.0.0.1:{port}", timeout=2.0)
    assert devices.list_devices(ws) == []


def test_an_unknown_device_points_at_add(ws: Workspace) -> None:
    with pytest.raises(devices.NotFoundError, match="outpost devices add HOST:PORT"):
        devices.get_device(ws, "feedfacefeedface")


def test_a_browse_that_finds_nothing_points_at_add(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["devices", "list", "--interface", "127.0.0.1", "--timeout", "0.5"]
    assert outpost([*argv, "--workspace", str(ws.root)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "(none)"
    assert "no agent answered on 127.0.0.1 within 0.5 s" in captured.err
    assert "outpost devices add HOST:PORT" in captured.err


def test_what_a_device_says_of_itself_is_kept_printable_and_within_its_column(
    ws: Workspace, serve: Callable[[Callable[[], tuple[int, str, bytes]]], _Server]
) -> None:
    key = KeyPair.generate()
    agent_id = agent_id_for(key.public_raw)
    hostile = "\x1b[2J\x1b[31mcam\r\n" + "x" * 500
    server = serve(
        lambda: _info(
            agent_id=agent_id,
            name=hostile,
            version="1.0\x07" + "9" * 100,
            public_key=key.public_b64,
            protocol=PROTOCOL_VERSION,
        )
    )
    added = devices.add_device(ws, f"127.0.0.1:{server.port}")
    (row,) = devices.list_devices(ws)
    for shown in (added, row):
        assert shown["name"].startswith("[2J[31mcam") and len(shown["name"]) == 128
        assert shown["name"].isprintable()
        assert shown["version"].isprintable() and len(shown["version"]) == 32

    # the same from mDNS TXT records (255 bytes each)
    advertised = DeviceInfo(
        agent_id=agent_id,
        name="\x00" * 3 + "n" * 250,
        host="127.0.0.1",
        port=server.port,
        addresses=("127.0.0.1",),
        platform="p" * 250,
        arch="a\n" * 100,
        protocol=PROTOCOL_VERSION,
        version="",
        runtimes=(),
    )
    devices._upsert(ws, advertised)
    (row,) = devices.list_devices(ws)
    assert row["name"] == "n" * 128
    assert (len(row["platform"]), row["arch"], row["version"]) == (64, "a" * 32, None)
