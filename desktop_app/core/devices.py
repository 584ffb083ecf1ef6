"""Devices: discovery by mDNS, pairing, deployment of exports, and usage pulled back.

The desktop's own Ed25519 key lives in ``<workspace>/identity/desktop.key`` (mode 0600). A
paired device's public key is pinned in ``Device.info["pinned_key"]``; every later request
is signed with the desktop key and every answer must be signed by the pinned key.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, cast

from sqlalchemy import select

from desktop_app.core.errors import NotFoundError
from desktop_app.core.exports import get_export
from desktop_app.core.models import Deployment, Device, UsageSample, utcnow
from device_agent.auth import KeyPair, b64, fingerprint, load_or_create_key, unb64
from device_agent.client import (
    AgentClient,
    AgentRejectedError,
    AgentUnreachableError,
    pair_with_agent,
)
from device_agent.discovery import DeviceInfo, browse
from runtimes.errors import OutpostError


class DeviceError(OutpostError):
    """A device could not be reached, trusted or used."""


IDENTITY_DIR = "identity"
DESKTOP_KEY_FILE = "desktop.key"
PIN_KEY = "pinned_key"  # Device.info: base64 raw public key of the paired agent
_CODE = re.compile(r"^\d{6}$")


def desktop_key(ws: Any) -> KeyPair:
    """This workspace's desktop identity, made on first use."""
    key, _ = load_or_create_key(Path(ws.root) / IDENTITY_DIR / DESKTOP_KEY_FILE)
    return key


def pinned_key(dev: Device) -> bytes | None:
    text = (dev.info or {}).get(PIN_KEY)
    return unb64(text, "the pinned key", 32) if isinstance(text, str) else None


def device_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _address(info: DeviceInfo) -> str:
    return info.addresses[0] if info.addresses else info.host


def _upsert(ws: Any, info: DeviceInfo) -> None:
    with ws.session() as s:
        dev = s.get(Device, info.agent_id)
        if dev is None:
            dev = Device(id=info.agent_id, name=info.name, host=_address(info), port=info.port)
            s.add(dev)
        dev.name = info.name
        dev.host = _address(info)  # a known device that comes back on a new address moves
        dev.port = info.port
        dev.platform = info.platform
        dev.arch = info.arch
        dev.agent_version = info.version
        pin = {k: v for k, v in (dev.info or {}).items() if k in (PIN_KEY, "paired_at")}
        dev.info = {
            "runtimes": list(info.runtimes),
            "protocol": info.protocol,
            "addresses": list(info.addresses),
            **pin,  # pairing survives rediscovery
        }
        dev.last_seen = utcnow()


def discover(
    ws: Any, interfaces: list[str] | None, timeout: float = 3.0, want_id: str | None = None
) -> list[dict[str, Any]]:
    """Browse for agents, record every one found, and return them."""
    found = browse(interfaces, timeout=timeout, want_id=want_id)
    for info in found:
        _upsert(ws, info)
    with ws.session() as s:
        paired = {
            d.id for d in s.scalars(select(Device)) if isinstance((d.info or {}).get(PIN_KEY), str)
        }
    return [
        {
            "id": i.agent_id,
            "name": i.name,
            "address": _address(i),
            "port": i.port,
            "platform": i.platform,
            "arch": i.arch,
            "version": i.version,
            "runtimes": list(i.runtimes),
            "paired": i.agent_id in paired,
        }
        for i in found
    ]


def get_device(ws: Any, device_id: str) -> Device:
    with ws.session() as s:
        dev = s.get(Device, device_id)
        if dev is None:
            matches = s.scalars(select(Device).where(Device.id.startswith(device_id))).all()
            if len(matches) == 1:
                dev = matches[0]
        if dev is None:
            raise NotFoundError(
                f"no known device {device_id!r}; find agents first with: outpost devices list"
            )
        s.expunge(dev)
        return cast(Device, dev)


