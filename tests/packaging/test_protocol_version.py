"""Versions and protocol negotiation: each side refuses an incompatible peer and names who updates."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import httpx
import pytest

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.workspace import Workspace
from device_agent import http_api
from device_agent import protocol_version as pv
from device_agent.cli import main as outpost_agent
from device_agent.client import AgentClient, IncompatibleProtocolError
from device_agent.mdns import Advertiser
from device_agent.pairing import issue_code
from tests.device_agent.conftest import AgentThread
from tests.device_agent.desktop_helpers import record_device

R = pv.ProtocolRange


def test_versions_come_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    installed = version("outpost")
    for main, name in ((outpost, "outpost"), (outpost_agent, "outpost-agent")):
        with pytest.raises(SystemExit) as exc:
            main(["--version"])
        assert exc.value.code == 0
        assert capsys.readouterr().out.strip() == f"{name} {installed} (protocol {pv.LOCAL})"


@pytest.mark.parametrize(
    ("agent", "desktop", "expected"),
    [
        (R(1, 1), R(1, 1), None),
        (R(3, 1), R(2, 2), None),  # a newer agent that still speaks 2
        (R(2, 2), R(3, 1), None),  # a newer desktop that still speaks 2
        (R(3, 3), R(2, 1), "agent speaks protocol 3, this desktop 1..2: update the desktop"),
        (R(1, 1), R(3, 2), "agent speaks protocol 1, this desktop 2..3: update the agent"),
    ],
)
def test_the_desktop_verdict_names_the_side_to_update(
    agent: pv.ProtocolRange, desktop: pv.ProtocolRange, expected: str | None
) -> None:
    verdict = pv.agent_mismatch(agent, desktop)
    if expected is None:
        assert verdict is None
        assert R(agent.current, agent.minimum).agreed(desktop) == min(
            agent.current, desktop.current
        )
    else:
        assert verdict is not None and verdict.startswith(expected)
        assert agent.agreed(desktop) is None


def test_the_agent_verdict_names_the_side_to_update() -> None:
    old = pv.desktop_mismatch(R(1, 1), R(3, 2))
    assert old is not None and old.startswith(
        "desktop speaks protocol 1, this agent 2..3: update the desktop (pip install -U outpost"
    )
    new = pv.desktop_mismatch(R(5, 4), R(3, 2))
    assert new is not None and "update the agent (pip install -U 'outpost[agent]'" in new
    assert pv.check_request_headers({}, R(3, 2)) == (True, None)  # curl, an application's key
    ok, why = pv.check_request_headers({pv.PROTOCOL_HEADER: "two"}, R(1, 1))
    assert not ok and why is not None and "must be a whole number" in why
    assert pv.check_request_headers(
        {pv.PROTOCOL_HEADER: "2", pv.PROTOCOL_MIN_HEADER: "1"}, R(1, 1)
    ) == (
        True,
        None,
    )


def test_info_and_txt_carry_the_versions(agent: AgentThread) -> None:
    info = httpx.get(agent.url + "/v1/info", timeout=10).json()
    assert info["version"] == version("outpost")
    assert (info["protocol"], info["protocol_min"]) == (pv.PROTOCOL, pv.PROTOCOL_MIN)
    adv = Advertiser(agent_id="a1", port=1, properties={"id": "a1", "proto": "0"})
    assert adv.properties["proto"] == str(pv.PROTOCOL)
    assert adv.properties["proto_min"] == str(pv.PROTOCOL_MIN)
    txt = agent.service.txt_properties()
    assert txt["version"] == version("outpost")


def test_the_agent_refuses_a_newer_desktop_with_426(agent: AgentThread) -> None:
    with agent.client() as client:
        assert client.info()["paired"] is True and client.protocol == pv.PROTOCOL
        newer = R(pv.PROTOCOL + 2, pv.PROTOCOL + 1)
        client._http.headers.update(pv.protocol_headers(newer))
        assert client._line is not None  # reads go over the kept-alive line, changes over httpx
        client._line.headers.update(pv.protocol_headers(newer))
        with pytest.raises(IncompatibleProtocolError) as over_httpx:
            client.activate("shapes")
        with pytest.raises(IncompatibleProtocolError) as exc:
            client.models()
    assert exc.value.status == over_httpx.value.status == 426
    assert str(exc.value) == str(over_httpx.value)
    assert str(exc.value).startswith(
        f"desktop speaks protocol {newer}, this agent {pv.LOCAL}: update the agent"
    )
    # /v1/info still answers, so a desktop can read the agent's range.
    raw = httpx.get(agent.url + "/v1/info", headers=pv.protocol_headers(newer), timeout=10)
    assert raw.status_code == 200


def test_the_agent_refuses_an_older_desktop(
    agent: AgentThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pv, "LOCAL", R(3, 2))  # this agent now speaks 2..3
    answer = httpx.get(agent.url + "/v1/health", headers=pv.protocol_headers(R(1, 1)), timeout=10)
    assert answer.status_code == 426
    assert answer.json()["error"].startswith(
        "desktop speaks protocol 1, this agent 2..3: update the desktop (pip install -U outpost"
    )
    assert answer.headers[pv.PROTOCOL_HEADER] == "3"
    assert answer.headers[pv.PROTOCOL_MIN_HEADER] == "2"
    unlabelled = httpx.get(agent.url + "/v1/health", timeout=10)
    assert unlabelled.status_code == 401  # no protocol header: on to the usual key check


def _fake_agent(info: dict[str, Any]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers[pv.PROTOCOL_HEADER] == str(pv.PROTOCOL)
        assert request.headers[pv.PROTOCOL_MIN_HEADER] == str(pv.PROTOCOL_MIN)
        return httpx.Response(200, json={"agent_id": "fake", **info})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (
            {"protocol": pv.PROTOCOL + 2, "protocol_min": pv.PROTOCOL + 1},
            "update the desktop (pip install -U outpost",
        ),
        ({"protocol": 0}, "unreadable protocol (0); update the agent"),
    ],
)
def test_the_desktop_refuses_a_fake_agent(info: dict[str, Any], message: str) -> None:
    with AgentClient("http://fake", transport=_fake_agent(info)) as client:
        with pytest.raises(
            IncompatibleProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")
        ):
            client.info()


def test_an_agent_from_before_negotiation_speaks_protocol_1() -> None:
    with AgentClient("http://fake", transport=_fake_agent({})) as client:
        assert client.info()["agent_id"] == "fake" and client.protocol == 1


def test_a_paired_device_with_a_newer_protocol_is_refused_by_name(
    ws: Workspace, agent: AgentThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_id = record_device(ws, agent)
    devices.pair(ws, device_id, issue_code(agent.service.data_dir).code)
    assert devices.connect(ws, device_id)[1].protocol == pv.PROTOCOL
    newer = {"version": "9.0.0", "protocol": pv.PROTOCOL + 2, "protocol_min": pv.PROTOCOL + 2}
    monkeypatch.setattr(http_api, "info_fields", lambda: newer)
    with pytest.raises(devices.DeviceError) as exc:
        devices.connect(ws, device_id)
    assert str(exc.value).startswith(f"device bench ({device_id}): agent speaks protocol ")
    assert str(exc.value).endswith(
        "update the desktop (pip install -U outpost, or install the new Outpost Studio)"
    )
