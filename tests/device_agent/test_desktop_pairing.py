"""The desktop side of pairing: ``outpost devices pair``, the pinned key, authenticated use."""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.models import Device
from desktop_app.core.workspace import Workspace
from device_agent.auth import KeyPair, b64
from device_agent.client import FingerprintMismatchError
from device_agent.pairing import issue_code
from tests.device_agent.desktop_helpers import record_device
from tests.fakes import make_image_bytes


def test_pair_pins_the_agent_and_requests_are_authenticated(
    ws: Workspace, agent: Any, package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device_id = record_device(ws, agent)
    with pytest.raises(devices.DeviceError, match="is not paired"):
        devices.connect(ws, device_id)

    code = issue_code(agent.service.data_dir).code
    argv = ["devices", "pair", device_id[:8], "--code", code, "--workspace", str(ws.root)]
    assert outpost(argv) == 0
    assert "is pinned" in capsys.readouterr().out
    dev = devices.get_device(ws, device_id)
    assert devices.pinned_key(dev) == agent.service.identity.key.public_raw
    key_file = ws.root / "identity" / "desktop.key"
    if sys.platform != "win32":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    desktop = devices.desktop_key(ws)
    assert desktop.fingerprint in agent.service.pairing.desktops

    _, client = devices.connect(ws, device_id)
    with client:
        client.upload_package(package)
        client.infer(make_image_bytes())
    rows = devices.pull_usage(ws, device_id)
    assert [(r["model"], r["requests"]) for r in rows] == [("shapes", 1)]
    assert devices.list_devices(ws)[0]["paired"] is True


def test_a_device_with_another_key_is_refused(
    ws: Workspace, agent: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    device_id = record_device(ws, agent)
    devices.pair(ws, device_id, issue_code(agent.service.data_dir).code)
    with ws.session() as s:
        row = s.get(Device, device_id)
        assert row is not None
        row.info = {**row.info, devices.PIN_KEY: b64(KeyPair.generate().public_raw)}
    with pytest.raises(FingerprintMismatchError, match="fingerprint mismatch"):
        devices.connect(ws, device_id)
    assert outpost(["usage", "--device", device_id, "--workspace", str(ws.root)]) == 1
    assert "fingerprint mismatch" in capsys.readouterr().err


def test_bad_code_and_unknown_device(
    ws: Workspace, agent: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    device_id = record_device(ws, agent)
    with pytest.raises(devices.DeviceError, match="must be 6 digits"):
        devices.pair(ws, device_id, "12ab")
    code = issue_code(agent.service.data_dir).code
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    with pytest.raises(devices.DeviceError, match="refused pairing: wrong pairing code"):
        devices.pair(ws, device_id, wrong)
    assert (
        outpost(["devices", "pair", "ffff", "--code", "123456", "--workspace", str(ws.root)]) == 1
    )
    assert "outpost devices list" in capsys.readouterr().err
