"""Helpers for the packaging tests: an agent process from an installed venv, and a real call."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.fakes import make_image_bytes

OFFLINE_PIP = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}


class AgentProcess:
    """``<agent> serve`` on 127.0.0.1, a free port, no mDNS; its ready line read."""

    def __init__(self, command: Sequence[str], data_dir: Path) -> None:
        self.command = [*command, "serve", "--interface", "127.0.0.1", "--port", "0"]
        self.command += ["--no-mdns", "--data-dir", str(data_dir)]
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}

    def __enter__(self) -> AgentProcess:
        self.proc = subprocess.Popen(  # noqa: S603 - our own agent
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        found: dict[str, Any] = {}

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("{") and json.loads(line).get("event") == "ready":
                    found.update(json.loads(line))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(120)
        if not found:
            self.__exit__()
            raise AssertionError(f"the agent did not start: {self.command}")
        self.ready = found
        return self

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def api_key(command: Sequence[str], data_dir: Path) -> str:
    done = subprocess.run(  # noqa: S603 - our own agent
        [*command, "keys", "create", "--name", "test", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return str(json.loads(done.stdout)["key"])


def infer(url: str, key: str, model: str) -> dict[str, Any]:
    """One inference through the agent's HTTP API with an application's key."""
    answer = httpx.post(
        f"{url}/v1/models/{model}/infer",
        content=make_image_bytes(64, 64),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body
