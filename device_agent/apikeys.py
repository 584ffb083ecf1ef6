"""API keys for application clients: bearer tokens accepted on the inference routes only.

``outpost-agent keys create --name NAME`` makes a key (32 random bytes, base64url), prints it
once and stores only its sha256 in ``<data-dir>/api-keys.json`` (atomic writes, mode 0600).
A running agent re-reads that file when it changes, so a revoked key stops working at once.
When a key was last used is kept apart, in ``api-keys-used.json``, which only the running
agent writes (at most once a minute per key), so the CLI and the agent never overwrite each
other's changes.

A key is an application credential, not a desktop pairing: it opens ``POST /v1/infer``,
``POST /v1/models/{name}/infer`` and ``GET /v1/health`` and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device_agent.errors import AgentError, cannot_write, one_line
from runtimes.fileio import atomic_write_text

KEYS_FILE = "api-keys.json"
USED_FILE = "api-keys-used.json"
SCOPES = ("infer",)
KEY_BYTES = 32
PREFIX_CHARS = 8  # shown by ``keys list`` to tell keys apart; too short to guess the rest
USED_WRITE_INTERVAL_S = 60.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Clock = Callable[[], float]


class ApiKeyError(AgentError):
    """An API key cannot be created, found, revoked or read."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key: never the key itself, only its sha256 and a short prefix."""

    name: str
    sha256: str
    prefix: str
    scope: str
    created_at: str
    last_used: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "prefix": self.prefix,
            "scope": self.scope,
            "created_at": self.created_at,
        }

    def public(self) -> dict[str, Any]:
        """What ``keys list`` shows: no hash."""
        return {
            "name": self.name,
            "prefix": self.prefix,
            "scope": self.scope,
            "created_at": self.created_at,
            "last_used": self.last_used,
        }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def new_secret() -> str:
    """32 random bytes, base64url without padding (43 characters), drawn again until it does
    not start with ``-`` (which a shell command line would read as an option)."""
    while True:
        secret = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"=")
        if not secret.startswith(b"-"):
            return secret.decode("ascii")


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


class ApiKeys:
    """The agent's API keys, stored under ``data_dir``.

    Args:
        data_dir: the agent's state folder.
        clock: seconds since the epoch (tests pass a fake one).
    """

    def __init__(self, data_dir: Path, clock: Clock = time.time) -> None:
        self.data_dir = Path(data_dir)
        self.clock = clock
        self._keys: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._used: dict[str, float] = {}
        self._used_written: dict[str, float] = {}
        self._loaded = False

    @property
    def path(self) -> Path:
        return self.data_dir / KEYS_FILE

    @property
    def used_path(self) -> Path:
        return self.data_dir / USED_FILE

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ApiKeyError(
                f"cannot read {self.path}: {one_line(exc.strerror)}; check the folder permissions"
            ) from None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def refresh(self) -> None:
        """Re-read the key file when it changed on disk (``keys create`` / ``keys revoke``)."""
        stamp = self._file_stamp()
        if self._loaded and stamp == self._stamp:
            return
        self._keys = self._read() if stamp is not None else {}
        self._stamp = stamp
        if not self._loaded:
            self._used = self._read_used()
        self._loaded = True

    def _read(self) -> dict[str, ApiKey]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            keys = {
                str(k["name"]): ApiKey(
                    name=str(k["name"]),
                    sha256=str(k["sha256"]),
                    prefix=str(k["prefix"]),
                    scope=str(k.get("scope", "infer")),
                    created_at=str(k["created_at"]),
                )
                for k in data["keys"]
            }
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ApiKeyError(
                f"cannot read {self.path}: {one_line(exc.strerror)}; check the folder permissions"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise ApiKeyError(
                f"{self.path} is corrupt; move it away and create the API keys again"
            ) from None
        return keys

    def _read_used(self) -> dict[str, float]:
        try:
            data = json.loads(self.used_path.read_text(encoding="utf-8"))
            return {str(k): float(v) for k, v in dict(data).items()}
        except (OSError, ValueError, TypeError):
            return {}  # only a convenience: a missing or damaged file loses "last used"

    def _write(self, keys: dict[str, ApiKey]) -> None:
        body = {"keys": [k.to_json() for k in sorted(keys.values(), key=lambda k: k.name)]}
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(body, indent=2) + "\n")  # mkstemp: 0600
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise ApiKeyError(
                cannot_write(self.path, exc, "check the folder permissions")
            ) from None
        self._keys = keys
        self._stamp = self._file_stamp()

    def entries(self) -> list[ApiKey]:
        """Every key, by name, with when it was last used (as the agent recorded it)."""
        self.refresh()
        self._used = {**self._read_used(), **self._used}
        return [
            replace(k, last_used=_iso(self._used[k.name]) if k.name in self._used else None)
            for k in sorted(self._keys.values(), key=lambda k: k.name)
        ]

    def create(self, name: str, scope: str = "infer") -> tuple[ApiKey, str]:
        """Make a key called ``name``; returns it and the secret (shown once, never stored)."""
        if not _NAME.match(name):
            raise ApiKeyError(
                f"bad key name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)"
            )
        if scope not in SCOPES:
            raise ApiKeyError(f"unknown scope {scope!r}; the scopes are: {', '.join(SCOPES)}")
        self.refresh()
        if name in self._keys:
            raise ApiKeyError(
                f"an API key named {name!r} exists; revoke it first "
                f"(outpost-agent keys revoke {name}) or pick another name"
            )
        secret = new_secret()
        key = ApiKey(
            name=name,
            sha256=key_hash(secret),
            prefix=secret[:PREFIX_CHARS],
            scope=scope,
            created_at=_iso(self.clock()),
        )
        self._write({**self._keys, name: key})
        return key, secret

    def revoke(self, name: str) -> ApiKey:
        """Delete the key called ``name``; a running agent refuses it from its next request."""
        self.refresh()
        key = self._keys.get(name)
        if key is None:
            known = ", ".join(sorted(self._keys)) or "none"
            raise ApiKeyError(f"no API key named {name!r} (known: {known}); see keys list")
        self._write({n: k for n, k in self._keys.items() if n != name})
        return key

    def check(self, secret: str, scope: str = "infer") -> ApiKey | None:
        """The key ``secret`` stands for (with ``scope``), or None. Every stored hash is
        compared in constant time, so the time taken does not tell how close a guess was."""
        self.refresh()
        digest = key_hash(secret).encode("ascii")
        found: ApiKey | None = None
        for key in self._keys.values():
            if hmac.compare_digest(digest, key.sha256.encode("ascii")) and key.scope == scope:
                found = key
        if found is not None:
            self._mark_used(found.name)
        return found

    def _mark_used(self, name: str) -> None:
        now = self.clock()
        self._used[name] = now
        if now - self._used_written.get(name, float("-inf")) < USED_WRITE_INTERVAL_S:
            return
        self._used_written[name] = now
        used = {n: t for n, t in self._used.items() if n in self._keys}
        with contextlib.suppress(OSError):  # "last used" is a convenience, never a failure
            atomic_write_text(self.used_path, json.dumps(used, sort_keys=True) + "\n")
