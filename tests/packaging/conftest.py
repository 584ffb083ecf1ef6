"""Fixtures for the packaging tests: an agent on 127.0.0.1 (no mDNS) and a workspace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop_app.core.workspace import Workspace
from tests.device_agent.conftest import AgentThread


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    running = AgentThread(tmp_path / "agent").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.open(tmp_path / "ws")
    yield workspace
    workspace.close()
