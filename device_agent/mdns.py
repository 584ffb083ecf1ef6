"""The agent's mDNS advertisement: one ``_outpost._tcp.local.`` service with TXT hints.

TXT is a hint only (id, protocol and the oldest protocol accepted, version, platform, arch,
runtimes, name); trust comes from pairing. Tests pass ``interfaces=["127.0.0.1"]`` so nothing leaves the machine; a
real agent advertises on every interface unless told otherwise.

While it runs, the advertiser polls the host's addresses every few seconds (DHCP renewals,
Wi-Fi roaming, a cable moved) and re-announces the service with the new ones, so desktops
that browse again find the device where it now is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable

from zeroconf import InterfaceChoice, NonUniqueNameException, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from device_agent import SERVICE_TYPE
from device_agent.errors import AdvertiseError, one_line
from device_agent.protocol_version import txt_fields

log = logging.getLogger(__name__)

ALL_HOSTS = ("", "0.0.0.0")
ADDRESS_POLL_S = 5.0


def instance_name(agent_id: str) -> str:
    return f"outpost-{agent_id}.{SERVICE_TYPE}"


def machine_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback and link-local left out; none before the
    network is up (advertising 127.0.0.1 would send desktops to themselves)."""
    import ifaddr  # a dependency of zeroconf

    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not ip.is_IPv4 or not isinstance(ip.ip, str):
                continue
            addr = ipaddress.ip_address(ip.ip)
            if not (addr.is_loopback or addr.is_link_local):
                found.add(ip.ip)
    return sorted(found)


def advertised_addresses(interfaces: list[str] | None) -> list[str]:
    chosen = [ip for ip in (interfaces or []) if ip not in ALL_HOSTS]
    return chosen or machine_ipv4_addresses()


class Advertiser:
    """Registers the agent's service on start, re-announces it when the host's addresses
    change, and withdraws it (goodbye packets) on stop.

    Args:
        agent_id: the agent's id (names the service instance).
        port: the HTTP port advertised.
        properties: the TXT record.
        interfaces: addresses to advertise on; None means every interface.
        address_source: returns the addresses to advertise now (default: the interfaces
            given, else this machine's IPv4 addresses); tests inject a fake one.
        poll_interval_s: how often the addresses are checked; 0 disables the polling.
    """

    def __init__(
        self,
        *,
        agent_id: str,
        port: int,
        properties: dict[str, str],
        interfaces: list[str] | None = None,
        address_source: Callable[[], list[str]] | None = None,
        poll_interval_s: float = ADDRESS_POLL_S,
    ) -> None:
        self.agent_id = agent_id
        self.port = port
        self.properties = {**properties, **txt_fields()}  # proto and proto_min, always
        self.interfaces = interfaces
        self.address_source = address_source or (lambda: advertised_addresses(self.interfaces))
        self.poll_interval_s = poll_interval_s
        self.addresses: list[str] = []
        self.reannounced = 0
        self._zc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None
        self._announce: object = None
        self._poller: asyncio.Task[None] | None = None

    def _service_info(self, addresses: list[str]) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            instance_name(self.agent_id),
            port=self.port,
            addresses=[socket.inet_aton(a) for a in addresses],
            properties=self.properties,
            server=f"outpost-{self.agent_id}.local.",
        )

    def _current_addresses(self) -> list[str]:
        try:
            found = sorted(set(self.address_source()))
        except Exception as exc:  # an interface vanishing mid-read: keep what we have
            log.debug("cannot list the host's addresses: %s", one_line(exc))
            return self.addresses
        return found or self.addresses

    @property
    def where(self) -> str:
        return ", ".join(self.interfaces) if self.interfaces else "all interfaces"

    async def async_start(self) -> None:
        """Register the service (once probing says the name is ours), or, on a host with no
        address yet (before DHCP), wait for one: the polling registers it when it comes."""
        addresses = self._current_addresses()
        try:
            self._zc = AsyncZeroconf(interfaces=self.interfaces or InterfaceChoice.All)
            if addresses:
                await self._register(addresses)
        except NonUniqueNameException:
            await self._close()
            raise AdvertiseError(
                f"another host on the network already advertises this agent's id "
                f"({instance_name(self.agent_id)}): is a copy of this --data-dir (its identity "
                "key) serving there? give each device its own data folder"
            ) from None
        except Exception as exc:
            await self._close()
            raise AdvertiseError(
                f"cannot advertise by mDNS on {self.where}: "
                f"{one_line(exc) or type(exc).__name__}; check --interface and that UDP 5353 "
                "is free"
            ) from None
        if not addresses:
            log.info("no IPv4 address on this host yet; advertising once one appears")
        if self.poll_interval_s > 0:
            self._poller = asyncio.create_task(self._poll(), name="outpost-mdns-addresses")

    async def _register(self, addresses: list[str]) -> None:
        assert self._zc is not None
        info = self._service_info(addresses)
        # Returns once probing is done and the name is ours; announcements follow.
        self._announce = await self._zc.async_register_service(info)
        self._info, self.addresses = info, addresses
        log.info(
            "advertising %s on %s (port %d, addresses %s)",
            info.name,
            self.where,
            self.port,
            addresses,
        )

    async def refresh(self) -> bool:
        """Re-announce with the host's current addresses if they changed (register, if there
        was none at start); True if it did."""
        if self._zc is None:
            return False
        addresses = self._current_addresses()
        if addresses == self.addresses or not addresses:
            return False
        if self._info is None:
            await self._register(addresses)
            self.reannounced += 1
            return True
        info = self._service_info(addresses)
        await self._zc.async_update_service(info)
        log.info("host addresses changed %s -> %s; re-announced", self.addresses, addresses)
        self._info, self.addresses = info, addresses
        self.reannounced += 1
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # the network went away for a moment: try again later
                log.warning("mDNS re-announcement failed: %s", one_line(exc))

    async def async_stop(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if self._zc is None or self._info is None:
            await self._close()  # never registered (no address came): nothing to withdraw
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
