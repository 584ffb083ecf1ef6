"""A model version the manifest allows (up to 64 characters) is kept whole in usage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop_app.core import devices
from desktop_app.core.models import Device
from desktop_app.core.workspace import Workspace
from tests.device_agent.desktop_helpers import paired_device
from tests.fakes import make_image_bytes, make_package

LONG = "2024.05.01-yolov8n-coco-finetuned-v3"  # 36 characters: a valid manifest version


def test_pulled_usage_keeps_a_long_version_whole(agent: Any, ws: Workspace, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkgs" / "shapes-long.outpost.zip", version=LONG)
    with agent.client() as client:
        assert client.upload_package(pkg)["version"] == LONG
        client.infer(make_image_bytes())
    device_id = paired_device(ws, agent)
    devices.pull_usage(ws, device_id)
    with ws.session() as s:
        usage = s.get(Device, device_id).info[devices.USAGE_KEY]["shapes"]
    assert usage["version"] == LONG
    assert LONG in usage["versions"]
