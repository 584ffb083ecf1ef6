"""Entry point of the timm trainer child process."""

from __future__ import annotations

from trainers.child import child_main


def main(argv: list[str] | None = None) -> int:
    """``python -m trainers.timm train --spec F``; returns the exit code."""
    return child_main("trainers.timm", "trainers.timm.train", argv)
