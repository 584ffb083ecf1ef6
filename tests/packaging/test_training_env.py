"""The trainer child's Python (env var / managed environment / this interpreter) and the
frozen entry's dispatch."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from desktop_app import frozen_entry
from desktop_app.core import training_env as te
from device_agent.protocol_version import package_version


@pytest.fixture
def envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(te.ENVS_DIR_ENV, str(tmp_path / "envs"))
    monkeypatch.delenv(te.TRAINER_PYTHON_ENV, raising=False)
    return tmp_path / "envs"


def test_a_source_install_trains_with_this_interpreter(envs: Path) -> None:
    assert te.trainer_python() == sys.executable


def test_an_explicit_python_wins(envs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv(te.TRAINER_PYTHON_ENV, sys.executable)
    assert te.trainer_python() == sys.executable
    monkeypatch.setenv(te.TRAINER_PYTHON_ENV, str(envs / "nope" / "python"))
    with pytest.raises(te.TrainingEnvError, match="does not exist; point it at a Python"):
        te.trainer_python()


def test_the_frozen_app_needs_its_environment_then_uses_it(
    envs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(te.TrainingEnvError, match="is not set up; run: outpost env setup training"):
        te.trainer_python()
    ran: list[list[str]] = []
    folder = envs / "training"

    def runner(command: Sequence[str]) -> None:
        ran.append(list(command))
        if command[1:3] == ["-m", "venv"]:  # what venv would leave behind
            te.env_python(folder).parent.mkdir(parents=True)
            te.env_python(folder).write_text("")

    wheel = envs / f"outpost-{package_version()}-py3-none-any.whl"
    monkeypatch.setenv(te.BASE_PYTHON_ENV, sys.executable)
    status = te.setup_env(wheel=wheel, runner=runner)
    assert ran[0] == [sys.executable, "-m", "venv", str(folder)]
    assert ran[1][1:5] == ["-m", "pip", "install", "--upgrade"]
    assert ran[1][-1] == f"outpost[train,export,desktop] @ {wheel.as_uri()}"
    assert status["ready"] is True and te.trainer_python() == str(te.env_python(folder))
    # A newer app finds the environment stale and says so.
    (folder / te.MARKER).write_text(json.dumps({"version": "0.0.1"}))
    with pytest.raises(te.TrainingEnvError, match=r"is for 0\.0\.1, this app is"):
        te.trainer_python()
    te.setup_env(wheel=wheel, runner=runner)  # upgrades in place: no new venv
    assert [c[1:3] for c in ran].count(["-m", "venv"]) == 1 and te.env_status()["ready"]


def test_an_interrupted_setup_is_not_used(envs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv(te.BASE_PYTHON_ENV, sys.executable)

    def failing(command: Sequence[str]) -> None:
        if "pip" in command:
            raise te.TrainingEnvError("pip install failed")
        te.env_python(envs / "training").parent.mkdir(parents=True)
        te.env_python(envs / "training").write_text("")

    with pytest.raises(te.TrainingEnvError, match="pip install failed"):
        te.setup_env(runner=failing)
    assert te.env_status()["ready"] is False


def test_frozen_entry_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        frozen_entry.main(["agent", "--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("outpost-agent ")
    with pytest.raises(SystemExit):
        frozen_entry.main(["-m", "desktop_app.cli", "--version"])
    assert capsys.readouterr().out.startswith(f"outpost {package_version()}")
    assert frozen_entry.main(["-m", "somewhere.else"]) == 2
    assert "cannot run -m somewhere.else" in capsys.readouterr().err


def test_frozen_worker_delegates_to_the_training_python(
    envs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    became: list[list[str]] = []
    monkeypatch.setattr(frozen_entry, "_delegate", lambda command: became.append(command) or 0)
    argv = ["worker", "train", "--framework", "ultralytics", "--spec", "s.json"]
    assert frozen_entry.main(argv) == 0
    assert became == [[sys.executable, "-m", "trainers.ultralytics", "train", "--spec", "s.json"]]
    export = ["-m", "desktop_app.core.export_worker", "--workspace", "w", "--spec", "e.json"]
    assert frozen_entry.main(export) == 0
    assert became[-1] == [sys.executable, *export]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert frozen_entry.main(argv) == 1  # no training environment yet: a one-line error
