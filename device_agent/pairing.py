"""Pairing on the agent: one-time codes, the lockout, and the desktops it trusts.

``outpost-agent pair`` writes a fresh code to ``<data-dir>/pairing-code.json`` (atomically,
mode 0600) and the running agent reads it when a desktop tries to pair. A file rather than a
local endpoint: it works whether or not the agent runs, needs no extra listening socket, and
only someone who can already write the agent's data folder (and so could replace its key and
models anyway) can make a code. A code is used once and expires after 5 minutes; 10 wrong
codes in a row lock pairing for 10 minutes. Paired desktops are kept in ``paired.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device_agent.auth import AuthError, fingerprint, unb64
from device_agent.errors import AgentError, cannot_write, one_line
from runtimes.fileio import atomic_write_text

CODE_FILE = "pairing-code.json"
PAIRED_FILE = "paired.json"
CODE_TTL_S = 300
MAX_WRONG_CODES = 10
LOCKOUT_S = 600
CODE_DIGITS = 6

Clock = Callable[[], float]


class PairingError(AgentError):
    """A pairing attempt is refused; ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_at: float


def issue_code(data_dir: Path, clock: Clock = time.time) -> IssuedCode:
    """Make a new one-time code for ``data_dir``'s agent (replacing any earlier one)."""
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    issued = IssuedCode(code, clock() + CODE_TTL_S)
    path = Path(data_dir) / CODE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"code": code, "expires_at": issued.expires_at}))
        os.chmod(path, 0o600)
    except OSError as exc:
        raise AgentError(cannot_write(path, exc, "run as the user the agent runs as")) from None
    return issued


@dataclass(frozen=True)
class PairedDesktop:
    fingerprint: str
    public_key: bytes
    name: str
    paired_at: str

    def to_json(self) -> dict[str, str]:
        from device_agent.auth import b64

        return {
            "fingerprint": self.fingerprint,
            "public_key": b64(self.public_key),
            "name": self.name,
            "paired_at": self.paired_at,
        }


