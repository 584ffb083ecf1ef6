"""The agent id is created once, kept atomically, and refused loudly when corrupt."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from device_agent.errors import IdentityError
from device_agent.identity import load_or_create_identity
from device_agent.paths import default_data_dir


def test_id_is_created_once_and_stable(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "data")
    assert re.fullmatch(r"[0-9a-f]{16}", first.agent_id)
    assert first.name
    assert load_or_create_identity(tmp_path / "data") == first
    stored = json.loads((tmp_path / "data" / "agent.json").read_text())
    assert stored["agent_id"] == first.agent_id
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["agent.json"]  # no temp files left


def test_other_data_dir_other_id(tmp_path: Path) -> None:
    assert (
        load_or_create_identity(tmp_path / "a").agent_id
        != load_or_create_identity(tmp_path / "b").agent_id
    )


def test_stored_name_wins_over_hostname(tmp_path: Path) -> None:
    (tmp_path / "agent.json").write_text(
        json.dumps({"agent_id": "0123456789abcdef", "name": "bench-jetson"})
    )
    identity = load_or_create_identity(tmp_path)
    assert (identity.agent_id, identity.name) == ("0123456789abcdef", "bench-jetson")


@pytest.mark.parametrize("content", ["{not json", "[]", '{"agent_id": "../../etc"}'])
def test_corrupt_identity_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "agent.json").write_text(content)
    with pytest.raises(IdentityError, match="agent.json is corrupt"):
        load_or_create_identity(tmp_path)


def test_default_data_dir_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path))
    assert default_data_dir().name == "outpost-agent"
