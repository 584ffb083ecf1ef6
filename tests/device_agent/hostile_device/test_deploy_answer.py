"""What `outpost deploy` returns of the agent's install answer is the answer's data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop_app.core import devices
from desktop_app.core.workspace import Workspace
from tests.device_agent.desktop_helpers import exported_and_paired

COCO = tuple(f"class{i}" for i in range(80))  # a COCO model: 80 classes


def test_deploy_returns_every_class_name_of_the_installed_model(
    agent: Any, ws: Workspace, tmp_path: Path
) -> None:
    device_id = exported_and_paired(ws, agent, tmp_path, class_names=COCO)
    result = devices.deploy(ws, "exp1", device_id)
    assert agent.service.store.get("shapes").manifest.model.class_names == list(COCO)
    assert result["installed"]["class_names"] == list(COCO)
