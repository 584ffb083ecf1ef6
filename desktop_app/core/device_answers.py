"""Reading what a device answers before the workspace keeps it or a terminal shows it.

A paired agent is trusted to be the device it was paired with, not to be sound: an old, broken
or tampered agent may send anything JSON can hold (text for a count, NaN, 2**70, a list for an
object, terminal escapes in a name). What the desktop reads from an answer goes through these:
a number that cannot be one refuses the answer with a typed, one-line
:class:`UnreadableAnswerError` (nothing of it is stored); what is only shown or kept for the
record (a runtime's details, a benchmark) is :func:`bounded`: printable, cut, finite, shallow.
"""

from __future__ import annotations

import math
from typing import Any

from device_agent.discovery import hint
from runtimes.errors import OutpostError

MAX_COUNT = 2**62  # a count the workspace's integer columns hold, with room to add runs
MAX_ITEMS = 4096  # items of a list kept from an answer (a model's class names: thousands)
MAX_KEYS = 256  # keys of an object kept from an answer
MAX_TEXT = 300  # characters of a text kept from an answer
MAX_DEPTH = 4  # levels of nesting kept from an answer


class UnreadableAnswerError(OutpostError):
    """A device's answer that this desktop cannot read: nothing of it is kept."""


def shown(text: object, limit: int) -> str | None:
    """What a device says of itself (a name, a version), as the workspace keeps it: printable
    characters only (as mDNS hints are kept), cut to its column's ``limit``; None for nothing
    printable."""
    return hint(text, limit) or None


def unreadable(device: str, what: str, value: object) -> UnreadableAnswerError:
    """The error for ``what`` of ``device``'s answer, quoting the value printably and briefly."""
    return UnreadableAnswerError(
        f"device {device} sent {what} this desktop cannot read ({shown(repr(value), 40)}); "
        "update outpost-agent on it"
    )


def whole(value: object) -> int | None:
    """``value`` when it is a whole number from 0 to :data:`MAX_COUNT` (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def count(value: object, device: str, what: str) -> int:
    """A whole number from 0 to :data:`MAX_COUNT` (None: 0), or :class:`UnreadableAnswerError`."""
    if value is None:
        return 0
    number = whole(value)
    if number is None:
        raise unreadable(device, what, value)
    return number


def millis(value: object, device: str, what: str) -> float:
    """A finite duration of 0 or more (None: 0.0), or :class:`UnreadableAnswerError`."""
    if value is None:
        return 0.0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise unreadable(device, what, value)
    return float(value)


def mapping(value: object, device: str, what: str) -> dict[str, Any]:
    """An object (None: empty), or :class:`UnreadableAnswerError`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise unreadable(device, what, value)
    return value


def bounded(value: object, depth: int = MAX_DEPTH) -> Any:
    """``value`` as the workspace may keep and a terminal may show it: texts printable and cut
    to :data:`MAX_TEXT`, numbers finite and within :data:`MAX_COUNT` (else None), lists cut to
    :data:`MAX_ITEMS` items, objects to :data:`MAX_KEYS` keys (as texts), both to
    :data:`MAX_DEPTH` levels."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= MAX_COUNT else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return hint(value, MAX_TEXT)
    if depth <= 0:
        return None
    if isinstance(value, list):
        return [bounded(item, depth - 1) for item in value[:MAX_ITEMS]]
    if isinstance(value, dict):
        return {
            (hint(str(key), 64) or "?"): bounded(item, depth - 1)
            for key, item in list(value.items())[:MAX_KEYS]
        }
    return None


def texts(value: object, limit: int = MAX_TEXT) -> list[str]:
    """The texts of a list (anything else in it, or a value that is no list, is dropped)."""
    if not isinstance(value, list):
        return []
    return [t for t in (shown(v, limit) for v in value[:MAX_ITEMS] if isinstance(v, str)) if t]


def objects(value: object) -> list[dict[str, Any]]:
    """The objects of a list, each :func:`bounded` (anything else is dropped)."""
    if not isinstance(value, list):
        return []
    return [bounded(v) for v in value[:MAX_ITEMS] if isinstance(v, dict)]


def fallbacks(value: object) -> dict[str, str] | list[dict[str, str]] | None:
    """A runtime fallback as the agent reports it (one ``{wanted, using, reason}`` object, or a
    list of them), each field a printable text ("?" when missing); None for anything else."""

    def one(item: dict[str, Any]) -> dict[str, str]:
        return {k: shown(item.get(k), 200) or "?" for k in ("wanted", "using", "reason")}

    if isinstance(value, dict):
        return one(value)
    if isinstance(value, list):
        items = [one(v) for v in value[:MAX_ITEMS] if isinstance(v, dict)]
        return items or None
    return None


# The fields of an install or model-action answer that are read, and how.
_ANSWER_TEXTS = {"version": 64, "previous_version": 64, "format": 32, "runtime": 64, "name": 128}
_ANSWER_FLAGS = ("activated", "serving")


def install_answer(answer: object) -> dict[str, Any]:
    """An agent's answer to an install or a model action, as the desktop keeps and shows it:
    the texts printable and cut, ``activated``/``serving`` true or false, ``providers`` and
    ``warnings`` lists of texts, ``fallback`` as :func:`fallbacks` reads it, everything else
    :func:`bounded`."""
    if not isinstance(answer, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in list(answer.items())[:MAX_KEYS]:
        if not isinstance(key, str):
            continue
        if key in _ANSWER_TEXTS:
            number = isinstance(value, int) and not isinstance(value, bool)
            out[key] = shown(str(value) if number else value, _ANSWER_TEXTS[key])
        elif key in _ANSWER_FLAGS:
            out[key] = value if isinstance(value, bool) else None
        elif key == "providers":
            out[key] = texts(value, 64)
        elif key == "warnings":
            out[key] = texts(value)
        elif key == "fallback":
            out[key] = fallbacks(value)
        else:
            out[hint(key, 64) or "?"] = bounded(value)
    return out
