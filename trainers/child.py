"""The shared entry point of trainer child processes: ``python -m trainers.<framework> train``.

Each framework package calls :func:`child_main` from its ``cli`` module with the function
that trains; parsing the spec, claiming stdout for events, turning failures into an
``error`` event and choosing the exit code live here once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from runtimes import netaudit
from runtimes.errors import OutpostError
from trainers.protocol import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REPORTING,
    ReportingError,
    SpecError,
    claim_stdout,
    load_spec,
)

# Exit code of a child stopped by SIGINT (a cancel), as a shell reports an interrupted command.
EXIT_CANCELLED = 130
CANCEL_MESSAGE = (
    "stopped by a cancel (SIGINT); resume it from its last checkpoint: outpost runs resume RUN"
)


def error_message(exc: BaseException) -> str:
    """One line for the ``error`` event: an Outpost error's own message, else ``Type: message``."""
    text = str(exc) if isinstance(exc, OutpostError) else f"{type(exc).__name__}: {exc}"
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:500]


def child_main(package: str, train_module: str, argv: list[str] | None = None) -> int:
    """Run one training job from a spec file and report it on the protocol stream.

    Args:
        package: The trainer package (``trainers.ultralytics``), used as the program name.
        train_module: Module holding ``run_training(spec, events) -> end fields``; imported
            only after the spec is read, so a bad spec is reported without loading torch.
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 on a reported failure, 2 when reporting failed,
        130 when stopped by SIGINT (the trainer saved nothing more than its last epoch's
        ``last.pt``; the ``error`` event says so).
    """
    parser = argparse.ArgumentParser(prog=f"python -m {package}")
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
        try:
            run_training: Any = importlib.import_module(train_module).run_training
            result = run_training(spec, events)
        except ReportingError:
            raise
        except KeyboardInterrupt:
            print(f"{package}: {CANCEL_MESSAGE}", file=sys.stderr)
            events.emit("error", message=CANCEL_MESSAGE)
            return EXIT_CANCELLED
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then exit 1
            if not isinstance(exc, OutpostError):
                traceback.print_exc(file=sys.stderr)
            events.emit("error", message=error_message(exc))
            return EXIT_FAILURE
        events.emit("end", status="completed", **result)
        return EXIT_OK
    except ReportingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REPORTING


def run_as_main(package: str, train_module: str) -> None:
    """``__main__`` of a trainer package: run, then leave without the interpreter's teardown.

    Everything is written and reported by then; skipping the slow teardown of torch and
    MLflow (about 2 s) lets the desktop see the run finish when it finishes. A cancel
    (SIGINT) ends here too: the interpreter's teardown would wait for data loader workers
    and threads for seconds, until the executor's SIGTERM.
    """
    code = child_main(package, train_module)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
