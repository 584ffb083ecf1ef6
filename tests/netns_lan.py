"""A simulated LAN in network namespaces, for the ``netns`` tests and ``benchmarks/lan_deploy.py``.

One namespace holds a bridge; every host is a namespace of its own whose ``eth0`` is one end
of a veth pair, the other end plugged into the bridge. Addresses live inside the namespaces
only, so nothing here touches the machine's own interfaces, and mDNS stays on the simulated
LAN (never on the root namespace's default interfaces).

A link can be made worse with :meth:`Lan.impair`: nftables drops a share of the host's
packets at random (``numgen random mod 100 < N drop``; ``tc netem`` is not in every kernel)
and a ``tbf`` queue limits its sending rate. :meth:`Lan.drop_multicast` keeps mDNS from a
host (nftables too).

Every name carries a tag unique to the run, and :meth:`Lan.close` (also on ``__exit__``)
stops the processes started through the LAN, deletes the nftables tables and the
namespaces (which take their veth ends along), even after a failure halfway through setup.

Needs root, ``ip`` (iproute2) with network namespaces; :meth:`Lan.impair` also needs ``nft``
and ``tc``. :func:`preflight` says why a machine cannot run it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

NFT_TABLE = "outpost_lan"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; CalledProcessError (with stderr) when it fails."""
    return subprocess.run(argv, capture_output=True, text=True, check=check)  # noqa: S603


def preflight(impair: bool = False) -> str | None:
    """Why this machine cannot build the LAN (``impair``: or degrade a link), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs the 'ip' tool (iproute2) for network namespaces"
    if sh("ip", "netns", "list", check=False).returncode != 0:
        return "'ip netns' does not work here (no network namespace support)"
    if impair:
        for tool in ("nft", "tc"):
            if shutil.which(tool) is None:
                return f"needs '{tool}' to simulate a lossy, rate-limited link"
    return None


@dataclass(frozen=True)
class Host:
    """One machine on the LAN: its namespace, its ``eth0`` address and its bridge port."""

    name: str
    ns: str
    ip: str
    port: str  # the veth end in the bridge namespace

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]


class Lan:
    """A bridge and hosts on ``<subnet>.0/24``; remove everything with :meth:`close`.

    Args:
        subnet: the first three octets of the LAN's addresses (hosts get .1, .2, ...).
        tag: the suffix of every name (default: random, unique per run).
    """

    def __init__(self, subnet: str = "10.77.0", tag: str | None = None) -> None:
        self.subnet = subnet
        self.tag = tag or secrets.token_hex(3)
        self.bridge_ns = f"opbr-{self.tag}"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._impaired: list[Host] = []
        self._procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Lan:
        try:
            self._add_ns(self.bridge_ns)
            sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            # Snooping could hold back mDNS until a querier shows up: flood multicast instead.
            sh(
                "ip",
                "-n",
                self.bridge_ns,
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            )
            sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new namespace ``name`` on the LAN with the next free address."""
        index = len(self.hosts) + 1
        host = Host(name, f"op{name[:6]}-{self.tag}", f"{self.subnet}.{index}", f"p{index}")
        try:
            self._add_ns(host.ns)
            sh(
                "ip", "link", "add", "eth0", "netns", host.ns, "type", "veth",
                "peer", "name", host.port, "netns", self.bridge_ns,
            )  # fmt: skip
            sh("ip", "-n", self.bridge_ns, "link", "set", host.port, "master", "br0")
            sh("ip", "-n", self.bridge_ns, "link", "set", host.port, "up")
            sh("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            sh("ip", "-n", host.ns, "link", "set", "eth0", "multicast", "on")
            sh("ip", "-n", host.ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        self.hosts.append(host)
        return host

    def impair(self, host: Host, *, loss_percent: int = 1, rate: str = "16mbit") -> None:
        """Drop ``loss_percent`` % of ``host``'s packets both ways and cap its sending rate."""
        drop = f"numgen random mod 100 < {loss_percent} drop"
        self._filter(host, drop, drop)
        sh(
            "ip", "netns", "exec", host.ns, "tc", "qdisc", "add", "dev", "eth0", "root",
            "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
        )  # fmt: skip

    def drop_multicast(self, host: Host) -> None:
        """Drop every multicast packet to and from ``host`` (mDNS among them), as guest Wi-Fi
        or a managed switch may: it reaches the other hosts by unicast only."""
        self._filter(
            host,
            "meta pkttype multicast drop",
            "ip daddr 224.0.0.0/4 drop\n    ip6 daddr ff00::/8 drop",
        )

    def _filter(self, host: Host, incoming: str, outgoing: str) -> None:
        """``host``'s nftables table: the rules ``incoming`` on its input hook and ``outgoing``
        on its output hook (deleted by :meth:`close`)."""
        self._impaired.append(host)
        rules = (
            f"table inet {NFT_TABLE} {{\n"
            f"  chain in {{\n    type filter hook input priority 0; policy accept;\n    {incoming}\n  }}\n"
            f"  chain out {{\n    type filter hook output priority 0; policy accept;\n    {outgoing}\n  }}\n"
            "}\n"
        )
        subprocess.run(  # noqa: S603
            host.argv(["nft", "-f", "-"]), input=rules, capture_output=True, text=True, check=True
        )

    def shape(self, host: Host, rate: str) -> None:
        """Cap ``host``'s sending rate at ``rate`` (``tc`` units: ``1gbit``, ``100mbit``), no
        loss: a real LAN's line rate instead of the veth's memory-copy speed."""
        self._impaired.append(host)
        sh(
            "ip", "netns", "exec", host.ns, "tc", "qdisc", "add", "dev", "eth0", "root",
            "tbf", "rate", rate, "burst", "1mb", "latency", "50ms",
        )  # fmt: skip

    def popen(self, host: Host, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``; :meth:`close` stops it if it still runs."""
        proc = subprocess.Popen(host.argv(argv), **kwargs)  # noqa: S603
        self._procs.append(proc)
        return proc

    def run(self, host: Host, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` to completion (text output captured)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(host.argv(argv), **kwargs)  # noqa: S603

    def close(self) -> None:
        """Stop the processes, delete the nftables tables and every namespace (idempotent)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self._procs.clear()
        for host in self._impaired:
            sh(*host.argv(["nft", "delete", "table", "inet", NFT_TABLE]), check=False)
        self._impaired.clear()
        for ns in reversed(self._namespaces):
            with contextlib.suppress(OSError):
                sh("ip", "netns", "del", ns, check=False)  # takes its veth ends along
        self._namespaces.clear()
