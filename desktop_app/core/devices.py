"""Devices: discovery by mDNS, pairing, deployment of exports, and usage pulled back.

The desktop's own Ed25519 key lives in ``<workspace>/identity/desktop.key`` (mode 0600). A
paired device's public key is pinned in ``Device.info["pinned_key"]``; every later request
is signed with the desktop key and every answer must be signed by the pinned key.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sqlalchemy import delete, func, select

from desktop_app.core import device_answers as answers
from desktop_app.core.device_answers import shown
from desktop_app.core.errors import NotFoundError
from desktop_app.core.exports import get_export
from desktop_app.core.models import (
    Deployment,
    Device,
    DeviceBenchmark,
    Export,
    UsageSample,
    utcnow,
)
from device_agent import DEFAULT_PORT as AGENT_PORT
from device_agent.auth import (
    AuthError,
    FingerprintMismatchError,
    KeyPair,
    agent_id_for,
    b64,
    fingerprint,
    load_or_create_key,
    unb64,
)
from device_agent.client import (
    AgentClient,
    AgentRejectedError,
    AgentUnreachableError,
    IncompatibleProtocolError,
    pair_with_agent,
)
from device_agent.discovery import DeviceInfo, browse
from device_agent.errors import one_line
from runtimes.errors import OutpostError

log = logging.getLogger(__name__)


class DeviceError(OutpostError):
    """A device could not be reached, trusted or used."""


IDENTITY_DIR = "identity"
DESKTOP_KEY_FILE = "desktop.key"
PIN_KEY = "pinned_key"  # Device.info: base64 raw public key of the paired agent
USAGE_KEY = "usage"  # Device.info: latest throughput and per-version usage per model
# Device.info: where a paired device was last advertised when that is not where it was
# reached; it moves there once the agent there answers with the pinned key.
CANDIDATE_KEY = "candidate"
MAX_CANDIDATES = 8  # advertised addresses of one device tried when it is not where it was
USAGE_SINCE_KEY = "usage_since"  # Device.info: the agent start its pulled counts are from
USAGE_RUN_KEY = "usage_run"  # Device.info: the id of that agent run
USAGE_RUNS_KEY = "usage_runs"  # Device.info: the agent runs replaced since (the newest last)
MAX_REPLACED_RUNS = 32
USAGE_HISTORY = 1000  # usage samples kept per device and model (the newest)
DETAILS_KEY = "details"  # Device.info: the last /v1/info details (accelerators, runtimes, models)
_CODE = re.compile(r"^\d{6}$")
# The Device columns' sizes (desktop_app.core.models)
NAME_CHARS, PLATFORM_CHARS, ARCH_CHARS, VERSION_CHARS = 128, 64, 32, 32
FORMAT_CHARS, RUNTIME_CHARS = 32, 64  # a usage sample's and a benchmark's
MODEL_VERSION_CHARS = 64  # a package's version (runtimes.package.Manifest)


def desktop_key(ws: Any) -> KeyPair:
    """This workspace's desktop identity, made on first use."""
    key, _ = load_or_create_key(Path(ws.root) / IDENTITY_DIR / DESKTOP_KEY_FILE)
    return key


class DamagedPinError(DeviceError):
    """The pinned key of a device in this workspace cannot be read."""


def pinned_key(dev: Device) -> bytes | None:
    """The agent key pinned for ``dev`` (None: not paired); :class:`DamagedPinError` when the
    workspace holds a pin that is not one (nothing is trusted then)."""
    text = (dev.info or {}).get(PIN_KEY)
    if text is None:
        return None
    try:
        if not isinstance(text, str):
            raise AuthError("the pinned key is not text")
        return unb64(text, "the pinned key", 32)
    except AuthError as exc:
        raise DamagedPinError(
            f"the key pinned for device {dev.id} in this workspace is damaged ({exc}); run "
            f"outpost devices forget {dev.id}, then pair it again"
        ) from None


def device_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _address(info: DeviceInfo) -> str:
    return info.addresses[0] if info.addresses else info.host


def fallback_summary(fallback: Any, arrow: str = "->") -> str:
    """``"CUDAExecutionProvider -> CPUExecutionProvider"`` for a device's runtime fallback (one
    dict, or a list of them), or "" when it runs on what was wanted."""
    items = fallback if isinstance(fallback, list) else [fallback]
    return "; ".join(
        f"{f.get('wanted')} {arrow} {f.get('using')}" for f in items if isinstance(f, dict)
    )


def _upsert(ws: Any, info: DeviceInfo) -> None:
    """Record an advertised agent. An advertisement proves nothing (anyone on the LAN can
    send one with a paired device's id): a paired device's name and details are not taken
    from it (``devices show`` reads them from the device itself), and when it is advertised
    at another address it is not moved there: the addresses are kept as ``candidate`` ones
    that :func:`connect` moves it to once the agent at one answers with the pinned key."""
    name = shown(info.name, NAME_CHARS) or info.agent_id
    address = _address(info)
    with ws.session() as s:
        dev = s.get(Device, info.agent_id)
        if dev is None:
            dev = Device(id=info.agent_id, name=name, host=address, port=info.port)
            s.add(dev)
        if isinstance((dev.info or {}).get(PIN_KEY), str):
            if dev.port != info.port or dev.host not in (address, *info.addresses):
                dev.info = {
                    **(dev.info or {}),
                    CANDIDATE_KEY: {
                        "addresses": list(info.addresses[:MAX_CANDIDATES]),
                        "port": info.port,
                    },
                }
            return
        dev.name = name
        dev.host = address  # an unpaired device that comes back on a new address moves
        dev.port = info.port
        dev.platform = shown(info.platform, PLATFORM_CHARS)
        dev.arch = shown(info.arch, ARCH_CHARS)
        dev.agent_version = shown(info.version, VERSION_CHARS)
        kept = (
            PIN_KEY,
            "paired_at",
            USAGE_KEY,
            USAGE_SINCE_KEY,
            USAGE_RUN_KEY,
            USAGE_RUNS_KEY,
            DETAILS_KEY,
        )
        pin = {k: v for k, v in (dev.info or {}).items() if k in kept}
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


