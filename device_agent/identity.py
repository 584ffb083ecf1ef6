"""The agent's stable identity: an Ed25519 key made once, and an id that is its fingerprint.

``<data-dir>/identity.key`` holds the key (PEM, mode 0600); ``<data-dir>/agent.json`` holds
the id (the first 16 hex digits of the key's sha256 fingerprint) and an optional name. An
``agent.json`` from before keys existed (a random id, no key) is replaced by a new identity.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device_agent.auth import KeyPair, agent_id_for, load_or_create_key
from device_agent.errors import IdentityError, cannot_write, one_line
from runtimes.fileio import atomic_write_text

IDENTITY_FILE = "agent.json"
KEY_FILE = "identity.key"
# 16 hex digits today; a longer key fingerprint later, so accept up to 64.
_ID_PATTERN = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True)
class Identity:
    """Who this agent is: ``agent_id`` is the fingerprint of ``key``; ``name`` is for people."""

    agent_id: str
    name: str
    key: KeyPair


def _hostname() -> str:
    name = socket.gethostname().split(".")[0].strip()
    return name or "outpost-device"


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(
            f"cannot read {path}: {one_line(exc.strerror)}; check the --data-dir permissions"
        ) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = None
    stored: object = data.get("agent_id") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(stored, str) or not _ID_PATTERN.match(stored):
        raise IdentityError(
            f"{path} is corrupt (no valid agent_id); move it away to create a new agent id"
        )
    return data


def load_or_create_identity(data_dir: Path) -> Identity:
    """Load the agent's key and id from ``data_dir``, creating them (atomically) on first use."""
    data_dir = Path(data_dir)
    path = data_dir / IDENTITY_FILE
    record = _read_record(path)
    key, _ = load_or_create_key(data_dir / KEY_FILE)
    agent_id = agent_id_for(key.public_raw)
    name = record.get("name") if record else None
    if record is None or record.get("agent_id") != agent_id:
        # First start, or an agent.json from before keys: the id follows the key.
        new_record: dict[str, Any] = {
            "agent_id": agent_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if isinstance(name, str) and name.strip():
            new_record["name"] = name
        try:
            atomic_write_text(path, json.dumps(new_record, indent=2) + "\n")
        except OSError as exc:
            raise IdentityError(
                cannot_write(path, exc, "check the --data-dir permissions")
            ) from None
    return Identity(agent_id, name if isinstance(name, str) and name.strip() else _hostname(), key)
