"""Fixtures for the agent tests: packages on disk and an agent served from a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop_app.core.workspace import Workspace
from device_agent.auth import KeyPair
from device_agent.client import AgentClient, SignedAuth
from device_agent.service import AgentService
from tests.fakes import make_package


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for another thread's progress; fails with ``what`` if it never comes."""
    event = threading.Event()
    for _ in range(2000):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class AgentThread:
    """An :class:`AgentService` on its own event loop in a thread, so tests can stay synchronous."""

    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        kwargs.setdefault("advertise", False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="agent-loop", daemon=True)
        self.service = AgentService(data_dir, **kwargs)

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def desktop_key(self) -> KeyPair:
        """A desktop key paired with this agent (made and recorded on first use)."""
        if not hasattr(self, "_desktop_key"):
            self._desktop_key = KeyPair.generate()
            self.service.pairing.add(self._desktop_key.public_raw, "test desktop")
        return self._desktop_key

    def auth(self) -> SignedAuth:
        """httpx auth for a paired desktop that also checks the agent's signed answers."""
        return SignedAuth(self.desktop_key, self.service.identity.key.public_raw)

    def client(self, **kwargs: Any) -> AgentClient:
        """An :class:`AgentClient` for a paired desktop, pinned to this agent's key."""
        return AgentClient(
            self.url,
            key=self.desktop_key,
            agent_key=self.service.identity.key.public_raw,
            **kwargs,
        )

    def start(self) -> AgentThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.service.async_start(), self.loop).result(60)
        return self

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.service.async_stop(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(60)
            self.loop.close()


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A valid package ``shapes`` version 1."""
    return make_package(tmp_path / "pkgs" / "shapes-1.outpost.zip")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    """A running agent (HTTP only, no mDNS) on 127.0.0.1 and a free port."""
    running = AgentThread(tmp_path / "agent").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``start_agent(data_dir=None, **AgentService kwargs)``; all are stopped at teardown."""
    started: list[AgentThread] = []

    def start(data_dir: Path | None = None, **kwargs: Any) -> AgentThread:
        running = AgentThread(data_dir or tmp_path / f"agent-{len(started)}", **kwargs).start()
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            running.stop()


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    """A fresh desktop workspace, for tests that drive an agent from the desktop side."""
    workspace = Workspace.open(tmp_path / "ws")
    yield workspace
    workspace.close()
