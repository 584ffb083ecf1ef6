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


def _record(
    name_id: str, props: dict[str, str | bytes], addresses: tuple[str, ...] = ("10.0.0.7",)
) -> Any:
    import socket

    from zeroconf import ServiceInfo

    return ServiceInfo(
        "_outpost._tcp.local.",
        f"outpost-{name_id}._outpost._tcp.local.",
        port=8765,
        properties=props,
        addresses=[socket.inet_aton(a) for a in addresses],
    )


def test_a_hostile_advertisement_is_dropped_or_made_printable() -> None:
    """Anyone on the LAN can advertise: an id that is not 16 hex digits or not the service's
    own, an advert of 127.0.0.1 only, are not agents; text hints lose control characters
    (terminal escapes, line breaks) and are cut to size."""
    from device_agent.discovery import device_from_service_info

    good = "0123456789abcdef"
    for name_id, props in (
        ("%", {"id": "%"}),
        ("Z" * 16, {}),
        (good, {"id": "fedcba9876543210"}),  # another agent's id in this one's record
        ("nohexid-missing", {}),
    ):
        assert device_from_service_info(_record(name_id, props)) is None
    assert device_from_service_info(_record(good, {})) is None  # no id in its TXT
    for local in (("127.0.0.1",), ("0.0.0.0",)):
        assert device_from_service_info(_record(good, {"id": good}, local)) is None
    assert device_from_service_info(_record(good, {"id": good})) is not None
    assert (
        device_from_service_info(_record(good, {"id": good}, ("127.0.0.1",)), allow_loopback=True)
        is not None
    )
    hostile = {
        "id": good,
        "name": "\x1b[31mRED\x1b[0m\x1b]0;pwned\x07 evil\nline2\rX",
        "platform": "linux\x1b[2J",
        "version": "9" * 240,
        "runtimes": "onnxruntime,\x1b[2Jx," + ",".join(["r"] * 40),
    }
    device = device_from_service_info(_record(good, hostile))
    assert device is not None and device.agent_id == good
    for text in (device.name, device.platform, device.version, *device.runtimes):
        assert text.isprintable() and "\x1b" not in text
    assert device.name == "[31mRED[0m]0;pwned evilline2X"
    assert device.platform == "linux[2J" and len(device.version) == 32
    assert device.runtimes[0] == "onnxruntime" and len(device.runtimes) == 16
