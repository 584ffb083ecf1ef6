"""A real ``outpost-agent serve`` process: ready line, mDNS on loopback, pairing with a code
from ``outpost-agent pair``, upload, infer, SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from device_agent.auth import KeyPair
from device_agent.client import AgentClient, AgentRejectedError, pair_with_agent
from device_agent.discovery import browse
from tests.fakes import EXPECTED, make_image_bytes

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ultralytics", "mlflow", "sqlalchemy")

# Blocks the heavy libraries (an import of any of them raises ImportError), then runs the CLI.
WRAPPER = f"""
import sys
for name in {HEAVY!r}:
    sys.modules[name] = None
from device_agent.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_real_agent_process(tmp_path: Path, package: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    stderr_path = tmp_path / "agent.stderr"
    argv = [
        "serve",
        "--interface",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        try:
            ready: dict[str, Any] = json.loads(lines.get(timeout=60))
        except queue.Empty:
            pytest.fail(f"no ready line; agent stderr:\n{stderr_path.read_text()}")
        assert ready["event"] == "ready" and ready["host"] == "127.0.0.1" and ready["mdns"] is True
        assert ready["mdns_addresses"] == ["127.0.0.1"]
        assert ready["url"] == f"http://127.0.0.1:{ready['port']}"

        found = browse(["127.0.0.1"], timeout=10, want_id=ready["agent_id"])
        device = next((d for d in found if d.agent_id == ready["agent_id"]), None)
        assert device is not None, f"not discovered; agent stderr:\n{stderr_path.read_text()}"
        assert device.port == ready["port"]

        with AgentClient(device.url) as unpaired, pytest.raises(AgentRejectedError) as err:
            unpaired.stats()
        assert err.value.status == 401

        code_run = subprocess.run(
            [sys.executable, "-c", WRAPPER, "pair", "--json", "--data-dir", str(tmp_path / "data")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert code_run.returncode == 0, code_run.stderr
        code = json.loads(code_run.stdout)
        assert code["agent_id"] == ready["agent_id"] and len(code["code"]) == 6
        desktop = KeyPair.generate()
        pinned = pair_with_agent(device.url, desktop, ready["agent_id"], code["code"])

        with AgentClient(device.url, key=desktop, agent_key=pinned) as client:
            assert client.upload_package(package)["name"] == "shapes"
            result = client.infer(make_image_bytes())
            assert result["detections"] == list(EXPECTED)
            stats = client.stats()
        assert stats["agent_id"] == ready["agent_id"]
        assert stats["models"]["shapes"]["requests"] == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, stderr_path.read_text()
        reader.join(5)
        assert lines.empty(), "stdout carries only the ready line"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
