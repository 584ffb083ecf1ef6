"""Terminal output made readable in the Studio's log views.

Trainers and exporters write progress bars to their logs: ANSI escape sequences (colours,
``ESC[K`` erase-line, cursor moves) and carriage-return redraws of one line. A log view
shows each line as it last looked on a terminal: escape sequences removed and, of a line
redrawn with ``\\r``, only its last redraw.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# CSI (ESC [ … final byte), OSC (ESC ] … BEL or ESC \), and the two-byte escapes (ESC x).
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BYTES_PER_LINE = 400


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return _ANSI.sub("", text)


def last_redraw(line: str) -> str:
    """What a terminal shows of a line redrawn with carriage returns: its last redraw."""
    parts = [p for p in line.split("\r") if p != ""]
    return parts[-1] if parts else ""


def clean_line(line: str) -> str:
    """One log line as a terminal shows it: last redraw, no escapes, no control bytes."""
    return _CONTROL.sub("", strip_ansi(last_redraw(line))).rstrip()


def clean_log(text: str | Iterable[str]) -> list[str]:
    """The lines of a log (one string, or lines split on ``\\n`` only), each cleaned with
    :func:`clean_line`; lines that only redrew to nothing are dropped."""
    lines = text.split("\n") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in lines:
        if strip_ansi(raw).strip() == "" and raw != "":
            continue  # a line of nothing but escapes and carriage returns
        out.append(clean_line(raw))
    while out and out[-1] == "":
        out.pop()
    return out


def read_log_tail(path: Path | str | None, lines: int = 300) -> list[str]:
    """The last ``lines`` lines of a log file, cleaned (see :func:`clean_log`).

    Lines are split on ``\\n`` only, so a progress bar's ``\\r`` redraws stay one line and
    only the last redraw is kept. A missing or unreadable file reads as no lines.
    """
    if path is None or lines <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(0, size - lines * _BYTES_PER_LINE)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    if start > 0:  # the first line read is likely cut: drop it
        text = text.split("\n", 1)[1] if "\n" in text else ""
    return clean_log(text)[-lines:]


def metric_text(primary: Any) -> str:
    """A headline metric as core stores it (``{"key", "value"}``) shown as
    ``mAP50-95(B) 0.1234``; empty when ``primary`` is not such a metric."""
    if not isinstance(primary, dict):
        return ""
    key, value = primary.get("key"), primary.get("value")
    if not isinstance(key, str) or not key:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return f"{key.removeprefix('metrics/')} {float(value):.4f}"
