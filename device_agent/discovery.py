"""Find agents on the LAN by mDNS (used by the desktop). Results are keyed by agent id.

TXT records are hints only: trust comes from pairing, never from what a device says here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from device_agent import SERVICE_TYPE
from device_agent.errors import DiscoveryError, one_line

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class DeviceInfo:
    """One agent as advertised: where to reach it and what it says it is."""

    agent_id: str
    name: str
    host: str
    port: int
    addresses: tuple[str, ...]
    platform: str
    arch: str
    protocol: int
    version: str
    runtimes: tuple[str, ...]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def device_from_service_info(info: AsyncServiceInfo) -> DeviceInfo | None:
    """Turn a resolved service into a :class:`DeviceInfo`; None when it lacks what we need."""
    props = info.decoded_properties
    prefix, suffix = "outpost-", "." + SERVICE_TYPE
    fallback_id = (
        info.name[len(prefix) : -len(suffix)]
        if info.name.startswith(prefix) and info.name.endswith(suffix)
        else ""
    )
    agent_id = props.get("id") or fallback_id
    if not agent_id or not info.port:
        return None
    v4 = info.parsed_scoped_addresses(IPVersion.V4Only)
    addresses = tuple(
        v4 + [a for a in info.parsed_scoped_addresses(IPVersion.V6Only) if a not in v4]
    )
    host = addresses[0] if addresses else (info.server or "").rstrip(".")
    if not host:
        return None
    try:
        protocol = int(props.get("proto") or 0)
    except ValueError:
        protocol = 0
    runtimes = tuple(r for r in (props.get("runtimes") or "").split(",") if r)
    return DeviceInfo(
        agent_id=agent_id,
        name=props.get("name") or agent_id,
        host=host,
        port=int(info.port),
        addresses=addresses,
        platform=props.get("platform") or "",
        arch=props.get("arch") or "",
        protocol=protocol,
        version=props.get("version") or "",
        runtimes=runtimes,
    )


def _check_interfaces(interfaces: list[str] | None) -> None:
    for ip in interfaces or []:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise DiscoveryError(
                f"{ip!r} is not an IP address; pass the address of a local interface"
            ) from None


async def async_browse(
    interfaces: list[str] | None = None, timeout: float = 3.0, want_id: str | None = None
) -> list[DeviceInfo]:
    """Browse for ``timeout`` seconds (less when ``want_id`` turns up) and return the agents found.

    Args:
        interfaces: local IP addresses to browse on; None browses on every interface.
        timeout: seconds to listen.
        want_id: stop as soon as the agent with this id has been resolved.
    """
    _check_interfaces(interfaces)
    found: dict[str, DeviceInfo] = {}
    wanted = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    try:
        aiozc = AsyncZeroconf(interfaces=interfaces or InterfaceChoice.All)
    except Exception as exc:
        where = ", ".join(interfaces) if interfaces else "all interfaces"
        raise DiscoveryError(
            f"cannot browse by mDNS on {where}: {one_line(exc)}; pass --interface"
        ) from None

    async def resolve(name: str) -> None:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(aiozc.zeroconf, RESOLVE_TIMEOUT_MS):
                return
            device = device_from_service_info(info)
        except Exception as exc:  # one odd responder must not end the browse
            log.debug("could not resolve %s: %s", name, exc)
            return
        if device is None:
            return
        found[device.agent_id] = device
        if want_id is not None and device.agent_id == want_id:
            wanted.set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.get_running_loop().create_task(resolve(name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(aiozc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wanted.wait(), timeout)
    finally:
        await browser.async_cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await aiozc.async_close()
    return sorted(found.values(), key=lambda d: (d.name, d.agent_id))


def browse(
    interfaces: list[str] | None = None, timeout: float = 3.0, want_id: str | None = None
) -> list[DeviceInfo]:
    """Blocking :func:`async_browse`, for code without an event loop (the CLI)."""
    return asyncio.run(async_browse(interfaces, timeout, want_id))
