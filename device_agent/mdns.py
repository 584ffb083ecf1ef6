"""The agent's mDNS advertisement: one ``_outpost._tcp.local.`` service with TXT hints.

TXT is a hint only (id, protocol, version, platform, arch, runtimes, name); trust comes
from pairing. Tests pass ``interfaces=["127.0.0.1"]`` so nothing leaves the machine; a
real agent advertises on every interface unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from zeroconf import InterfaceChoice, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from device_agent import SERVICE_TYPE
from device_agent.errors import AdvertiseError, one_line

log = logging.getLogger(__name__)

ALL_HOSTS = ("", "0.0.0.0")


def instance_name(agent_id: str) -> str:
    return f"outpost-{agent_id}.{SERVICE_TYPE}"


def machine_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback and link-local left out (loopback if nothing else)."""
    import ifaddr  # a dependency of zeroconf

    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not ip.is_IPv4 or not isinstance(ip.ip, str):
                continue
            addr = ipaddress.ip_address(ip.ip)
            if not (addr.is_loopback or addr.is_link_local):
                found.add(ip.ip)
    return sorted(found) or ["127.0.0.1"]


def advertised_addresses(interfaces: list[str] | None) -> list[str]:
    chosen = [ip for ip in (interfaces or []) if ip not in ALL_HOSTS]
    return chosen or machine_ipv4_addresses()


class Advertiser:
    """Registers the agent's service on start and withdraws it (goodbye packets) on stop."""

    def __init__(
        self,
        *,
        agent_id: str,
        port: int,
        properties: dict[str, str],
        interfaces: list[str] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.port = port
        self.properties = properties
        self.interfaces = interfaces
        self._zc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None
        self._announce: object = None

    async def async_start(self) -> None:
        addresses = advertised_addresses(self.interfaces)
        self._info = ServiceInfo(
            SERVICE_TYPE,
            instance_name(self.agent_id),
            port=self.port,
            addresses=[socket.inet_aton(a) for a in addresses],
            properties=self.properties,
            server=f"outpost-{self.agent_id}.local.",
        )
        where = ", ".join(self.interfaces) if self.interfaces else "all interfaces"
        try:
            self._zc = AsyncZeroconf(interfaces=self.interfaces or InterfaceChoice.All)
            # Returns once probing is done and the name is ours; announcements follow.
            self._announce = await self._zc.async_register_service(self._info)
        except Exception as exc:
            await self._close()
            raise AdvertiseError(
                f"cannot advertise by mDNS on {where}: {one_line(exc)}; check --interface and that UDP 5353 is free"
            ) from None
        log.info(
            "advertising %s on %s (port %d, addresses %s)",
            self._info.name,
            where,
            self.port,
            addresses,
        )

    async def async_stop(self) -> None:
        if self._zc is None or self._info is None:
            return
        try:
            announce = self._announce
            if isinstance(announce, asyncio.Future):
                announce.cancel()  # no need to finish announcing what we withdraw
                await asyncio.wait([announce])
                if not announce.cancelled() and announce.exception() is not None:
                    log.debug("mDNS announcement failed: %s", announce.exception())
            goodbye = await self._zc.async_unregister_service(self._info)
            await goodbye
        except Exception as exc:  # stopping must finish even if the network went away
            log.warning("mDNS withdrawal failed: %s", one_line(exc))
        finally:
            await self._close()
        log.info("withdrew mDNS advertisement %s", self._info.name)

    async def _close(self) -> None:
        zc, self._zc, self._announce = self._zc, None, None
        if zc is not None:
            with contextlib.suppress(Exception):
                await zc.async_close()
