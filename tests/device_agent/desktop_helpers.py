"""Desktop-side helper for agent tests: a device recorded without mDNS."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from desktop_app.core.models import Device
from desktop_app.core.workspace import Workspace


def record_device(ws: Workspace, agent: Any) -> str:
    """Record the agent as `outpost devices list` would (no mDNS in these tests)."""
    url = urlsplit(agent.url)
    agent_id = str(agent.service.identity.agent_id)
    with ws.session() as s:
        s.add(Device(id=agent_id, name="bench", host=url.hostname, port=url.port, info={}))
    return agent_id


def paired_device(ws: Workspace, agent: Any) -> str:
    """Record the agent and pair this workspace with it, as `outpost devices pair` does."""
    from desktop_app.core import devices
    from device_agent.pairing import issue_code

    device_id = record_device(ws, agent)
    devices.pair(ws, device_id, issue_code(agent.service.data_dir).code)
    return device_id


def exported_and_paired(ws: Workspace, agent: Any, tmp_path: Path, **package: Any) -> str:
    """A workspace with the sample dataset and export ``exp1`` (the fake ``shapes`` package,
    version 1, made with ``package``'s arguments), paired with ``agent``: the device's id."""
    from desktop_app.core import datasets
    from desktop_app.core.dataset_sample import write_sample_dataset
    from tests.fakes import make_package
    from tests.records import record_export

    write_sample_dataset(tmp_path / "sample", count=4, size=64)
    datasets.import_yolo(ws, tmp_path / "sample", "shapes")
    record_export(ws, make_package(tmp_path / "p" / "shapes-1.outpost.zip", **package))
    return paired_device(ws, agent)