ADD_TIMEOUT_S = 5.0
_HOST = re.compile(r"^[A-Za-z0-9._%:-]+$")  # a name, an IPv4 or an IPv6 address (with a zone)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or ``http://`` any of these →
    ``(host, port)``; the agent's default port when none is given. A bare IPv6 address
    (several colons, no brackets) is a host without a port."""
    raw = text.strip()
    rest = raw[len("http://") :] if raw.lower().startswith("http://") else raw
    if "://" in rest:
        raise DeviceError(
            f"cannot use {text!r}: an agent is reached over http://HOST:PORT (it signs its "
            "answers itself); give the device's address, e.g. 192.168.1.20:8765"
        )
    rest = rest.rstrip("/")
    if "/" in rest:
        raise DeviceError(
            f"cannot use {text!r}: give the agent's address without a path, e.g. 192.168.1.20:8765"
        )
    port_text = ""
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise DeviceError(f"cannot read the address {text!r}; write [IPV6]:PORT")
        port_text = after[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host = rest
    if not host or not _HOST.match(host):
        raise DeviceError(
            f"cannot read the address {text!r}; give HOST or HOST:PORT, e.g. 192.168.1.20:8765"
        )
    if not port_text:
        return host, AGENT_PORT
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise DeviceError(f"the port in {text!r} must be a number from 1 to 65535")
    return host, int(port_text)


def add_device(ws: Any, address: str, timeout: float = ADD_TIMEOUT_S) -> dict[str, Any]:
    """Record the agent at ``address`` (``HOST[:PORT]``) without mDNS: for networks that do
    not carry multicast (other subnets, VPNs, guest Wi-Fi). Its ``/v1/info`` is read (what
    an agent tells anyone: its id, name, key and protocol); the key must be the one its id
    stands for. Nothing is trusted yet: pair it next. A device already known under that id
    moves to this address, its pairing kept."""
    host, port = parse_address(address)
    url = device_url(host, port)
    with AgentClient(url, timeout) as client:
        try:
            info = client.info()
        except (AgentUnreachableError, IncompatibleProtocolError):
            raise
        except OutpostError as exc:
            what = (
                f"HTTP {exc.status} to /v1/info"
                if isinstance(exc, AgentRejectedError) and exc.status >= 400
                else "its /v1/info is not an agent's"
            )
            raise DeviceError(
                f"{host}:{port} does not answer as an outpost-agent ({what}); check the port "
                "(outpost-agent serve prints its address when it starts)"
            ) from None
    agent_id, public = info.get("agent_id"), info.get("public_key")
    try:
        key_raw = unb64(public, "the agent's key", 32) if isinstance(public, str) else None
    except OutpostError:
        key_raw = None
    if not isinstance(agent_id, str) or key_raw is None:
        raise DeviceError(
            f"{host}:{port} does not answer as an outpost-agent (no id or key in its "
            "/v1/info); check the address and port"
        )
    if agent_id_for(key_raw) != agent_id:
        raise DeviceError(
            f"the agent at {host}:{port} calls itself {agent_id} but its key stands for "
            f"{agent_id_for(key_raw)}; it is not recorded: check what runs at that address"
        )
    name = shown(info.get("name"), NAME_CHARS) or agent_id
    version = shown(info.get("version"), VERSION_CHARS)
    protocol = info.get("protocol") if isinstance(info.get("protocol"), int) else None
    _prove_paired_device(ws, agent_id, host, port)
    with ws.session() as s:
        dev = s.get(Device, agent_id)
        if dev is None:
            dev = Device(id=agent_id, name=name, host=host, port=port)
            s.add(dev)
        dev.name, dev.host, dev.port, dev.agent_version = name, host, port, version
        dev.info = {**(dev.info or {}), "protocol": protocol}
        dev.last_seen = utcnow()
        paired = isinstance(dev.info.get(PIN_KEY), str)
    return {
        "id": agent_id,
        "name": name,
        "address": host,
        "port": port,
        "version": version,
        "fingerprint": fingerprint(key_raw),
        "paired": paired,
    }


def get_device(ws: Any, device_id: str) -> Device:
    with ws.session() as s:
        dev = s.get(Device, device_id)
        if dev is None:
            matches = s.scalars(select(Device).where(Device.id.startswith(device_id))).all()
            if len(matches) == 1:
                dev = matches[0]
        if dev is None:
            raise NotFoundError(
                f"no known device {device_id!r}; find agents first with: outpost devices list "
                "(or, where mDNS does not reach: outpost devices add HOST:PORT)"
            )
        s.expunge(dev)
        return cast(Device, dev)


def _prove_paired_device(ws: Any, agent_id: str, host: str, port: int) -> None:
    """A paired device moves to a new address only when the agent there signs its answer
    with the pinned key: its public ``/v1/info`` can be replayed by anything. DeviceError
    when it does not."""
    with ws.session() as s:
        dev = s.get(Device, agent_id)
        pinned = pinned_key(dev) if dev is not None else None
        if pinned is None or (dev.host, dev.port) == (host, port):
            return
    try:
        with _client(ws, host, port, pinned) as client:
            client.info()
    except OutpostError as exc:
        raise DeviceError(
            f"{host}:{port} shows the public details of paired device {agent_id} but did not "
            f"answer with its key ({one_line(exc, 160)}); it is not moved there: check what "
            "runs at that address"
        ) from None


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
        try:
            agent_key = pair_with_agent(device_url(dev.host, dev.port), key, dev.id, code, name)
        except AgentUnreachableError as missed:
            if interfaces is None and not dev.info.get("addresses"):
                raise
            discover(ws, interfaces, timeout=5.0, want_id=dev.id)
            dev = get_device(ws, dev.id)
            # an unpaired device has moved with its advert; a paired one (paired again) has
            # candidates: pairing checks the id against the key, so trying them is safe
            for host, port in [(dev.host, dev.port), *_candidates(dev)]:
                try:
                    agent_key = pair_with_agent(device_url(host, port), key, dev.id, code, name)
                except AgentUnreachableError:
                    continue
                dev = _move(ws, dev.id, host, port)
                break
            else:
                raise missed from None
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
    warning: str | None = None
    try:
        agent_key = pinned_key(dev)
        was_paired = agent_key is not None
    except DamagedPinError as exc:  # paired, but the agent cannot be asked without its key
        agent_key, was_paired = None, True
        warning = (
            f"{exc.args[0].split(';')[0]}; forgotten here only: run outpost-agent unpair on "
            "the device"
        )
    revoked = False
    already = False  # the agent had dropped this desktop before (outpost-agent unpair)
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
                revoked = already = True  # it no longer knows this desktop
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
        "agent_had_forgotten": already,
        "warning": warning,
    }


def _client(ws: Any, host: str, port: int, agent_key: bytes) -> AgentClient:
    return AgentClient(device_url(host, port), key=desktop_key(ws), agent_key=agent_key)


def _candidates(dev: Device) -> list[tuple[str, int]]:
    """The addresses a paired device was last advertised at, when not where it was reached."""
    candidate = (dev.info or {}).get(CANDIDATE_KEY)
    if not isinstance(candidate, dict) or not isinstance(candidate.get("port"), int):
        return []
    return [
        (a, candidate["port"])
        for a in candidate.get("addresses") or []
        if isinstance(a, str) and (a, candidate["port"]) != (dev.host, dev.port)
    ][:MAX_CANDIDATES]


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
    client = _client(ws, dev.host, dev.port, agent_key)
    try:
        try:
            info = client.info()
        except (AgentUnreachableError, FingerprintMismatchError) as missed:
            # gone from its address, or another agent answers there: look for it again,
            # and move it only where it answers with the pinned key
            client.close()
            if interfaces is not None or dev.info.get("addresses"):
                discover(ws, interfaces, timeout=5.0, want_id=dev.id)
            dev = get_device(ws, dev.id)
            for host, port in _candidates(dev):
                client = _client(ws, host, port, agent_key)
                try:
                    info = client.info()
                except (AgentUnreachableError, FingerprintMismatchError):
                    client.close()
                    continue
                except BaseException:
                    client.close()
                    raise
                dev = _move(ws, dev.id, host, port)
                break
            else:
                raise missed from None
    except IncompatibleProtocolError as exc:  # refused: the message says which side to update
        client.close()
        raise DeviceError(f"device {dev.name} ({dev.id}): {exc}") from None
    except AgentUnreachableError as exc:  # a restart on another port looks the same
        client.close()
        raise AgentUnreachableError(
            f"{exc}; if it moved to another address or port, find it again: outpost devices "
            "list (or outpost devices add HOST:PORT)"
        ) from None
    if info.get("agent_id") != dev.id or info.get("paired") is not True:
        client.close()
        raise DeviceError(
            f"the agent at {dev.host}:{dev.port} no longer knows this desktop; pair it again: "
            f"outpost devices pair {dev.id} --code NNNNNN"
        )
    return dev, client


def _move(ws: Any, device_id: str, host: str, port: int) -> Device:
    """Record that a paired device answers at ``host:port`` now (it proved its key there)."""
    with ws.session() as s:
        row = s.get(Device, device_id)
        if row is not None:
            row.host, row.port = host, port
            row.info = {k: v for k, v in (row.info or {}).items() if k != CANDIDATE_KEY}
            row.last_seen = utcnow()
    return get_device(ws, device_id)


def deploy(
    ws: Any,
    export_ref: str,
    device_id: str,
    interfaces: list[str] | None = None,
    *,
    activate: bool = True,
    provider: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Upload an export's package to a device in resumable chunks; the deployment is recorded
    (action ``deploy``) whatever the outcome.

    ``activate=False`` leaves the new version staged on the device (checked, not serving)
    until :func:`model_action` ``activate``. The result carries the device's runtime choice,
    its self-test and any ``fallback`` (a wanted execution provider that is not used).
    """
    exp = get_export(ws, export_ref)
    package = ws.resolve(exp.package_path) if exp.package_path else None
    if exp.status == "failed_validation":
        raise NotFoundError(
            f"export {exp.id} failed parity validation "
            f"({'; '.join((exp.details.get('validation') or {}).get('failures') or ['see outpost exports list --json'])}); "
            "it is not deployed: re-export the run or use another format"
        )
    # An unvalidated export (e.g. CoreML, which no runtime here can check) goes to a device
    # that can run it: the agent's self-test checks it there before it serves.
    if exp.status not in ("completed", "unvalidated") or package is None or not package.exists():
        raise NotFoundError(
            f"export {exp.id} has no package to deploy (status {exp.status}); export the run again"
        )
    model_name = exp.manifest.get("name", exp.id)
    try:
        size: int | None = package.stat().st_size
    except OSError:  # gone since it was checked: the upload says so, and it is recorded
        size = None
    details: dict[str, Any] = {"activate": activate, "bytes": size}
    dev = get_device(ws, device_id)  # an unknown device is no deployment
    try:
        dev, client = connect(ws, device_id, interfaces)
    except OutpostError as exc:  # off, moved, another identity: a failed deployment too
        _record_deploy(ws, exp.id, dev.id, model_name, "failed", str(exc), details)
        raise
    refused = False
    try:
        with client:
            installed = answers.install_answer(
                client.upload_package(
                    package, on_progress, activate=activate, provider=provider, resumable=True
                )
            )
        status, message = "installed", None
        details.update(
            {
                key: installed.get(key)
                for key in (
                    "version",
                    "activated",
                    "runtime",
                    "providers",
                    "format",
                    "formats",
                    "benchmark",
                    "fallback",
                    "self_test",
                    "warnings",
                )
            }
        )
    except OutpostError as exc:  # refused, gone mid-push, package unreadable: all recorded
        installed, status, message = {}, "failed", str(exc)
        refused = isinstance(exc, AgentRejectedError)
    except KeyboardInterrupt:  # Ctrl-C: recorded too, then the command ends
        _record_deploy(
            ws, exp.id, dev.id, model_name, "failed", "interrupted on the desktop", details
        )
        raise
    _record_deploy(ws, exp.id, dev.id, model_name, status, message, details)
    if status == "failed":
        if refused:
            raise DeviceError(f"device {dev.name} refused export {exp.id}: {message}")
        raise DeviceError(f"deploying export {exp.id} to device {dev.name} failed: {message}")
    return {
        "export": exp.id,
        "device": dev.id,
        "model": model_name,
        "status": status,
        "activated": installed.get("activated") is not False,
        "fallback": installed.get("fallback"),
        "warnings": list(installed.get("warnings") or []),
        "installed": installed,
    }


