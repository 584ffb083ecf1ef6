"""Entry point of the Ultralytics trainer child process."""

from __future__ import annotations

from trainers.child import child_main


def main(argv: list[str] | None = None) -> int:
    """``python -m trainers.ultralytics train --spec F``; returns the exit code."""
    return child_main("trainers.ultralytics", "trainers.ultralytics.train", argv)
