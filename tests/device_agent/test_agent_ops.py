"""Operating an agent: readiness, Prometheus metrics, disk-space checks, unpairing and forgetting."""

from __future__ import annotations

import json
import re
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.models import Device
from desktop_app.core.workspace import Workspace
from device_agent.auth import KeyPair
from device_agent.cli import main as agent_main
from device_agent.client import AgentClient, AgentRejectedError
from device_agent.pairing import PAIRED_FILE, Pairing, issue_code
from tests.device_agent.desktop_helpers import record_device
from tests.fakes import make_image_bytes

# --- readiness ---------------------------------------------------------------------------


def test_ready_with_no_model_and_with_one(agent: Any, package: Path) -> None:
    with agent.client() as client:
        assert client.ready() == {
            "status": "ready",
            "agent_id": agent.service.identity.agent_id,
            "models": [],
        }
        client.upload_package(package)
        assert client.ready()["models"] == ["shapes"]
    assert httpx.get(f"{agent.url}/v1/ready").json() == {"status": "ready"}


def test_not_ready_when_an_active_model_did_not_load(
    start_agent: Any, tmp_path: Path, package: Path
) -> None:
    data_dir = tmp_path / "broken-agent"
    (data_dir / "models" / "broken").mkdir(parents=True)
    (data_dir / "models" / "broken" / "active.json").write_text("{}")
    agent = start_agent(data_dir)
    stranger = httpx.get(f"{agent.url}/v1/ready")
    assert stranger.status_code == 503
    assert stranger.json() == {"status": "not ready"}  # no details for the unpaired
    with agent.client() as client:
        with pytest.raises(AgentRejectedError) as err:
            client.ready()
        assert err.value.status == 503
        assert "broken" in err.value.message and "corrupt" in err.value.message
    agent.service.loaded = False  # still loading its models
    still = httpx.get(f"{agent.url}/v1/ready", auth=agent.auth())
    assert still.status_code == 503 and "still loading" in still.json()["error"]


# --- metrics -----------------------------------------------------------------------------


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_are_prometheus_text(agent: Any, package: Path) -> None:
    with agent.client() as client:
        empty = client.metrics()
        assert _samples(empty) == {
            "outpost_models_installed": 0.0,
            "outpost_inference_in_flight": 0.0,
            "outpost_inference_queued": 0.0,
            "outpost_inference_rejected_total": 0.0,
        }
        client.upload_package(package)
        for _ in range(3):
            client.infer(make_image_bytes())
        with pytest.raises(AgentRejectedError):
            client.infer(b"not an image")
        response = httpx.get(f"{agent.url}/v1/metrics", auth=agent.auth())
        text = client.metrics()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE outpost_requests_total counter" in text
    assert "# TYPE outpost_inference_latency_ms summary" in text
    samples = _samples(text)
    assert samples['outpost_requests_total{model="shapes"}'] == 4
    assert samples['outpost_errors_total{model="shapes"}'] == 1
    assert samples['outpost_inference_latency_ms_count{model="shapes"}'] == 3
    quantiles = [
        samples[f'outpost_inference_latency_ms{{model="shapes",quantile="{q}"}}']
        for q in ("0.5", "0.9", "0.99")
    ]
    assert 0 < quantiles[0] <= quantiles[1] <= quantiles[2]
    assert samples["outpost_models_installed"] == 1
    line = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? ([0-9.e+-]+|NaN)$')
    for row in text.splitlines():
        assert row.startswith("# ") or line.match(row), row
    # metrics need a paired key
    assert httpx.get(f"{agent.url}/v1/metrics").status_code == 401


# --- disk space --------------------------------------------------------------------------


def test_upload_is_refused_when_the_disk_is_too_full(start_agent: Any, package: Path) -> None:
    size = package.stat().st_size
    free = {"bytes": 2 * size}
    agent = start_agent(free_space=lambda _path: free["bytes"])
    with agent.client() as client:
        with pytest.raises(AgentRejectedError) as err:
            client.upload_package(package)
        assert err.value.status == 507
        assert "needs about" in err.value.message and "free" in err.value.message
        assert "MiB" in err.value.message
        assert agent.service.store.models() == []
        assert not list((agent.service.data_dir / "tmp").glob("upload-*"))
        free["bytes"] = 3 * size
        assert client.upload_package(package)["name"] == "shapes"


# --- unpairing on the device -------------------------------------------------------------


def _paired_file(data_dir: Path) -> list[str]:
    return [d["fingerprint"] for d in json.loads((data_dir / PAIRED_FILE).read_text())["desktops"]]


