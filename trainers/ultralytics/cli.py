"""Entry point of the Ultralytics trainer child process."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from runtimes import netaudit
from trainers.protocol import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REPORTING,
    ReportingError,
    SpecError,
    claim_stdout,
    load_spec,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.ultralytics")
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a model from a job spec")
    train_p.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)

    netaudit.install_from_env()
    events = claim_stdout()
    try:
        try:
            spec = load_spec(args.spec)
        except SpecError as exc:
            events.emit("error", message=str(exc))
            return EXIT_FAILURE
        from trainers.ultralytics.train import run_training

        try:
            result = run_training(spec, events)
        except ReportingError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then exit 1
            traceback.print_exc(file=sys.stderr)
            events.emit("error", message=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
            return EXIT_FAILURE
        events.emit("end", status="completed", **result)
        return EXIT_OK
    except ReportingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REPORTING