MODEL_ACTIONS = ("activate", "deactivate", "uninstall", "rollback")
# Deployment.status after each action succeeded (a refusal is "failed").
ACTION_STATUS = {
    "activate": "active",
    "deactivate": "inactive",
    "uninstall": "removed",
    "rollback": "active",
}


def model_action(
    ws: Any,
    device_id: str,
    model: str,
    action: str,
    *,
    version: str | None = None,
    force: bool = False,
    interfaces: list[str] | None = None,
) -> dict[str, Any]:
    """Activate, deactivate, uninstall or roll back ``model`` on a device; recorded as a
    Deployment row with that action (failures too).

    The row names the export of the version the device serves after it (a package's version
    is its export's id; for a failure, the version asked for), else the export last deployed as
    ``model`` on that device (or, when there is none, the newest export whose package is
    ``model``); ``recorded`` says whether one was found, since a Deployment must name an
    export. The answer's format, runtime and providers go with it, as a deploy's do.
    """
    if action not in MODEL_ACTIONS:
        raise DeviceError(f"unknown action {action!r}; use one of {', '.join(MODEL_ACTIONS)}")
    dev = get_device(ws, device_id)  # an unknown device is no action on one
    refused = False
    try:
        dev, client = connect(ws, device_id, interfaces)
        with client:
            if action == "activate":
                said = client.activate(model, version)
            elif action == "deactivate":
                said = client.deactivate(model)
            elif action == "uninstall":
                said = client.uninstall(model, force=force)
            else:
                said = client.rollback(model)
        answer = answers.install_answer(said)
        status, message = ACTION_STATUS[action], None
    except OutpostError as exc:  # refused, off, or gone since connect(): recorded either way
        answer, status, message = {}, "failed", str(exc)
        refused = isinstance(exc, AgentRejectedError)
    except KeyboardInterrupt:  # Ctrl-C (an activation loads the model): recorded too
        _record_action(
            ws, dev.id, model, action, "failed", "interrupted on the desktop", {}, version
        )
        raise
    details: dict[str, Any] = {
        k: answer.get(k)
        for k in (
            "version",
            "previous_version",
            "serving",
            "format",
            "runtime",
            "providers",
            "benchmark",
            "fallback",
        )
        if k in answer
    }
    if version:
        details["requested_version"] = version
    if force:
        details["force"] = True
    export_id = _record_action(
        ws, dev.id, model, action, status, message, details, answer.get("version") or version
    )
    if status == "failed":
        if refused:
            raise DeviceError(f"device {dev.name} refused to {action} {model}: {message}")
        raise DeviceError(f"{action} of {model} on device {dev.name} failed: {message}")
    return {
        "device": dev.id,
        "model": model,
        "action": action,
        "status": status,
        "recorded": export_id is not None,
        "result": answer,
    }


