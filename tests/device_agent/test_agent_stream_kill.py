"""kill -9 during a streamed upload: after each restart the upload stands on a verified piece.

A real ``outpost-agent serve`` process receives a streamed 40 MiB upload (slowed down by the
sender so the kill lands mid-stream) and is killed with SIGKILL after a random delay. After each
restart the upload's offset is a piece boundary whose bytes on disk are the package's own,
and sending the same package again installs it (a stream that opens its own upload drops the
copies cut off before the restart, so they do not take the agent's upload slots).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import pytest

from device_agent.client import AgentClient, AgentRejectedError, AgentUnreachableError
from device_agent.uploads import DATA_FILE, RESULT_FILE, UPLOADS_DIR
from runtimes.package import write_package
from tests.device_agent.test_agent_kill_install import Agent, _serving, paired_data
from tests.fakes import make_detect_onnx, manifest_fields

TRIALS = 8
PIECE = 1 << 20
PAD_BYTES = 40 << 20  # past two fsync points (every 16 MiB) of the agent


def _package(out: Path) -> Path:
    model = make_detect_onnx(out.parent / "model.onnx")
    pad = out.parent / "pad.bin"
    pad.write_bytes(random.Random(1).randbytes(PAD_BYTES))
    write_package(out, manifest_fields(version="1"), {"model.onnx": model, "pad.bin": pad})
    return out


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("protocol", [3, 4])  # a chained stream, a sealed one
def test_kill_9_during_a_stream_keeps_only_verified_pieces(tmp_path: Path, protocol: int) -> None:
    data_dir, identity, desktop = paired_data(tmp_path, "stream kill test")
    package = _package(tmp_path / "v1.outpost.zip")
    content = package.read_bytes()
    rng = random.Random(7)
    log = open(tmp_path / "agent.log", "w")  # noqa: SIM115 (closed at the end)
    kept: list[int] = []
    try:
        for _ in range(TRIALS):
            agent = Agent(data_dir, log)
            client = AgentClient(agent.url, key=desktop, agent_key=identity.key.public_raw)
            client.protocol = protocol  # as agreed at the first info()

            def slow(_done: int, _total: int) -> None:
                time.sleep(0.02)  # after each 1 MiB block: the stream lasts ~1 s

            def push(client: AgentClient = client) -> None:
                try:
                    client.upload_package(
                        package, slow, resumable=True, piece_size=PIECE, retries=0
                    )
                except (AgentUnreachableError, AgentRejectedError):
                    pass  # the agent was killed under it

            sender = threading.Thread(target=push, daemon=True)
            sender.start()
            time.sleep(rng.uniform(0.2, 1.2))
            agent.kill()
            sender.join(60)
            client.close()
            open_uploads = [
                f
                for f in (data_dir / UPLOADS_DIR).glob("[0-9a-f]*")
                if not (f / RESULT_FILE).exists()  # committed before the kill: nothing open
            ]
            for folder in open_uploads:
                restarted = Agent(data_dir, log)
                with AgentClient(
                    restarted.url, key=desktop, agent_key=identity.key.public_raw
                ) as again:
                    status = again.upload_status(folder.name)
                restarted.kill()
                offset, received = int(status["offset"]), int(status.get("received", 0))
                assert offset % PIECE == 0 or offset == len(content)
                on_disk = (folder / DATA_FILE).read_bytes()
                assert on_disk[:offset] == content[:offset]
                # what the next stream would start after (a sealed upload counts nothing as
                # verified until its seal: the commit checks every file)
                assert on_disk[:received] == content[:received]
                kept.append(offset)
        agent = Agent(data_dir, log)
        try:
            with AgentClient(agent.url, key=desktop, agent_key=identity.key.public_raw) as c:
                c.protocol = protocol
                c.upload_package(package, resumable=True, piece_size=PIECE)
                assert _serving(c) == "1"
        finally:
            agent.kill()
    finally:
        log.close()
    assert kept, "no kill landed while an upload was open"