def pair(ws: Any, device_id: str, code: str, interfaces: list[str] | None = None) -> dict[str, Any]:
    """Pair with a known device using the code ``outpost-agent pair`` printed on it.

    The device must answer with a key whose fingerprint is its id; that key is pinned.
    """
    code = code.strip()
    if not _CODE.match(code):
        raise DeviceError(f"the pairing code must be 6 digits, got {code!r}")
    dev = get_device(ws, device_id)
    key = desktop_key(ws)
    name = f"outpost desktop on {socket.gethostname().split('.')[0] or 'localhost'}"
    try:
        agent_key = pair_with_agent(device_url(dev.host, dev.port), key, dev.id, code, name)
    except AgentUnreachableError:
        if interfaces is None and not dev.info.get("addresses"):
            raise
        discover(ws, interfaces, timeout=5.0, want_id=dev.id)
        dev = get_device(ws, dev.id)
        agent_key = pair_with_agent(device_url(dev.host, dev.port), key, dev.id, code, name)
    except AgentRejectedError as exc:
        raise DeviceError(f"device {dev.name} ({dev.id}) refused pairing: {exc.message}") from None
    paired_at = utcnow().isoformat(timespec="seconds")
    with ws.session() as s:
        row = s.get(Device, dev.id)
        if row is not None:
            row.info = {**(row.info or {}), PIN_KEY: b64(agent_key), "paired_at": paired_at}
    return {
        "device": dev.id,
        "name": dev.name,
        "fingerprint": fingerprint(agent_key),
        "desktop_fingerprint": key.fingerprint,
        "paired_at": paired_at,
    }


FORGET_TIMEOUT_S = 5.0


def forget(ws: Any, device_id: str) -> dict[str, Any]:
    """Unpin a device and drop its pairing data here; ask the agent to drop this desktop's key.

    The local forgetting happens whatever the agent says: an unreachable agent (or one that
    no longer knows this desktop, or answers with another key) only adds a ``warning``. The
    device stays known and can be paired again with ``outpost devices pair``.
    """
    dev = get_device(ws, device_id)
    agent_key = pinned_key(dev)
    was_paired = agent_key is not None
    revoked = False
    warning: str | None = None
    if agent_key is not None:
        client = AgentClient(
            device_url(dev.host, dev.port),
            FORGET_TIMEOUT_S,
            key=desktop_key(ws),
            agent_key=agent_key,
        )
        try:
            client.unpair()
            revoked = True
        except AgentUnreachableError as exc:
            warning = (
                f"{exc}; forgotten here only: the device still trusts this desktop's key until "
                "you run outpost-agent unpair on it"
            )
        except AgentRejectedError as exc:
            if exc.status == 401 and "not paired" in exc.message:
                revoked = True  # it no longer knows this desktop
            else:
                warning = (
                    f"the agent refused to forget this desktop ({exc.message}); forgotten here "
                    "only: run outpost-agent unpair on the device"
                )
        except OutpostError as exc:  # a fingerprint mismatch, an altered answer
            warning = f"{exc}; forgotten here only: run outpost-agent unpair on the device"
        finally:
            client.close()
    with ws.session() as s:
        row = s.get(Device, dev.id)
        if row is not None:
            row.info = {
                k: v for k, v in (row.info or {}).items() if k not in (PIN_KEY, "paired_at")
            }
    return {
        "device": dev.id,
        "name": dev.name,
        "was_paired": was_paired,
        "agent_revoked": revoked,
        "warning": warning,
    }


def _client(ws: Any, dev: Device, agent_key: bytes) -> AgentClient:
    return AgentClient(device_url(dev.host, dev.port), key=desktop_key(ws), agent_key=agent_key)


