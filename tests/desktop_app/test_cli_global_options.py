"""--workspace and --json are accepted before the command as well as after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from desktop_app.cli import main


def test_workspace_and_json_before_the_command(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    assert main(["--workspace", str(ws), "workspace", "init"]) == 0
    capfd.readouterr()
    assert main(["--workspace", str(ws), "--json", "dataset", "list"]) == 0
    assert json.loads(capfd.readouterr().out) == []
    assert (ws / "outpost.db").is_file()


def test_option_after_the_command_wins(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["--workspace", str(first), "workspace", "init", "--workspace", str(second)]) == 0
    assert (second / "outpost.db").is_file()
    assert not first.exists()