def _record_action(
    ws: Any,
    device_id: str,
    model: str,
    action: str,
    status: str,
    message: str | None,
    details: dict[str, Any],
    version: str | None,
) -> str | None:
    """Record a model action as a Deployment row naming the export of ``version`` (see
    :func:`model_action`); the export's id, or None when none could be named (not recorded)."""
    export_id = _export_for(ws, device_id, model, version)
    if export_id is not None:
        _add_deployment(ws, export_id, device_id, model, action, status, message, details)
    return export_id


def _record_deploy(
    ws: Any,
    export_id: str,
    device_id: str,
    model_name: str,
    status: str,
    message: str | None,
    details: dict[str, Any],
) -> None:
    _add_deployment(ws, export_id, device_id, model_name, "deploy", status, message, details)


def _add_deployment(
    ws: Any,
    export_id: str,
    device_id: str,
    model_name: str,
    action: str,
    status: str,
    message: str | None,
    details: dict[str, Any],
) -> None:
    """One row of the deployment history."""
    with ws.session() as s:
        s.add(
            Deployment(
                export_id=export_id,
                device_id=device_id,
                model_name=model_name,
                status=status,
                message=message,
                action=action,
                details=details,
            )
        )


def _export_for(ws: Any, device_id: str, model: str, version: str | None = None) -> str | None:
    with ws.session() as s:
        named = s.get(Export, str(version)) if version else None
        if named is not None and (named.manifest or {}).get("name") in (model, None):
            return str(version)  # the version is its export (of this model's package)
        last = s.scalars(
            select(Deployment)
            .where(Deployment.device_id == device_id, Deployment.model_name == model)
            .order_by(Deployment.created_at.desc(), Deployment.id.desc())
            .limit(1)
        ).first()
        if last is not None:
            return str(last.export_id)
        for exp in s.scalars(select(Export).order_by(Export.created_at.desc())):
            if (exp.manifest or {}).get("name") == model:
                return str(exp.id)
    return None


