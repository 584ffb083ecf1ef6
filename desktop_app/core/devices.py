"""Devices: discovery by mDNS, deployment of exports, and usage pulled back into the workspace."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import select

from desktop_app.core.errors import NotFoundError
from desktop_app.core.exports import get_export
from desktop_app.core.models import Deployment, Device, UsageSample, utcnow
from device_agent.client import AgentClient, AgentRejectedError, AgentUnreachableError
from device_agent.discovery import DeviceInfo, browse
from runtimes.errors import OutpostError


class DeviceError(OutpostError):
    """A device could not be reached, trusted or used."""


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
        dev.info = {
            "runtimes": list(info.runtimes),
            "protocol": info.protocol,
            "addresses": list(info.addresses),
        }
        dev.last_seen = utcnow()


def discover(
    ws: Any, interfaces: list[str] | None, timeout: float = 3.0, want_id: str | None = None
) -> list[dict[str, Any]]:
    """Browse for agents, record every one found, and return them."""
    found = browse(interfaces, timeout=timeout, want_id=want_id)
    for info in found:
        _upsert(ws, info)
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


def connect(
    ws: Any, device_id: str, interfaces: list[str] | None = None
) -> tuple[Device, AgentClient]:
    """A client for a known device, re-discovering it when its last address no longer answers.

    The agent must answer with the id it was recorded under, or it is refused.
    """
    dev = get_device(ws, device_id)
    client = AgentClient(device_url(dev.host, dev.port))
    try:
        info = client.info()
    except AgentUnreachableError:
        if interfaces is None and not dev.info.get("addresses"):
            raise
        discover(ws, interfaces, timeout=5.0, want_id=dev.id)
        dev = get_device(ws, dev.id)
        client = AgentClient(device_url(dev.host, dev.port))
        info = client.info()
    if info.get("agent_id") != dev.id:
        raise DeviceError(
            f"the agent at {dev.host}:{dev.port} answers as {info.get('agent_id')!r}, not {dev.id!r}; "
            "run outpost devices list to refresh"
        )
    return dev, client


def deploy(
    ws: Any, export_ref: str, device_id: str, interfaces: list[str] | None = None
) -> dict[str, Any]:
    """Upload an export's package to a device; the deployment is recorded whatever the outcome."""
    exp = get_export(ws, export_ref)
    package = ws.resolve(exp.package_path) if exp.package_path else None
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
            }
            for d in s.scalars(select(Device).order_by(Device.last_seen.desc()))
        ]
