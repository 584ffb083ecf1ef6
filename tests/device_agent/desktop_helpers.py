"""Desktop-side helper for agent tests: a device recorded without mDNS."""

from __future__ import annotations

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