def pull_usage(
    ws: Any, device_id: str, interfaces: list[str] | None = None
) -> list[dict[str, Any]]:
    """Fetch a device's latency and request counts per model and store them as usage samples.

    Each sample records the model's throughput (requests per second over the device's last
    minute); per-version usage goes to ``Device.info["usage"]``. The agent counts from its
    start (its ``run``): when that changes (the agent restarted), the counts pulled last are
    carried, so a sample's requests and errors are what the device served in every run the
    desktop pulled from. An answer of a run already replaced (a late answer of two pulls at
    once) is ignored; a new run counts whatever its clock says (a device without a clock
    battery may start behind the last run). At most :data:`USAGE_HISTORY` samples are kept
    per device and model. The whole answer is read before anything is stored: a count or a
    latency that cannot be one refuses it (:class:`~desktop_app.core.device_answers.
    UnreadableAnswerError`), and its texts are kept printable and cut to their columns.
    """
    dev, client = connect(ws, device_id, interfaces)
    with client:
        stats = answers.mapping(client.stats(), dev.name, "usage")
    models = _usage_models(stats, dev.name)
    rows: list[dict[str, Any]] = []
    collected = utcnow().isoformat(timespec="seconds")
    since, run = shown(stats.get("since"), 64), shown(stats.get("run"), 64)
    latest: dict[str, Any] = {}
    with ws.session() as s:
        row = s.get(Device, dev.id, with_for_update=True)  # one pull at a time (PostgreSQL)
        info = dict(row.info or {}) if row is not None else {}
        earlier, last_run = info.get(USAGE_SINCE_KEY), info.get(USAGE_RUN_KEY)
        replaced = [r for r in info.get(USAGE_RUNS_KEY) or [] if isinstance(r, str)]
        if run is not None and run in replaced:
            # the answer of an earlier run that arrived after a newer one's (two pulls at
            # once): it would count that run twice
            log.info("usage of %s from an earlier agent run (%s) ignored", dev.id, run)
            return rows
        if run is None and since is not None and isinstance(earlier, str) and since < earlier:
            log.info("usage of %s from an earlier agent run (%s) ignored", dev.id, since)
            return rows  # an agent without run ids: its start time tells the runs apart
        if run is not None and isinstance(last_run, str) and last_run != run:
            replaced = [*replaced, last_run][-MAX_REPLACED_RUNS:]
        carried = _carried_counts(info, since, run)
        for model_name, st in models.items():
            counted = {"requests": st["requests"], "errors": st["errors"]}
            base = carried.pop(model_name, {"requests": 0, "errors": 0})
            sample = UsageSample(
                device_id=dev.id,
                model_name=model_name,
                # a model that served and was then deactivated or removed has no format now
                format=st["format"] or "-",
                runtime=st["runtime"],
                requests=base["requests"] + counted["requests"],
                errors=base["errors"] + counted["errors"],
                p50_ms=st["p50"],
                p90_ms=st["p90"],
                p99_ms=st["p99"],
                mean_ms=st["mean"],
                throughput_rps=st["throughput_rps"],
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
                    **_latency(sample, counted["requests"] - counted["errors"]),
                    "throughput_rps": sample.throughput_rps,
                }
            )
            latest[model_name] = {
                "version": st["version"],
                "throughput_rps": sample.throughput_rps,
                "collected_at": collected,
                "counted": counted,  # by the agent since it started
                "carried": base,  # from its earlier runs
                "versions": st["versions"],
            }
        for model_name, base in carried.items():  # counted before a restart, not since
            latest[model_name] = {"counted": {"requests": 0, "errors": 0}, "carried": base}
        s.flush()
        _prune_usage(s, dev.id)
        if row is not None:
            row.info = {
                **info,
                USAGE_KEY: latest,
                USAGE_SINCE_KEY: since,
                USAGE_RUN_KEY: run,
                USAGE_RUNS_KEY: replaced,
            }
    return rows


def _usage_models(stats: dict[str, Any], device: str) -> dict[str, dict[str, Any]]:
    """The per-model usage of a ``/v1/stats`` answer, every value checked (see
    :mod:`desktop_app.core.device_answers`); a model name is kept printable and cut."""
    out: dict[str, dict[str, Any]] = {}
    for raw_name, raw in answers.mapping(stats.get("models"), device, "its models").items():
        name = shown(raw_name, NAME_CHARS)
        if name is None:
            raise answers.unreadable(device, "a model name", raw_name)
        what = f"usage of {name}"
        st = answers.mapping(raw, device, what)
        lat = answers.mapping(st.get("latency_ms"), device, f"latencies of {name}")
        versions = answers.mapping(st.get("versions"), device, f"versions of {name}")
        out[name] = {
            "requests": answers.count(st.get("requests"), device, f"requests of {name}"),
            "errors": answers.count(st.get("errors"), device, f"errors of {name}"),
            **{q: answers.millis(lat.get(q), device, what) for q in ("p50", "p90", "p99", "mean")},
            "throughput_rps": answers.millis(st.get("throughput_rps"), device, what),
            "format": shown(st.get("format"), FORMAT_CHARS),
            "runtime": shown(st.get("runtime"), RUNTIME_CHARS),
            "version": shown(st.get("version"), MODEL_VERSION_CHARS),
            "versions": {
                (shown(v, MODEL_VERSION_CHARS) or "?"): {
                    k: answers.bounded(u.get(k))
                    for k in ("requests", "errors", "latency_ms", "throughput_rps")
                }
                for v, u in list(versions.items())[: answers.MAX_KEYS]
                if isinstance(u, dict)
            },
        }
    return out


def _carried_counts(
    info: dict[str, Any], since: str | None, run: str | None
) -> dict[str, dict[str, int]]:
    """Per model, the counts of the agent's earlier runs: those carried before, plus, when
    the agent has restarted since the last pull (another ``run`` id; from agents without
    one, another ``since``), what it had counted by then."""
    if isinstance(run, str) and isinstance(info.get(USAGE_RUN_KEY), str):
        restarted = info[USAGE_RUN_KEY] != run
    else:
        restarted = info.get(USAGE_SINCE_KEY) not in (None, since)
    out: dict[str, dict[str, int]] = {}
    for name, entry in (info.get(USAGE_KEY) or {}).items():
        if not isinstance(entry, dict):
            continue
        carried = _counts(entry.get("carried"))
        counted = _counts(entry.get("counted")) if restarted else {}
        total = {k: carried.get(k, 0) + counted.get(k, 0) for k in ("requests", "errors")}
        if total["requests"] or total["errors"]:
            out[name] = total
    return out


def _counts(value: object) -> dict[str, int]:
    """``requests`` and ``errors`` as the workspace kept them (a damaged value counts 0)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k in ("requests", "errors") if (v := answers.whole(value.get(k))) is not None}


def _prune_usage(s: Any, device_id: str) -> None:
    """Keep the newest :data:`USAGE_HISTORY` samples of each of the device's models."""
    ranked = (
        select(
            UsageSample.id,
            func.row_number()
            .over(partition_by=UsageSample.model_name, order_by=UsageSample.id.desc())
            .label("rank"),
        )
        .where(UsageSample.device_id == device_id)
        .subquery()
    )
    old = select(ranked.c.id).where(ranked.c.rank > USAGE_HISTORY)
    s.execute(delete(UsageSample).where(UsageSample.id.in_(old)))


