"""``outpost devices sync``: the desktop pulls every paired device's usage into the
workspace (it listens on no port; agents keep their usage until it is pulled), once or
``--watch`` every N seconds; throughput lands in the usage sample's own column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.models import Device, UsageSample
from desktop_app.core.workspace import Workspace
from device_agent.pairing import issue_code
from tests.device_agent.conftest import AgentThread
from tests.device_agent.desktop_helpers import record_device
from tests.fakes import make_image_bytes


def test_sync_pulls_every_paired_device_and_reports_one_that_is_off(
    agent: AgentThread, ws: Workspace, package: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    device_id = record_device(ws, agent)
    devices.pair(ws, device_id, issue_code(agent.service.data_dir).code)
    with ws.session() as s:  # a second paired device that is switched off
        s.add(
            Device(
                id="f" * 64,
                name="off",
                host="127.0.0.1",
                port=9,
                info={devices.PIN_KEY: "A" * 43 + "="},
            )
        )
    with agent.client() as client:
        client.upload_package(package)
        for _ in range(4):
            client.infer(make_image_bytes())

    argv = ["devices", "sync", "--watch", "0.1", "--rounds", "2", "--workspace", str(ws.root)]
    assert outpost([*argv, "--json"]) == 1  # a device could not be pulled: scripts see it
    captured = capfd.readouterr()
    assert "1 of 2 device(s) could not be pulled (see the error column)" in captured.err
    rounds = json.loads(captured.out)
    assert len(rounds) == 2
    for rows in rounds:
        by_name = {r["device_name"]: r for r in rows}
        assert by_name["bench"]["requests"] == 4 and by_name["bench"]["error"] is None
        assert by_name["off"]["models"] == 0 and by_name["off"]["error"]
    with ws.session() as s:
        samples = list(s.scalars(select(UsageSample)))
    assert len(samples) == 2  # one per pull
    assert all(u.requests == 4 and u.throughput_rps > 0 for u in samples)
    table = devices.usage_report(ws)
    assert table[0]["throughput_rps"] == samples[-1].throughput_rps


@pytest.mark.parametrize(
    "argv",
    [
        ["devices", "sync", "--watch", "0"],
        ["devices", "sync", "--watch", "-5"],
        ["devices", "list", "--timeout", "-1"],
        ["devices", "add", "127.0.0.1:9", "--timeout", "0"],
        ["devices", "add", "127.0.0.1:9", "--timeout", "nan"],
        ["devices", "sync", "--watch", "1e-300"],  # a busy loop against every device
        ["devices", "list", "--timeout", "1e300"],
    ],
)
def test_seconds_must_be_above_zero(
    argv: list[str], ws: Workspace, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        outpost([*argv, "--workspace", str(ws.root)])
    assert done.value.code == 2
    err = capfd.readouterr().err
    assert "give a number of seconds above 0" in err and "Traceback" not in err
