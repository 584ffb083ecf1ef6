"""The agent's stable identity: an id created once and kept in ``<data-dir>/agent.json``."""

from __future__ import annotations

import json
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from device_agent.errors import IdentityError, one_line
from runtimes.fileio import atomic_write_text

IDENTITY_FILE = "agent.json"
# 16 hex digits today; a longer key fingerprint later, so accept up to 64.
_ID_PATTERN = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True)
class Identity:
    """Who this agent is: ``agent_id`` never changes for a data folder; ``name`` is for people."""

    agent_id: str
    name: str


def _hostname() -> str:
    name = socket.gethostname().split(".")[0].strip()
    return name or "outpost-device"


def load_or_create_identity(data_dir: Path) -> Identity:
    """Read ``agent.json`` from ``data_dir``, creating it (atomically) on first use."""
    path = Path(data_dir) / IDENTITY_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        raise IdentityError(
            f"cannot read {path}: {one_line(exc.strerror)}; check the --data-dir permissions"
        ) from None
    if raw is None:
        agent_id = secrets.token_hex(8)
        record = {
            "agent_id": agent_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        except OSError as exc:
            raise IdentityError(
                f"cannot write {path}: {one_line(exc.strerror)}; check the --data-dir permissions"
            ) from None
        return Identity(agent_id, _hostname())
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = None
    stored: object = data.get("agent_id") if isinstance(data, dict) else None
    if not isinstance(stored, str) or not _ID_PATTERN.match(stored):
        raise IdentityError(
            f"{path} is corrupt (no valid agent_id); move it away to create a new agent id"
        )
    name = data.get("name")
    return Identity(stored, name if isinstance(name, str) and name.strip() else _hostname())
