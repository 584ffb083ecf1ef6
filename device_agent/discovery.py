"""Find agents on the LAN by mDNS (used by the desktop). Results are keyed by agent id.

TXT records are hints only: trust comes from pairing, never from what a device says here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
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


AGENT_ID = re.compile(r"[0-9a-f]{16}")  # the first 16 hex digits of the key's fingerprint
# How much of each TXT hint is kept: they come from anyone on the LAN.
TEXT_LIMITS = {"name": 128, "platform": 64, "arch": 32, "version": 32, "runtime": 32}
MAX_RUNTIMES = 16


def hint(text: object, limit: int) -> str:
    """A TXT hint as it may be shown: printable characters only (no terminal escapes, line
    breaks or tabs), cut to ``limit``."""
    if not isinstance(text, str):
        return ""
    return "".join(c for c in text if c.isprintable()).strip()[:limit]


def device_from_service_info(
    info: AsyncServiceInfo, *, allow_loopback: bool = False
) -> DeviceInfo | None:
    """Turn a resolved service into a :class:`DeviceInfo`; None when it is not an agent's.

    An agent's service is ``outpost-<id>`` with ``id`` (16 hex digits) also in its TXT; a
    record whose TXT names another id, or none, or that has no port, is not one (it is
    dropped, not stored). The text hints are made printable and cut to size; loopback addresses are
    dropped unless ``allow_loopback`` (a browse on 127.0.0.1), since a device on the LAN
    that advertises 127.0.0.1 cannot be reached there."""
    props = info.decoded_properties
    prefix, suffix = "outpost-", "." + SERVICE_TYPE
    named = (
        info.name[len(prefix) : -len(suffix)]
        if info.name.startswith(prefix) and info.name.endswith(suffix)
        else ""
    )
    agent_id = props.get("id") or ""
    if not AGENT_ID.fullmatch(agent_id) or agent_id != named or not info.port:
        log.debug("not an agent's service: %r (TXT id %r)", info.name, props.get("id"))
        return None
    v4 = info.parsed_scoped_addresses(IPVersion.V4Only)
    addresses = tuple(
        a
        for a in v4 + [a for a in info.parsed_scoped_addresses(IPVersion.V6Only) if a not in v4]
        if allow_loopback or not _loopback(a)
    )
    if not addresses:
        return None
    try:
        protocol = int(props.get("proto") or 0)
    except ValueError:
        protocol = 0
    runtimes = tuple(
        r
        for r in (hint(r, TEXT_LIMITS["runtime"]) for r in (props.get("runtimes") or "").split(","))
        if r
    )[:MAX_RUNTIMES]
    return DeviceInfo(
        agent_id=agent_id,
        name=hint(props.get("name"), TEXT_LIMITS["name"]) or agent_id,
        host=addresses[0],
        port=int(info.port),
        addresses=addresses,
        platform=hint(props.get("platform"), TEXT_LIMITS["platform"]),
        arch=hint(props.get("arch"), TEXT_LIMITS["arch"]),
        protocol=protocol,
        version=hint(props.get("version"), TEXT_LIMITS["version"]),
        runtimes=runtimes,
    )


def _loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, their IPv4-mapped forms, and the unspecified addresses: none of
    them reaches a device on the LAN."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or ip.is_unspecified or bool(mapped and mapped.is_loopback)


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
    allow_loopback = any(_loopback(ip) for ip in interfaces or [])
    found: dict[str, DeviceInfo] = {}
    removed: set[str] = set()  # withdrawn during the browse (a resolve may finish after)
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
            device = device_from_service_info(info, allow_loopback=allow_loopback)
        except Exception as exc:  # one odd responder must not end the browse
            log.debug("could not resolve %s: %s", name, exc)
            return
        if device is None or name in removed:
            return
        found[device.agent_id] = device
        if want_id is not None and device.agent_id == want_id:
            wanted.set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            removed.discard(name)
            task = asyncio.get_running_loop().create_task(resolve(name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif state_change is ServiceStateChange.Removed:  # withdrawn during the browse
            removed.add(name)
            found.pop(name.removeprefix("outpost-").removesuffix("." + SERVICE_TYPE), None)

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
