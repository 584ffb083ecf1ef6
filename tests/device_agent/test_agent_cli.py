"""``outpost-agent`` argument handling: one-line reasons, non-zero exits, the id command."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent import __version__
from device_agent.auth import KeyPair
from device_agent.cli import main
from device_agent.client import AgentClient, pair_with_agent
from device_agent.pairing import issue_code


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_info_prints_a_stable_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--data-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out.strip()
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert main(["info", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agent_id"] == first


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serve", "--port", "99999"], "argument --port: must be 0..65535"),
        (["serve", "--port", "http"], "argument --port: must be a number"),
        (["serve", "--interface", "eth0"], "argument --interface: must be an IPv4 address"),
        (["serve", "--max-queue", "-1"], "argument --max-queue: must be at least 0, got -1"),
        (["serve", "--max-concurrency", "0"], "argument --max-concurrency: must be at least 1"),
        (["launch"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_serve_sizes_the_inference_limiter(tmp_path: Path) -> None:
    """--max-concurrency and --max-queue reach the running agent: its /v1/info counters."""
    argv = ["serve", "--interface", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path)]
    argv += ["--no-mdns", "--max-concurrency", "2", "--max-queue", "3"]
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "device_agent", *argv], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        key = KeyPair.generate()
        pinned = pair_with_agent(ready["url"], key, ready["agent_id"], issue_code(tmp_path).code)
        with AgentClient(ready["url"], key=key, agent_key=pinned) as client:
            counters = client.info()["concurrency"]
    finally:
        proc.terminate()
        proc.wait(30)
    assert (counters["max_in_flight"], counters["max_queued"]) == (2, 3)


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_busy_port_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [
            "serve",
            "--interface",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--no-mdns",
        ]
        assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    line = [ln for ln in captured.err.splitlines() if ln.startswith("outpost-agent:")]
    assert len(line) == 1 and f"cannot listen on 127.0.0.1:{port}" in line[0]


def test_corrupt_identity_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "agent.json").write_text("{broken")
    assert main(["info", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("outpost-agent: ")
