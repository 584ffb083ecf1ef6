"""mDNS advertisement and discovery, on loopback only (never on this machine's real network)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from device_agent import PROTOCOL_VERSION, __version__
from device_agent.discovery import async_browse, browse
from device_agent.errors import DiscoveryError
from device_agent.mdns import advertised_addresses, instance_name

LOOPBACK = ["127.0.0.1"]


def test_advertised_and_discovered_then_withdrawn(start_agent: Any) -> None:
    running = start_agent(host="127.0.0.1", port=0, interfaces=LOOPBACK, advertise=True)
    service = running.service
    assert service.advertised
    agent_id = service.identity.agent_id

    found = browse(LOOPBACK, timeout=10, want_id=agent_id)
    device = next(d for d in found if d.agent_id == agent_id)
    assert (device.host, device.port, device.addresses) == (
        "127.0.0.1",
        service.port,
        ("127.0.0.1",),
    )
    assert device.url == service.url
    assert (device.protocol, device.version, device.platform) == (
        PROTOCOL_VERSION,
        __version__,
        sys.platform,
    )
    assert device.name == service.identity.name
    assert "onnxruntime" in device.runtimes

    running.stop()  # sends goodbyes: a fresh browse no longer sees it
    assert agent_id not in {d.agent_id for d in browse(LOOPBACK, timeout=1.0)}


def test_browse_rejects_a_non_address() -> None:
    with pytest.raises(DiscoveryError, match="not an IP address"):
        asyncio.run(async_browse(["eth0"], timeout=0.1))


def test_addresses_and_names() -> None:
    assert advertised_addresses(LOOPBACK) == ["127.0.0.1"]
    assert all(not a.startswith("127.") or a == "127.0.0.1" for a in advertised_addresses(None))
    assert instance_name("00ff") == "outpost-00ff._outpost._tcp.local."
