"""The Python that runs trainer children, and the managed training environment.

Torch is too large to freeze into Outpost Studio, so a frozen app trains in a virtualenv it
creates once (``outpost env setup training``, the one step that downloads: torch,
Ultralytics, MLflow, timm) under the user data folder, with ``outpost[train]`` pinned to the
app's own version (from the app's bundled ``outpost`` wheel). A newer app finds the env's
recorded version stale and asks for the same command again, which upgrades it in place.

Which Python runs a trainer child (:func:`trainer_python`), first match wins:

1. ``OUTPOST_TRAINER_PYTHON``: an explicit interpreter (any env with ``outpost[train]``);
2. in a frozen app: the managed environment, once set up for this version;
3. otherwise: the current interpreter (a pip or source install already holds the trainers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from device_agent.protocol_version import package_version
from runtimes.errors import OutpostError
from runtimes.fileio import atomic_write_text

TRAINER_PYTHON_ENV = "OUTPOST_TRAINER_PYTHON"
ENVS_DIR_ENV = "OUTPOST_ENVS_DIR"
BASE_PYTHON_ENV = "OUTPOST_BASE_PYTHON"
MARKER = "outpost-env.json"
# environment name → the outpost extras it installs (training, and export jobs, which
# need torch and open the workspace)
ENVS = {"training": "train,export,desktop"}

Runner = Callable[[Sequence[str]], None]


class TrainingEnvError(OutpostError):
    """The training environment is missing, stale or could not be set up."""


def frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def envs_dir() -> Path:
    """``$OUTPOST_ENVS_DIR``, else ``<user data dir>/outpost/envs``."""
    explicit = os.environ.get(ENVS_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("outpost", appauthor=False)) / "envs"


def env_dir(name: str = "training") -> Path:
    if name not in ENVS:
        raise TrainingEnvError(f"unknown environment {name!r}; choose one of {', '.join(ENVS)}")
    return envs_dir() / name


def env_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def env_status(name: str = "training") -> dict[str, Any]:
    """Where the environment is, whether it is ready, and for which version."""
    folder = env_dir(name)
    recorded: dict[str, Any] = {}
    try:
        recorded = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    installed = recorded.get("version") if isinstance(recorded, dict) else None
    python = env_python(folder)
    return {
        "name": name,
        "path": str(folder),
        "python": str(python),
        "installed_version": installed,
        "app_version": package_version(),
        "ready": installed == package_version() and python.is_file(),
    }


def trainer_python() -> str:
    """The interpreter for trainer children (see the module docstring for the order).

    Raises:
        TrainingEnvError: a frozen app whose training environment is missing or stale, or
            an ``OUTPOST_TRAINER_PYTHON`` that does not exist.
    """
    explicit = os.environ.get(TRAINER_PYTHON_ENV, "").strip()
    if explicit:
        if not Path(explicit).is_file():
            raise TrainingEnvError(
                f"{TRAINER_PYTHON_ENV}={explicit} does not exist; point it at a Python with "
                "outpost[train] installed, or unset it"
            )
        return explicit
    if not frozen():
        return sys.executable
    status = env_status("training")
    if not status["ready"]:
        state = (
            f"is for {status['installed_version']}, this app is {status['app_version']}"
            if status["installed_version"]
            else "is not set up"
        )
        raise TrainingEnvError(
            f"the training environment {status['path']} {state}; run: outpost env setup "
            "training (downloads torch and Ultralytics once)"
        )
    return str(status["python"])


def base_python() -> str:
    """A Python to create the environment with (a frozen app has none of its own)."""
    explicit = os.environ.get(BASE_PYTHON_ENV, "").strip()
    if explicit:
        return explicit
    if not frozen():
        return sys.executable
    wanted = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (wanted, "python3", "python"):
        found = shutil.which(candidate)
        if found:
            return found
    raise TrainingEnvError(
        f"no Python found to create the training environment; install Python "
        f"{sys.version_info.major}.{sys.version_info.minor} or set {BASE_PYTHON_ENV}"
    )


def run(command: Sequence[str]) -> None:
    done = subprocess.run(list(command), check=False)  # noqa: S603 - pip and venv, shown to the user
    if done.returncode != 0:
        raise TrainingEnvError(
            f"{' '.join(command[:4])} ... failed (exit {done.returncode}); see the output above, "
            "check the network and run outpost env setup training again"
        )


def setup_env(
    name: str = "training",
    *,
    wheel: Path | None = None,
    runner: Runner = run,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Create (or upgrade) the environment with ``outpost[<extra>]`` of this version.

    The version marker is written last: an interrupted setup is never used, and running
    this again finishes it.

    Args:
        name: the environment (``training``).
        wheel: the ``outpost`` wheel to install (default: the app's bundled wheel; from a
            source tree, the tree itself).
        runner: runs each command (tests record them).
        say: progress lines.
    """
    from desktop_app.core.bundle import bundled_wheel, source_root

    tell = say or (lambda _m: None)
    folder = env_dir(name)
    extra = ENVS[name]
    version = package_version()
    python = env_python(folder)
    if not python.is_file():
        tell(f"creating {folder}")
        runner([base_python(), "-m", "venv", str(folder)])
    source = wheel or bundled_wheel()
    if source is not None:
        target = f"outpost[{extra}] @ {source.absolute().as_uri()}"
    elif (root := source_root()) is not None:
        target = f"outpost[{extra}] @ {root.as_uri()}"
    else:
        target = f"outpost[{extra}]=={version}"
    tell(f"installing {target} into {folder} (downloads from the package index)")
    runner([str(python), "-m", "pip", "install", "--upgrade", target])
    record = {"version": version, "extra": extra, "python": str(python)}
    atomic_write_text(folder / MARKER, json.dumps(record, indent=2) + "\n")
    return env_status(name)