class Pairing:
    """The agent's side of pairing: checks codes, counts wrong ones, remembers desktops."""

    def __init__(self, data_dir: Path, clock: Clock = time.time) -> None:
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.wrong_codes = 0
        self.locked_until = 0.0
        self._stamp: tuple[int, int] | None = None
        self.desktops: dict[str, PairedDesktop] = self._load()

    @property
    def code_path(self) -> Path:
        return self.data_dir / CODE_FILE

    @property
    def paired_path(self) -> Path:
        return self.data_dir / PAIRED_FILE

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.paired_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> None:
        """Re-read ``paired.json`` when it changed on disk (``outpost-agent unpair`` edits it
        while the agent runs); a file that became unreadable keeps the last good list."""
        if self._file_stamp() == self._stamp:
            return
        with contextlib.suppress(AgentError):
            self.desktops = self._load()

    def _load(self) -> dict[str, PairedDesktop]:
        self._stamp = self._file_stamp()
        try:
            data = json.loads(self.paired_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AgentError(
                f"{self.paired_path} is unreadable ({one_line(exc)}); move it away and pair again"
            ) from None
        desktops: dict[str, PairedDesktop] = {}
        for item in data.get("desktops", []) if isinstance(data, dict) else []:
            try:
                raw = unb64(item["public_key"], "public_key", 32)
                desktops[fingerprint(raw)] = PairedDesktop(
                    fingerprint(raw), raw, str(item.get("name", "")), str(item.get("paired_at", ""))
                )
            except (AuthError, KeyError, TypeError):
                continue
        return desktops

    def _save(self) -> None:
        body = {"desktops": [d.to_json() for d in self.desktops.values()]}
        self.paired_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.paired_path, json.dumps(body, indent=2) + "\n")
        with contextlib.suppress(OSError):
            os.chmod(self.paired_path, 0o600)
        self._stamp = self._file_stamp()

    def public_key(self, key_fingerprint: str) -> bytes | None:
        self.refresh()
        desktop = self.desktops.get(key_fingerprint)
        return desktop.public_key if desktop else None

    def add(self, public_raw: bytes, name: str) -> PairedDesktop:
        desktop = PairedDesktop(
            fingerprint(public_raw),
            public_raw,
            one_line(name, 128),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self.refresh()
        self.desktops[desktop.fingerprint] = desktop
        self._save()
        return desktop

    def remove(self, key_fingerprints: list[str]) -> list[PairedDesktop]:
        """Revoke these desktops (full fingerprints or unique prefixes); returns the revoked.

        Raises:
            AgentError: a fingerprint matches no paired desktop, or several.
        """
        self.refresh()
        chosen: dict[str, PairedDesktop] = {}
        for wanted in key_fingerprints:
            wanted = wanted.strip().lower()
            matches = [d for f, d in self.desktops.items() if wanted and f.startswith(wanted)]
            if len(matches) != 1:
                known = ", ".join(f[:16] for f in self.desktops) or "none"
                what = "matches no" if not matches else "matches several"
                raise AgentError(
                    f"key {wanted!r} {what} paired desktop; paired: {known} "
                    "(outpost-agent unpair without --key lists them)"
                )
            chosen[matches[0].fingerprint] = matches[0]
        return self._drop(list(chosen))

    def remove_all(self) -> list[PairedDesktop]:
        self.refresh()
        return self._drop(list(self.desktops))

    def _drop(self, key_fingerprints: list[str]) -> list[PairedDesktop]:
        dropped = [self.desktops.pop(f) for f in key_fingerprints if f in self.desktops]
        if dropped:
            try:
                self._save()
            except OSError as exc:
                self.desktops = self._load()
                raise AgentError(
                    cannot_write(self.paired_path, exc, "run as the user the agent runs as")
                ) from None
        return dropped

    def _read_code(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.code_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _drop_code(self) -> None:
        with contextlib.suppress(OSError):
            self.code_path.unlink()

    def attempt(self, check: Callable[[str], bool], public_raw: bytes, name: str) -> PairedDesktop:
        """Pair ``public_raw`` if ``check(code)`` holds for the active code.

        ``check`` recomputes the desktop's proof under the code (see :mod:`device_agent.auth`).
        """
        now = self.clock()
        if now < self.locked_until:
            minutes = max(1, round((self.locked_until - now) / 60))
            raise PairingError(
                429,
                f"pairing is locked for about {minutes} more minute(s) after "
                f"{MAX_WRONG_CODES} wrong codes; wait, then run outpost-agent pair again",
            )
        active = self._read_code()
        code = active.get("code") if active else None
        expires_at = active.get("expires_at") if active else None
        if not isinstance(code, str) or not isinstance(expires_at, (int, float)):
            raise PairingError(
                403, "no pairing code is active; run outpost-agent pair on the device for a new one"
            )
        if now >= expires_at:
            self._drop_code()
            raise PairingError(
                403,
                f"the pairing code has expired (codes last {CODE_TTL_S // 60} minutes); "
                "run outpost-agent pair on the device for a new one",
            )
        if not check(code):
            self.wrong_codes += 1
            if self.wrong_codes >= MAX_WRONG_CODES:
                self.wrong_codes = 0
                self.locked_until = now + LOCKOUT_S
                self._drop_code()
                raise PairingError(
                    429,
                    f"wrong pairing code; {MAX_WRONG_CODES} wrong codes in a row locked pairing "
                    f"for {LOCKOUT_S // 60} minutes: wait, then run outpost-agent pair on the "
                    "device for a fresh code",
                )
            left = MAX_WRONG_CODES - self.wrong_codes
            raise PairingError(
                403,
                f"wrong pairing code; {left} {'try' if left == 1 else 'tries'} left before "
                "pairing locks for a while: check the code outpost-agent pair shows",
            )
        self._drop_code()  # single use
        self.wrong_codes = 0
        return self.add(public_raw, name)
