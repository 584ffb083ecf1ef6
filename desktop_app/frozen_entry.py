"""The entry point of the frozen Outpost Studio (``build.spec``): one executable, every role.

- no arguments, or ``studio ...``: the Studio window (``desktop_app.ui.app:main``); a build
  without the UI runs the CLI's help instead;
- ``agent ...``: the device agent (``outpost-agent ...``), e.g. a local agent for testing;
- ``worker train --framework F --spec S``: a trainer child, run by the training environment's
  Python (:mod:`desktop_app.core.training_env`): torch is not frozen;
- ``-m MODULE ...``: what ``sys.executable -m MODULE`` means in a source install, so code
  that spawns ``[sys.executable, "-m", ...]`` works unchanged in the frozen app;
- anything else: the ``outpost`` CLI (``outpost --version``, ``outpost jobs work ...``).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Sequence

# Modules a child may be started as (``python -m``) and what runs them here.
CLI_MODULES = ("desktop_app.cli", "desktop_app")
# Children that need torch (not frozen): they run in the managed training environment.
TORCH_MODULES = ("desktop_app.core.export_worker",)
AGENT_MODULES = ("device_agent", "device_agent.cli")
# Helper processes of the core, run as they are.
HELPER_MODULES = ("desktop_app.core.image_prefetch",)


def _studio(argv: Sequence[str]) -> int:
    try:
        from desktop_app.ui.app import main as studio_main
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("desktop_app.ui"):
            raise
        from desktop_app.cli import main as cli_main

        print("this build has no Studio window; the outpost CLI follows", file=sys.stderr)
        return cli_main([*argv] or ["--help"])
    return int(studio_main(list(argv)) or 0)


def _delegate(command: list[str]) -> int:
    """Become ``command`` (exec on POSIX keeps the pid, so a job's cancel reaches it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(command[0], command)  # noqa: S606 - the training environment's Python
    return subprocess.call(command)  # noqa: S603


def _worker(argv: Sequence[str]) -> int:
    import argparse

    from desktop_app.core.training_env import trainer_python
    from runtimes.errors import OutpostError
    from trainers.registry import default_registry

    parser = argparse.ArgumentParser(prog="outpost worker")
    sub = parser.add_subparsers(dest="role", required=True)
    train = sub.add_parser("train", help="run a trainer child (the job protocol on stdout)")
    train.add_argument("--framework", required=True)
    train.add_argument("--spec", required=True)
    args = parser.parse_args(list(argv))
    try:
        module = default_registry().get(args.framework).module
        python = trainer_python()
    except OutpostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _delegate([python, "-m", module, "train", "--spec", args.spec])


def _module(name: str, argv: list[str]) -> int:
    if name in CLI_MODULES:
        from desktop_app.cli import main as cli_main

        return cli_main(argv)
    if name in AGENT_MODULES:
        from device_agent.cli import main as agent_main

        return agent_main(argv)
    if name in HELPER_MODULES:
        from desktop_app.core.image_prefetch import helper_main

        return helper_main()
    if name.startswith("trainers.") or name in TORCH_MODULES:
        from desktop_app.core.training_env import trainer_python

        return _delegate([trainer_python(), "-m", name, *argv])
    print(f"error: the frozen app cannot run -m {name}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch one invocation of the frozen executable."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if not args or args[0] == "studio":
        return _studio(args[1:])
    if args[0] == "agent":
        from device_agent.cli import main as agent_main

        return agent_main(args[1:])
    if args[0] == "worker":
        return _worker(args[1:])
    if args[0] == "-m" and len(args) > 1:
        return _module(args[1], args[2:])
    from desktop_app.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