def sync_usage(ws: Any, interfaces: list[str] | None = None) -> list[dict[str, Any]]:
    """Pull the usage of every paired device into the workspace (``outpost devices sync``).

    The desktop listens on no port: agents keep their usage (counters, latency histogram and
    a per-minute series) and the desktop pulls it whenever it reaches them. A device that does
    not answer is reported with its ``error`` and keeps its last samples.
    """
    out = []
    for d in list_devices(ws):
        if not d["paired"]:
            continue
        row: dict[str, Any] = {"device": d["id"], "device_name": d["name"]}
        try:
            pulled = pull_usage(ws, d["id"], interfaces)
        except OutpostError as exc:
            row.update({"models": 0, "requests": 0, "error": str(exc)})
        else:
            requests = sum(r["requests"] for r in pulled)
            row.update({"models": len(pulled), "requests": requests, "error": None})
        out.append(row)
    return out


def _latency(sample: UsageSample, answered: int | None = None) -> dict[str, float | None]:
    """A usage sample's percentiles; None (no latency to speak of) for a model that has
    answered no request yet (none, or all failed), which the device reports as 0.
    ``answered``: the successful requests the percentiles cover, when known."""
    served = (sample.requests - sample.errors if answered is None else answered) > 0
    return {
        "p50_ms": sample.p50_ms if served else None,
        "p90_ms": sample.p90_ms if served else None,
        "p99_ms": sample.p99_ms if served else None,
    }


def _answered(dev: Device | None, model_name: str) -> int | None:
    """The requests the device answered for ``model_name`` in its current run (what its
    percentiles cover), as of the last pull; None when not recorded."""
    entry = ((dev.info or {}).get(USAGE_KEY) or {}).get(model_name) if dev else None
    counted = entry.get("counted") if isinstance(entry, dict) else None
    if not isinstance(counted, dict):
        return None
    return int(counted.get("requests") or 0) - int(counted.get("errors") or 0)


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


# --- device detail, deployment history, usage and on-device benchmarks ---------------------

DETAIL_TIMEOUT_S = 5.0
# Device columns filled from a paired device's details: (column, key in /v1/info, size)
COLUMN_DETAILS = (
    ("platform", "platform", PLATFORM_CHARS),
    ("arch", "arch", ARCH_CHARS),
    ("agent_version", "version", VERSION_CHARS),
)
BENCH_MAX_RUNS = 1000


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _latest_usage(s: Any, device_id: str | None = None) -> list[UsageSample]:
    """The newest usage sample of each (device, model), newest first (one query: the newest
    is the highest id, as samples are only ever added)."""
    newest = select(func.max(UsageSample.id)).group_by(
        UsageSample.device_id, UsageSample.model_name
    )
    if device_id is not None:
        newest = newest.where(UsageSample.device_id == device_id)
    query = (
        select(UsageSample)
        .where(UsageSample.id.in_(newest))
        .order_by(UsageSample.collected_at.desc(), UsageSample.id.desc())
    )
    return list(s.scalars(query))


def _model_entry(model: dict[str, Any]) -> dict[str, Any]:
    entry = {
        k: model.get(k)
        for k in ("name", "version", "format", "runtime", "providers", "task", "previous_version")
    }
    entry["fallbacks"] = model.get("fallbacks", model.get("fallback"))
    return entry


CLOCK_NOTE_S = 60.0  # a device clock further off than this is named to the user


def clock_note(offset: float | None) -> str | None:
    """A line about a device clock more than :data:`CLOCK_NOTE_S` off this desktop's
    (requests are signed with the device's clock, so it still answers), or None."""
    if offset is None or abs(offset) < CLOCK_NOTE_S:
        return None
    minutes = round(abs(offset) / 60)
    span = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    side = "ahead of" if offset > 0 else "behind"
    return (
        f"clock: {span} {side} this desktop's (requests are signed with the device's clock; "
        "set up NTP on it for the right times in its logs)"
    )


def device_detail(ws: Any, device_id: str, interfaces: list[str] | None = None) -> dict[str, Any]:
    """One device: what the desktop knows, refreshed from the agent when it answers.

    A paired device is asked for its info (OS, CPU, memory, accelerators, runtimes, installed
    models); the answer is kept in ``Device.info["details"]`` so the last known details are
    shown (with ``warning``) when the device is off. ``last_usage`` is the newest pulled
    usage per model.
    """
    dev = get_device(ws, device_id)
    details: dict[str, Any] | None = None
    warning: str | None = None
    if pinned_key(dev) is not None:
        try:
            dev, client = connect(ws, dev.id, interfaces)
            with client:
                info = client.info()
            details = _device_details(info)  # kept as shown: printable, cut, bounded
            details["fetched_at"] = utcnow().isoformat(timespec="seconds")
            # the device's clock minus this desktop's: requests are signed with its clock
            details["clock_offset_s"] = round(client.auth.clock_offset, 1)
            with ws.session() as s:
                row = s.get(Device, dev.id)
                if row is not None:
                    row.info = {**(row.info or {}), DETAILS_KEY: details}
                    row.last_seen = utcnow()
                    # what mDNS hints at, from the device itself (all a device added by
                    # address has)
                    for column, key, limit in COLUMN_DETAILS:
                        value = shown(details.get(key), limit)
                        if value:
                            setattr(row, column, value)
            dev = get_device(ws, dev.id)  # as just recorded: seen now
        except OutpostError as exc:
            warning = f"{exc}; showing what was known"
    else:
        warning = f"device {dev.name} is not paired; pair it to see its runtimes and models"
    if details is None:  # as kept (by an older desktop, maybe: read as a fresh answer)
        kept = (dev.info or {}).get(DETAILS_KEY)
        details = {
            **_device_details(kept),
            **{k: kept.get(k) for k in ("fetched_at", "clock_offset_s") if isinstance(kept, dict)},
        }
    with ws.session() as s:
        usage = [
            {
                "model": u.model_name,
                "format": u.format,
                "runtime": u.runtime,
                "requests": u.requests,
                "errors": u.errors,
                **_latency(u, _answered(dev, u.model_name)),
                "collected_at": _iso(u.collected_at),
            }
            for u in _latest_usage(s, dev.id)
        ]
    return {
        "id": dev.id,
        "name": dev.name,
        "address": dev.host,
        "port": dev.port,
        "paired": pinned_key(dev) is not None,
        "last_seen": _iso(dev.last_seen),
        "platform": details.get("platform") or dev.platform,
        "os": details.get("os"),
        "arch": details.get("arch") or dev.arch,
        "cpu_model": details.get("cpu_model"),
        "cpu_count": details.get("cpu_count"),
        "ram_bytes": details.get("ram_bytes"),
        "agent_version": details.get("version") or dev.agent_version,
        "accelerators": list(details.get("accelerators") or []),
        "runtimes": [r for r in details.get("runtimes") or [] if r.get("available")],
        "models": [_model_entry(m) for m in details.get("models") or []],
        **_problems(details),
        "details_fetched_at": details.get("fetched_at"),
        "clock_offset_s": details.get("clock_offset_s"),
        "last_usage": usage,
        "warning": warning,
    }


