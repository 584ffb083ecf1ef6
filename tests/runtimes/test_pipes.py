"""``outpost ... | head -1``: a reader that goes away ends the command quietly (141, as a
shell's own tools end), not with a traceback; a broken pipe of anything else still raises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtimes.pipes import SIGPIPE_EXIT, quiet_on_closed_pipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["desktop_app.cli", "device_agent.cli"])
def test_a_reader_that_goes_away_ends_the_command_quietly(module: str) -> None:
    script = (
        "import sys, importlib\n"
        f"cli = importlib.import_module({module!r})\n"
        "def chatty(argv):\n"
        "    for i in range(200_000):\n"
        "        print('line', i)\n"
        "    return 0\n"
        "cli._main = chatty\n"
        "sys.exit(cli.main([]))\n"
    )
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(60) == SIGPIPE_EXIT
    assert err == ""


def test_a_broken_pipe_that_is_not_stdout_is_raised() -> None:
    def lost_socket() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        quiet_on_closed_pipe(lost_socket)
    assert quiet_on_closed_pipe(lambda: 3) == 3
