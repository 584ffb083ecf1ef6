"""Package version and protocol negotiation between the desktop and the agent.

One source of truth: the package version comes from the installed distribution's metadata
(the ``version`` of ``pyproject.toml``), so ``outpost --version``, ``outpost-agent --version``,
``GET /v1/info`` and the mDNS TXT record all say the same after an upgrade.

The protocol is a small integer bumped when a change breaks the other side. Each side
speaks :data:`PROTOCOL` and still accepts peers down to :data:`PROTOCOL_MIN`:

- the agent publishes ``protocol`` / ``protocol_min`` in ``GET /v1/info`` and as
  ``proto`` / ``proto_min`` in its TXT record;
- the desktop sends ``Outpost-Protocol: <current>`` and ``Outpost-Protocol-Min: <min>`` on
  every request; the agent answers 426 with a one-line message when the ranges do not meet;
- the desktop checks ``/v1/info`` and refuses an agent whose range does not meet its own.

Two sides are compatible when their ranges overlap; they then talk the highest version
both speak. Every refusal names the side to update. Imports nothing heavier than the
standard library and :mod:`device_agent.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from device_agent.errors import AgentRejectedError, ascii_digits

DISTRIBUTION = "outpost"
PROTOCOL = 5  # what this build speaks (2: chained upload streams; 3: a stream may open its
# upload; 4: sealed streams, hashed by no one on the way; 5: decoded frames (.npy) to infer on)
PROTOCOL_MIN = 1  # the oldest peer protocol this build still accepts
PROTOCOL_HEADER = "Outpost-Protocol"
PROTOCOL_MIN_HEADER = "Outpost-Protocol-Min"
UPGRADE_STATUS = 426  # HTTP 426 Upgrade Required
UPDATE_DESKTOP = "update the desktop (pip install -U outpost, or install the new Outpost Studio)"
UPDATE_AGENT = "update the agent (pip install -U 'outpost[agent]' on the device)"


@lru_cache(maxsize=1)
def package_version() -> str:
    """The installed ``outpost`` distribution's version (``0+unknown`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class ProtocolRange:
    """The protocol versions one side speaks: ``minimum`` .. ``current`` inclusive."""

    current: int
    minimum: int

    def __post_init__(self) -> None:
        if self.minimum < 1 or self.minimum > self.current:
            raise ValueError(f"bad protocol range {self.minimum}..{self.current}")

    def __str__(self) -> str:
        if self.minimum == self.current:
            return str(self.current)
        return f"{self.minimum}..{self.current}"

    def overlaps(self, other: ProtocolRange) -> bool:
        return self.minimum <= other.current and other.minimum <= self.current

    def agreed(self, other: ProtocolRange) -> int | None:
        """The highest protocol both sides speak, or None when they share none."""
        return min(self.current, other.current) if self.overlaps(other) else None


LOCAL = ProtocolRange(PROTOCOL, PROTOCOL_MIN)


class IncompatibleProtocolError(AgentRejectedError):
    """The desktop and the agent share no protocol version; the message names who updates."""

    def __init__(self, message: str) -> None:
        super().__init__(UPGRADE_STATUS, message)
        self.args = (message,)

    def __str__(self) -> str:
        return self.message


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and ascii_digits(value.strip()):
        return int(value.strip())
    return None


def peer_range(current: object, minimum: object = None) -> ProtocolRange | None:
    """A peer's range from what it sent (ints or strings); None when unreadable.

    A missing minimum means the peer accepts only its current version.
    """
    cur = _as_int(current)
    low = _as_int(minimum) if minimum is not None else cur
    if cur is None or low is None or cur < 1 or not 1 <= low <= cur:
        return None
    return ProtocolRange(cur, low)


def agent_mismatch(agent: ProtocolRange, desktop: ProtocolRange | None = None) -> str | None:
    """The desktop's verdict on an agent: None when compatible, else what to update."""
    desktop = desktop or LOCAL
    if desktop.overlaps(agent):
        return None
    side = UPDATE_DESKTOP if agent.minimum > desktop.current else UPDATE_AGENT
    return f"agent speaks protocol {agent}, this desktop {desktop}: {side}"


def desktop_mismatch(desktop: ProtocolRange, agent: ProtocolRange | None = None) -> str | None:
    """The agent's verdict on a desktop: None when compatible, else what to update."""
    agent = agent or LOCAL
    if agent.overlaps(desktop):
        return None
    side = UPDATE_DESKTOP if desktop.current < agent.minimum else UPDATE_AGENT
    return f"desktop speaks protocol {desktop}, this agent {agent}: {side}"


def protocol_headers(local: ProtocolRange | None = None) -> dict[str, str]:
    """The headers the desktop sends on every request (and the agent on a 426)."""
    local = local or LOCAL
    return {PROTOCOL_HEADER: str(local.current), PROTOCOL_MIN_HEADER: str(local.minimum)}


def check_request_headers(
    headers: Mapping[str, str], agent: ProtocolRange | None = None
) -> tuple[bool, str | None]:
    """The agent's check of a request: ``(ok, message)``.

    A request without ``Outpost-Protocol`` (curl, an application with an API key) passes;
    an unreadable value or a range that misses the agent's is refused with the reason.
    """
    agent = agent or LOCAL
    raw = headers.get(PROTOCOL_HEADER)
    if raw is None:
        return True, None
    desktop = peer_range(raw, headers.get(PROTOCOL_MIN_HEADER, raw))
    if desktop is None:
        return False, (
            f"the {PROTOCOL_HEADER} header must be a whole number >= 1 (and "
            f"{PROTOCOL_MIN_HEADER} no greater), got {raw!r}; this agent speaks {agent}"
        )
    message = desktop_mismatch(desktop, agent)
    return message is None, message


def info_fields(local: ProtocolRange | None = None) -> dict[str, Any]:
    """What ``GET /v1/info`` says about versions."""
    local = local or LOCAL
    return {"version": package_version(), "protocol": local.current, "protocol_min": local.minimum}


def txt_fields(local: ProtocolRange | None = None) -> dict[str, str]:
    """What the mDNS TXT record says about versions."""
    local = local or LOCAL
    return {"proto": str(local.current), "proto_min": str(local.minimum)}


def check_agent_info(info: Mapping[str, Any], local: ProtocolRange | None = None) -> int:
    """The desktop's check of an agent's ``/v1/info``: the agreed protocol, or raise.

    An agent that publishes no ``protocol`` predates negotiation and speaks version 1.

    Raises:
        IncompatibleProtocolError: the ranges do not meet (the message names who updates),
            or the agent's values are unreadable.
    """
    local = local or LOCAL
    current = info.get("protocol", 1)
    agent = peer_range(current, info.get("protocol_min", current))
    if agent is None:
        raise IncompatibleProtocolError(
            f"the agent reports an unreadable protocol ({current!r}); {UPDATE_AGENT}"
        )
    message = agent_mismatch(agent, local)
    if message is not None:
        raise IncompatibleProtocolError(message)
    return min(agent.current, local.current)