def test_agent_unpair_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "agent"
    pairing = Pairing(data_dir)
    a, b, c = (pairing.add(KeyPair.generate().public_raw, n) for n in ("a", "b", "c"))
    assert agent_main(["unpair", "--data-dir", str(data_dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["paired"]
    assert {d["fingerprint"] for d in listed} == {a.fingerprint, b.fingerprint, c.fingerprint}

    assert agent_main(["unpair", "--data-dir", str(data_dir), "--key", a.fingerprint[:12]]) == 0
    assert f"revoked: {a.fingerprint}" in capsys.readouterr().out
    assert sorted(_paired_file(data_dir)) == sorted([b.fingerprint, c.fingerprint])
    if sys.platform != "win32":
        assert stat.S_IMODE((data_dir / PAIRED_FILE).stat().st_mode) == 0o600

    assert agent_main(["unpair", "--data-dir", str(data_dir), "--key", "ffffffffffff0"]) == 1
    assert "matches no paired desktop" in capsys.readouterr().err
    assert agent_main(["unpair", "--data-dir", str(data_dir), "--all"]) == 0
    assert capsys.readouterr().out.count("revoked:") == 2
    assert _paired_file(data_dir) == []
    assert not list(data_dir.glob("*.tmp*"))  # atomic write left nothing behind
    with pytest.raises(SystemExit) as usage:
        agent_main(["unpair", "--data-dir", str(data_dir), "--all", "--key", "ab"])
    assert usage.value.code == 2


def test_a_running_agent_stops_trusting_a_revoked_desktop(agent: Any) -> None:
    with agent.client() as client:
        assert client.stats()["agent_id"]
        fp = agent.desktop_key.fingerprint
        assert agent_main(["unpair", "--data-dir", str(agent.service.data_dir), "--key", fp]) == 0
        with pytest.raises(AgentRejectedError) as err:
            client.stats()
        assert err.value.status == 401 and "not paired" in err.value.message


def test_delete_pair_forgets_the_signing_desktop_only(agent: Any) -> None:
    other = KeyPair.generate()
    agent.service.pairing.add(other.public_raw, "other desktop")
    with agent.client() as client:
        answer = client.unpair()
        assert answer["unpaired"] == agent.desktop_key.fingerprint and answer["paired"] is False
        with pytest.raises(AgentRejectedError) as err:
            client.stats()
        assert err.value.status == 401
    assert _paired_file(agent.service.data_dir) == [other.fingerprint]
    assert httpx.delete(f"{agent.url}/v1/pair").status_code == 401


# --- forgetting on the desktop -----------------------------------------------------------


def _record_and_pair(ws: Workspace, agent: Any) -> str:
    agent_id = record_device(ws, agent)
    devices.pair(ws, agent_id, issue_code(agent.service.data_dir).code)
    return agent_id


def test_forget_unpins_here_and_there(
    ws: Workspace, agent: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    device_id = _record_and_pair(ws, agent)
    desktop = devices.desktop_key(ws)
    assert desktop.fingerprint in agent.service.pairing.desktops
    assert outpost(["devices", "forget", device_id[:8], "--workspace", str(ws.root)]) == 0
    out = capsys.readouterr()
    assert "forgot bench" in out.out and "dropped this desktop's key" in out.out
    assert "warning" not in out.err
    dev = devices.get_device(ws, device_id)
    assert devices.pinned_key(dev) is None and "paired_at" not in dev.info
    assert desktop.fingerprint not in agent.service.pairing.desktops
    assert devices.list_devices(ws)[0]["paired"] is False
    with pytest.raises(devices.DeviceError, match="is not paired"):
        devices.connect(ws, device_id)
    # forgetting again is harmless, and the device can be paired again
    assert devices.forget(ws, device_id)["was_paired"] is False
    devices.pair(ws, device_id, issue_code(agent.service.data_dir).code)
    _, client = devices.connect(ws, device_id)
    with client:
        assert client.stats()["agent_id"] == device_id
    # the device forgot this desktop first (outpost-agent unpair there): said as it happened
    agent.service.pairing.remove([desktop.fingerprint])
    assert outpost(["devices", "forget", device_id[:8], "--workspace", str(ws.root)]) == 0
    assert "the device had already dropped this desktop's key" in capsys.readouterr().out


def test_forget_an_unreachable_device_still_forgets_it_here(
    ws: Workspace, agent: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    device_id = _record_and_pair(ws, agent)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    with ws.session() as s:
        row = s.get(Device, device_id)
        assert row is not None
        row.port = dead_port
    argv = ["devices", "forget", device_id, "--workspace", str(ws.root), "--json"]
    assert outpost(argv) == 0
    out = capfd.readouterr()  # --json writes to the stdout file descriptor
    result = json.loads(out.out)
    assert result["was_paired"] is True and result["agent_revoked"] is False
    assert "cannot reach agent" in result["warning"]
    assert "warning:" in out.err and "outpost-agent unpair" in out.err
    assert devices.pinned_key(devices.get_device(ws, device_id)) is None
    # the agent was not told: it still trusts the key until unpaired on the device
    assert devices.desktop_key(ws).fingerprint in agent.service.pairing.desktops
    with AgentClient(
        agent.url, key=devices.desktop_key(ws), agent_key=agent.service.identity.key.public_raw
    ) as client:
        assert client.stats()["agent_id"] == device_id