DETAIL_TEXTS = {"os": 200, "platform": 64, "arch": 32, "python": 64, "cpu_model": 200}
DETAIL_NUMBERS = ("cpu_count", "ram_bytes", "protocol")


def _device_details(info: object) -> dict[str, Any]:
    """A device's ``/v1/info`` details as the workspace keeps and shows them: texts printable
    and cut, numbers whole and not negative (else None), ``accelerators``, ``runtimes`` and
    ``models`` lists of objects (:func:`~desktop_app.core.device_answers.bounded`), and its
    troubles (:func:`_problems`). Whatever else the answer holds is dropped."""
    info = info if isinstance(info, dict) else {}
    out: dict[str, Any] = {k: shown(info.get(k), n) for k, n in DETAIL_TEXTS.items()}
    out["version"] = shown(info.get("version"), VERSION_CHARS)
    for key in DETAIL_NUMBERS:
        out[key] = answers.whole(info.get(key))
    for key in ("accelerators", "runtimes", "models"):
        out[key] = answers.objects(info.get(key))
    out.update(_problems(info))
    return out


MAX_SHOWN_CRASHES = 32  # as many as an agent remembers
MAX_SHOWN_NOT_LOADED = 64
LATEST_CRASH_TIME = 32503680000.0  # the year 3000: a later "crash time" is not one


def _problems(details: dict[str, Any]) -> dict[str, Any]:
    """What the device said went wrong: ``not_loaded`` (model → why its active version is
    not served) and ``crashes`` (the packages that crashed its runtime, as ``outpost-agent
    crashes`` lists them): printable, cut and bounded, as they come from the device."""
    not_loaded = details.get("not_loaded")
    crashes = details.get("crashes")
    models = list(not_loaded.items()) if isinstance(not_loaded, dict) else []
    return {
        "not_loaded": {
            shown(name, 100) or "?": shown(why, 1000) or "?"
            for name, why in models[:MAX_SHOWN_NOT_LOADED]
        },
        "crashes": [
            _shown_crash(c)
            for c in (crashes if isinstance(crashes, list) else [])[-MAX_SHOWN_CRASHES:]
            if isinstance(c, dict)
        ],
    }


def _shown_crash(crash: dict[str, Any]) -> dict[str, Any]:
    count, at = crash.get("count"), crash.get("at")
    return {
        "what": shown(crash.get("what"), 200),
        "reason": shown(crash.get("reason"), 200),
        "kind": shown(crash.get("kind"), 20),
        "count": count if isinstance(count, int) and not isinstance(count, bool) else None,
        "held": crash.get("held") is True,
        "state": shown(crash.get("state"), 200),
        "at": float(at)
        if isinstance(at, (int, float))
        and not isinstance(at, bool)
        and 0 <= at <= LATEST_CRASH_TIME  # NaN fails both
        else None,
    }


def _deployment_json(d: Deployment, names: dict[str, str]) -> dict[str, Any]:
    details = d.details or {}
    return {
        "id": d.id,
        "created_at": _iso(d.created_at),
        "device": d.device_id,
        "device_name": names.get(d.device_id, d.device_id),
        "model": d.model_name,
        "export": d.export_id,
        "action": d.action,
        "status": d.status,
        "message": d.message,
        # the device's runtime choice at deploy time (format, runtime, benchmark, fallback)
        "format": details.get("format"),
        "runtime": details.get("runtime"),
        "providers": details.get("providers"),
        "benchmark": details.get("benchmark"),
        "fallback": details.get("fallback"),
        "details": dict(details),
    }


def list_deployments(ws: Any, device_id: str | None = None) -> list[dict[str, Any]]:
    """What is deployed where: the newest deployment record of each (device, model)."""
    device = get_device(ws, device_id).id if device_id else None
    with ws.session() as s:
        names = {d.id: d.name for d in s.scalars(select(Device))}
        query = select(Deployment).order_by(Deployment.created_at.desc(), Deployment.id.desc())
        if device is not None:
            query = query.where(Deployment.device_id == device)
        seen: set[tuple[str, str]] = set()
        out = []
        for d in s.scalars(query):
            if (d.device_id, d.model_name) not in seen:
                seen.add((d.device_id, d.model_name))
                out.append(_deployment_json(d, names))
        return out


def deployment_history(ws: Any, device_id: str, model: str | None = None) -> list[dict[str, Any]]:
    """Every deployment record of a device (deploy, activate, deactivate, rollback, uninstall),
    newest first; only ``model``'s when given."""
    dev = get_device(ws, device_id)
    with ws.session() as s:
        query = (
            select(Deployment)
            .where(Deployment.device_id == dev.id)
            .order_by(Deployment.created_at.desc(), Deployment.id.desc())
        )
        if model is not None:
            query = query.where(Deployment.model_name == model)
        return [_deployment_json(d, {dev.id: dev.name}) for d in s.scalars(query)]


