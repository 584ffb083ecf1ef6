"""kill -9 during installs: the agent always comes back serving one whole version.

A real ``outpost-agent serve`` process has v1 installed; then, trial after trial, a desktop
starts installing the other version (a chunked upload, then verify, extract, load, self-test
and switch) and the agent is killed with SIGKILL after a random delay spread across those
phases. After each restart ``/v1/ready`` must recover and inference must answer with v1 or
v2, never a broken state; an install the agent had confirmed must survive the kill.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from device_agent.auth import KeyPair
from device_agent.client import AgentClient, AgentRejectedError, AgentUnreachableError
from device_agent.identity import Identity, load_or_create_identity
from device_agent.pairing import Pairing
from runtimes.package import write_package
from tests.fakes import EXPECTED, make_detect_onnx, make_image_bytes, manifest_fields

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ultralytics", "mlflow", "sqlalchemy")
WRAPPER = f"""
import sys
for name in {HEAVY!r}:
    sys.modules[name] = None
from device_agent.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
TRIALS = 50
CHUNK = 64 << 10
PAD_BYTES = 1 << 20  # incompressible padding: the upload takes 16 chunks, extraction is real work


def _package(out: Path, version: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="outpost-kill-") as tmp:
        model = make_detect_onnx(Path(tmp) / "model.onnx")
        pad = Path(tmp) / "pad.bin"
        pad.write_bytes(random.Random(int(version)).randbytes(PAD_BYTES))
        write_package(out, manifest_fields(version=version), {"model.onnx": model, "pad.bin": pad})
    return out


def _read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


class Agent:
    """One ``outpost-agent serve`` process on a free loopback port."""

    def __init__(
        self,
        data_dir: Path,
        stderr: IO[str],
        *,
        wrapper: str = WRAPPER,
        env: dict[str, str] | None = None,
        wait: bool = True,
        port: int = 0,
    ) -> None:
        env = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        argv = ["serve", "--interface", "127.0.0.1", "--port", str(port), "--no-mdns"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, *argv, "--data-dir", str(data_dir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=_read_lines, args=(self.proc.stdout, lines), daemon=True).start()
        if not wait:  # the caller expects it to die before it is ready
            return
        try:
            ready: dict[str, Any] = json.loads(lines.get(timeout=60))
        except queue.Empty:
            self.kill()
            pytest.fail("the agent printed no ready line")
        self.url = str(ready["url"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def paired_data(tmp_path: Path, who: str) -> tuple[Path, Identity, KeyPair]:
    """A data folder with the agent's identity made and a desktop key paired with it: the
    folder, the identity and the desktop's key."""
    data = tmp_path / "data"
    identity = load_or_create_identity(data)
    desktop = KeyPair.generate()
    Pairing(data).add(desktop.public_raw, who)
    return data, identity, desktop


def _serving(client: AgentClient) -> str:
    """Wait for readiness, then the version that answers inference (with valid detections)."""
    for _ in range(200):
        try:
            assert client.ready()["status"] == "ready"
            break
        except AgentRejectedError as exc:  # 503 while loading: a broken state would stay so
            assert exc.status == 503, exc
        time.sleep(0.05)
    else:
        pytest.fail(f"/v1/ready did not recover: {client.ready()}")
    result = client.infer(make_image_bytes())
    assert result["detections"] == list(EXPECTED)
    return str(result["version"])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_kill_9_during_installs_never_leaves_a_broken_agent(tmp_path: Path) -> None:
    data, identity, desktop = paired_data(tmp_path, "kill test")
    packages = {v: _package(tmp_path / f"v{v}.outpost.zip", v) for v in ("1", "2")}
    rng = random.Random(1234)
    outcomes = {"confirmed": 0, "switched": 0, "kept": 0}
    with open(tmp_path / "agent.stderr", "w") as stderr:
        agent = Agent(data, stderr)
        try:
            with AgentClient(agent.url, 30, key=desktop, agent_key=identity.key.public_raw) as c:
                t0 = time.perf_counter()
                c.upload_package(packages["1"], chunk_size=CHUNK, resumable=True)
                span = time.perf_counter() - t0  # how long one whole install takes here
                assert _serving(c) == "1"
            for _ in range(TRIALS):
                with AgentClient(
                    agent.url, 30, key=desktop, agent_key=identity.key.public_raw
                ) as client:
                    before = _serving(client)
                    target = "2" if before == "1" else "1"
                    done: dict[str, Any] = {}

                    def install(
                        client: AgentClient = client,
                        target: str = target,
                        done: dict[str, Any] = done,
                    ) -> None:
                        try:
                            done["result"] = client.upload_package(
                                packages[target], chunk_size=CHUNK, resumable=True, retries=0
                            )
                        except (AgentUnreachableError, AgentRejectedError) as exc:
                            done["error"] = exc

                    worker = threading.Thread(target=install, daemon=True)
                    worker.start()
                    time.sleep(rng.uniform(0.0, span * 1.3))
                    agent.kill()
                    worker.join(30)
                    confirmed = "result" in done
                agent = Agent(data, stderr)
                with AgentClient(
                    agent.url, 30, key=desktop, agent_key=identity.key.public_raw
                ) as client:
                    after = _serving(client)
                assert after in ("1", "2")
                if confirmed:  # the agent said "installed": that survives a kill -9
                    assert after == target
                    outcomes["confirmed"] += 1
                outcomes["switched" if after == target else "kept"] += 1
        finally:
            agent.kill()
    models = data / "models" / "shapes"
    assert sorted(p.name for p in models.iterdir()) == ["1", "2", "active.json"]
    unfinished = [p for p in (data / "uploads").iterdir() if not (p / "result.json").exists()]
    assert len(unfinished) <= 2  # at most one unfinished upload per package: resumed, not piled
    # the random delays reached both sides of the switch
    assert outcomes["switched"] > 0 and outcomes["kept"] > 0, outcomes
