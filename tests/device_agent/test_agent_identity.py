"""The agent's key and id are created once, kept atomically (0600), and refused when corrupt."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest

from device_agent import auth
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
    # no temp files left
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["agent.json", "identity.key"]
    # the id is the fingerprint of the public key
    assert first.agent_id == hashlib.sha256(first.key.public_raw).hexdigest()[:16]
    if sys.platform != "win32":
        mode = stat.S_IMODE((tmp_path / "data" / "identity.key").stat().st_mode)
        assert mode == 0o600


def test_other_data_dir_other_id(tmp_path: Path) -> None:
    assert (
        load_or_create_identity(tmp_path / "a").agent_id
        != load_or_create_identity(tmp_path / "b").agent_id
    )


def test_old_id_file_is_replaced_by_a_key_and_keeps_its_name(tmp_path: Path) -> None:
    # An agent.json from before keys: a random id and no key. A new identity replaces it.
    (tmp_path / "agent.json").write_text(
        json.dumps({"agent_id": "0123456789abcdef", "name": "bench-jetson"})
    )
    identity = load_or_create_identity(tmp_path)
    assert identity.agent_id != "0123456789abcdef" and identity.name == "bench-jetson"
    assert json.loads((tmp_path / "agent.json").read_text())["agent_id"] == identity.agent_id
    assert load_or_create_identity(tmp_path) == identity


def test_corrupt_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "identity.key").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(IdentityError, match="identity.key is corrupt"):
        load_or_create_identity(tmp_path)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"agent_id": "../../etc"}'])
def test_corrupt_identity_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "agent.json").write_text(content)
    with pytest.raises(IdentityError, match="agent.json is corrupt"):
        load_or_create_identity(tmp_path)


@pytest.mark.parametrize(
    ("err", "advice"),
    [
        (errno.ENOSPC, "free some space"),
        (errno.EROFS, "check the disk (a failing SD card or disk is remounted read-only)"),
        (errno.EACCES, "check the folder permissions"),
    ],
)
def test_a_key_that_cannot_be_written_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, advice: str
) -> None:
    """A full or read-only disk is named as such, not as a permissions problem."""

    def refuse(*_: object) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(auth, "atomic_write_bytes", refuse)
    with pytest.raises(
        IdentityError, match=f"cannot write .*identity.key: .*; {re.escape(advice)}"
    ):
        load_or_create_identity(tmp_path / "agent")


def test_default_data_dir_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path))
    assert default_data_dir().name == "outpost-agent"