def usage_report(
    ws: Any,
    device_id: str | None = None,
    *,
    pull: bool = False,
    interfaces: list[str] | None = None,
    failures: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The device x model usage table from the newest pulled samples.

    With ``pull`` the device (or, without ``device_id``, every paired device) is asked first;
    a device that does not answer keeps its last samples and is named in a ``warning`` row
    field. Throughput is the sample's own (requests per second over the device's last minute).

    ``failures``, when given, receives each device that could not be pulled and why (rows or
    not); without it, a named device that cannot be pulled raises.
    """
    device = get_device(ws, device_id).id if device_id else None
    warnings: dict[str, str] = {}
    if pull:
        if device is not None:
            try:
                pull_usage(ws, device, interfaces)
            except OutpostError as exc:
                if failures is None:
                    raise
                warnings[device] = str(exc)
        else:
            for d in list_devices(ws):
                if not d["paired"]:
                    continue
                try:
                    pull_usage(ws, d["id"], interfaces)
                except OutpostError as exc:
                    warnings[d["id"]] = str(exc)
    with ws.session() as s:
        devs = {d.id: d for d in s.scalars(select(Device))}
        rows = []
        for u in _latest_usage(s, device):
            dev = devs.get(u.device_id)
            extra = ((dev.info or {}).get(USAGE_KEY) or {}).get(u.model_name, {}) if dev else {}
            rows.append(
                {
                    "device": u.device_id,
                    "device_name": dev.name if dev else u.device_id,
                    "model": u.model_name,
                    "version": extra.get("version"),
                    "format": u.format,
                    "runtime": u.runtime,
                    "requests": u.requests,
                    "errors": u.errors,
                    **_latency(u, _answered(dev, u.model_name)),
                    "throughput_rps": u.throughput_rps,
                    "collected_at": _iso(u.collected_at),
                    "warning": warnings.get(u.device_id),
                }
            )
    rows.sort(key=lambda r: (r["device_name"], r["device"], r["model"]))
    if failures is not None:
        failures.update(warnings)
    return rows


def _benchmark_json(b: DeviceBenchmark, names: dict[str, str]) -> dict[str, Any]:
    return {
        "id": b.id,
        "device": b.device_id,
        "device_name": names.get(b.device_id, b.device_id),
        "export": b.export_id,
        "model": b.model_name,
        "format": b.format,
        "runtime": b.runtime,
        "runs": b.runs,
        "p50_ms": b.p50_ms,
        "p90_ms": b.p90_ms,
        "p99_ms": b.p99_ms,
        "mean_ms": b.mean_ms,
        "input": (b.details or {}).get("input"),
        "created_at": _iso(b.created_at),
    }


def bench_export(
    ws: Any,
    export_ref: str,
    device_id: str,
    runs: int = 50,
    interfaces: list[str] | None = None,
) -> dict[str, Any]:
    """Time an export's model on a device and record a DeviceBenchmark row.

    The device must run that export's version of the model (deploy it first). The agent
    times ``runs`` predictions (warm-up excluded) on the package's self-test sample, or on a
    synthetic image of the model's input size.
    """
    if not 1 <= runs <= BENCH_MAX_RUNS:
        raise DeviceError(f"--runs must be from 1 to {BENCH_MAX_RUNS}, got {runs}")
    exp = get_export(ws, export_ref)
    model_name = str(exp.manifest.get("name") or exp.id)
    want_version = exp.manifest.get("version")
    dev, client = connect(ws, device_id, interfaces)
    with client:
        info = answers.mapping(client.info(), dev.name, "its details")
        installed = {m.get("name"): m for m in answers.objects(info.get("models"))}
        model = installed.get(model_name)
        if model is None or (want_version is not None and model.get("version") != want_version):
            have = f"version {model.get('version')}" if model else "nothing"
            # a version kept for a rollback, staged, or of a deactivated model is on the
            # device already: activating it needs no second upload
            on_disk = next(
                (m for m in answers.objects(client.models()) if m.get("name") == model_name), {}
            )
            kept = {on_disk.get(k) for k in ("active", "previous", "staged")} - {None}
            todo = (
                f"it is on the device: outpost devices activate {dev.id} {model_name} "
                f"--version {want_version}"
                if want_version is not None and want_version in kept
                else f"deploy it first: outpost deploy {exp.id} --device {dev.id}"
            )
            raise DeviceError(
                f"device {dev.name} runs {have} of model {model_name}, not export {exp.id} "
                f"(version {want_version}); {todo}"
            )
        result = answers.mapping(client.bench(model_name, runs), dev.name, "a benchmark")
    # read whole before anything is stored: a latency that is not one refuses the answer
    latency = answers.mapping(result.get("latency_ms"), dev.name, "benchmark latencies")
    timed = {}
    for q in ("p50", "p90", "p99", "mean"):
        if latency.get(q) is None:
            raise answers.unreadable(dev.name, f"a benchmark without its {q}", latency)
        timed[q] = answers.millis(latency[q], dev.name, f"a benchmark {q}")
    done = answers.count(result.get("runs", runs), dev.name, "a benchmark's runs")
    if not 1 <= done <= BENCH_MAX_RUNS:
        raise answers.unreadable(dev.name, "a benchmark's runs", done)
    with ws.session() as s:
        row = DeviceBenchmark(
            device_id=dev.id,
            export_id=exp.id,
            model_name=model_name,
            format=shown(result.get("format"), FORMAT_CHARS) or exp.format,
            runtime=shown(result.get("runtime"), RUNTIME_CHARS),
            runs=done,
            p50_ms=timed["p50"],
            p90_ms=timed["p90"],
            p99_ms=timed["p99"],
            mean_ms=timed["mean"],
            details={
                k: answers.bounded(result.get(k))
                for k in ("version", "providers", "input", "warmup", "stages_ms", "latency_ms")
            },
        )
        s.add(row)
        s.flush()
        return _benchmark_json(row, {dev.id: dev.name})


def bench_table(ws: Any, export_ref: str) -> list[dict[str, Any]]:
    """The per-device latency table of an export: the newest benchmark on each device."""
    exp = get_export(ws, export_ref)
    with ws.session() as s:
        names = {d.id: d.name for d in s.scalars(select(Device))}
        query = (
            select(DeviceBenchmark)
            .where(DeviceBenchmark.export_id == exp.id)
            .order_by(DeviceBenchmark.created_at.desc(), DeviceBenchmark.id.desc())
        )
        seen: set[str] = set()
        out = []
        for b in s.scalars(query):
            if b.device_id not in seen:
                seen.add(b.device_id)
                out.append(_benchmark_json(b, names))
    out.sort(key=lambda r: r["p50_ms"])
    return out