def connect(
    ws: Any, device_id: str, interfaces: list[str] | None = None
) -> tuple[Device, AgentClient]:
    """An authenticated client for a paired device, re-discovering it when its last address
    no longer answers.

    The agent must answer with the key pinned at pairing, or it is refused ("fingerprint
    mismatch").
    """
    dev = get_device(ws, device_id)
    agent_key = pinned_key(dev)
    if agent_key is None:
        raise DeviceError(
            f"device {dev.name} ({dev.id}) is not paired; run outpost-agent pair on it, then: "
            f"outpost devices pair {dev.id} --code NNNNNN"
        )
    client = _client(ws, dev, agent_key)
    try:
        info = client.info()
    except AgentUnreachableError:
        client.close()
        if interfaces is None and not dev.info.get("addresses"):
            raise
        discover(ws, interfaces, timeout=5.0, want_id=dev.id)
        dev = get_device(ws, dev.id)
        client = _client(ws, dev, agent_key)
        info = client.info()
    if info.get("agent_id") != dev.id or info.get("paired") is not True:
        client.close()
        raise DeviceError(
            f"the agent at {dev.host}:{dev.port} no longer knows this desktop; pair it again: "
            f"outpost devices pair {dev.id} --code NNNNNN"
        )
    return dev, client


def deploy(
    ws: Any, export_ref: str, device_id: str, interfaces: list[str] | None = None
) -> dict[str, Any]:
    """Upload an export's package to a device; the deployment is recorded whatever the outcome."""
    exp = get_export(ws, export_ref)
    package = ws.resolve(exp.package_path) if exp.package_path else None
    if exp.status == "failed_validation":
        raise NotFoundError(
            f"export {exp.id} failed parity validation "
            f"({'; '.join((exp.details.get('validation') or {}).get('failures') or ['see outpost exports list --json'])}); "
            "it is not deployed: re-export the run or use another format"
        )
    if exp.status != "completed" or package is None or not package.exists():
        raise NotFoundError(
            f"export {exp.id} has no package to deploy (status {exp.status}); export the run again"
        )
    dev, client = connect(ws, device_id, interfaces)
    model_name = exp.manifest.get("name", exp.id)
    try:
        installed = client.upload_package(package)
        status, message = "installed", None
    except AgentRejectedError as exc:
        installed, status, message = {}, "failed", str(exc)
    with ws.session() as s:
        s.add(
            Deployment(
                export_id=exp.id,
                device_id=dev.id,
                model_name=model_name,
                status=status,
                message=message,
            )
        )
    if status == "failed":
        raise DeviceError(f"device {dev.name} refused export {exp.id}: {message}")
    return {
        "export": exp.id,
        "device": dev.id,
        "model": model_name,
        "status": status,
        "installed": installed,
    }


def pull_usage(
    ws: Any, device_id: str, interfaces: list[str] | None = None
) -> list[dict[str, Any]]:
    """Fetch a device's latency and request counts per model and store them as usage samples."""
    dev, client = connect(ws, device_id, interfaces)
    stats = client.stats()
    rows = []
    with ws.session() as s:
        for model_name, st in (stats.get("models") or {}).items():
            lat = st.get("latency_ms") or {}
            sample = UsageSample(
                device_id=dev.id,
                model_name=model_name,
                format=st.get("format", "?"),
                runtime=st.get("runtime"),
                requests=int(st.get("requests", 0)),
                errors=int(st.get("errors", 0)),
                p50_ms=float(lat.get("p50", 0.0)),
                p90_ms=float(lat.get("p90", 0.0)),
                p99_ms=float(lat.get("p99", 0.0)),
                mean_ms=float(lat.get("mean", 0.0)),
            )
            s.add(sample)
            rows.append(
                {
                    "device": dev.id,
                    "device_name": dev.name,
                    "model": model_name,
                    "format": sample.format,
                    "runtime": sample.runtime,
                    "requests": sample.requests,
                    "errors": sample.errors,
                    "p50_ms": sample.p50_ms,
                    "p90_ms": sample.p90_ms,
                    "p99_ms": sample.p99_ms,
                }
            )
    return rows


def list_devices(ws: Any) -> list[dict[str, Any]]:
    with ws.session() as s:
        return [
            {
                "id": d.id,
                "name": d.name,
                "address": d.host,
                "port": d.port,
                "platform": d.platform,
                "arch": d.arch,
                "version": d.agent_version,
                "last_seen": d.last_seen.isoformat() if d.last_seen else None,
                "paired": isinstance((d.info or {}).get(PIN_KEY), str),
            }
            for d in s.scalars(select(Device).order_by(Device.last_seen.desc()))
        ]
