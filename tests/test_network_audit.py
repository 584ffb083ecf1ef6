"""The network audit hook refuses off-machine connections before any packet leaves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import socket, sys
from runtimes import netaudit
netaudit.install(sys.argv[1])
s = socket.socket(); s.settimeout(0.5)
try:
    s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
    print("connected")
except ConnectionRefusedError as exc:
    print("refused:", exc)
try:
    socket.getaddrinfo("example.invalid", 443)
    print("resolved")
except ConnectionRefusedError:
    print("resolve refused")
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.socket(); c.connect(srv.getsockname()); print("loopback ok")
"""


def test_audit_hook_blocks_external_and_allows_loopback(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused: network audit: blocked socket.connect to '192.0.2.1'" in proc.stdout
    assert "resolve refused" in proc.stdout
    assert "loopback ok" in proc.stdout
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and "192.0.2.1" in lines[0] and "example.invalid" in lines[1]
