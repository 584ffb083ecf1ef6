"""The frozen Outpost Studio (build.spec): built with PyInstaller and driven headless."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from desktop_app.core.bundle import build_outpost_wheel
from desktop_app.core.workspace import Workspace
from device_agent.protocol_version import LOCAL, package_version
from tests.fakes import make_package
from tests.packaging.helpers import AgentProcess, api_key, infer
from tests.records import record_export as add_export_rows

ROOT = Path(__file__).resolve().parents[2]
APP = "Outpost Studio"


def build_app(tmp: Path) -> Path:
    """``make bundle``'s steps, into ``tmp`` (the wheel, then PyInstaller on build.spec)."""
    if shutil.which("objcopy") is None:
        pytest.skip("PyInstaller needs objcopy (binutils)")
    if shutil.which("pyinstaller", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("PyInstaller is not installed: pip install -e '.[bundle]'")
    wheels = tmp / "wheel"
    build_outpost_wheel(wheels)
    pyinstaller = str(Path(sys.executable).parent / "pyinstaller")
    command = [pyinstaller, "--noconfirm", "--log-level", "WARN", "--distpath", str(tmp / "dist")]
    command += ["--workpath", str(tmp / "work"), str(ROOT / "build.spec")]
    env = {**os.environ, "OUTPOST_WHEEL_DIR": str(wheels)}
    subprocess.run(command, check=True, timeout=1800, env=env, cwd=tmp)
    return tmp / "dist" / APP / APP


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("OUTPOST_FROZEN_APP")  # reuse a build of this tree
    return Path(prebuilt) if prebuilt else build_app(tmp_path_factory.mktemp("frozen"))


def run(
    app: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [str(app), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**clean, "QT_QPA_PLATFORM": "offscreen", **(env or {})},
    )


def ok(app: Path, *argv: str, env: dict[str, str] | None = None) -> Any:
    done = run(app, *argv, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--json" in argv else done.stdout


def record_export(ws_root: Path, package: Path) -> str:
    ws = Workspace.open(ws_root)
    try:
        add_export_rows(ws, package)
    finally:
        ws.close()
    return "exp1"


@pytest.mark.slow
def test_frozen_app_runs_the_whole_loop_headless(app: Path, tmp_path: Path) -> None:
    assert ok(app, "--version").strip() == f"outpost {package_version()} (protocol {LOCAL})"
    assert ok(app, "agent", "--version").startswith(f"outpost-agent {package_version()}")
    ws = tmp_path / "ws"
    sample = tmp_path / "sample"
    ok(app, "dataset", "sample", "--out", str(sample), "--count", "8", "--size", "64")
    imported = ok(
        app, "dataset", "import", str(sample), "--name", "shapes", "--workspace", str(ws), "--json"
    )
    assert imported["images"] == 8
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    image = (
        sorted(sample.rglob("*.jpg"))[0]
        if list(sample.rglob("*.jpg"))
        else sorted(sample.rglob("*.png"))[0]
    )
    predicted = ok(app, "predict", str(package), str(image), "--json")
    assert predicted and "detections" in json.dumps(predicted)
    assert ok(app, "jobs", "list", "--workspace", str(ws), "--json") == []

    data = tmp_path / "agent"
    with AgentProcess([str(app), "agent"], data) as agent:  # mDNS on 127.0.0.1 only
        assert agent.ready["mdns"] is False
    # Advertised on loopback only (--interface 127.0.0.1), then discovered there.
    serve = [str(app), "agent", "serve", "--interface", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(
        [*serve, "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # noqa: S603
    try:
        assert proc.stdout is not None
        ready = json.loads(next(line for line in proc.stdout if line.startswith("{")))
        assert ready["mdns"] is True and ready["host"] == "127.0.0.1"
        found = ok(
            app, "devices", "list", "--interface", "127.0.0.1", "--workspace", str(ws), "--json"
        )
        assert [d["id"] for d in found] == [ready["agent_id"]]
        code = ok(app, "agent", "pair", "--json", "--data-dir", str(data))["code"]
        ok(app, "devices", "pair", ready["agent_id"], "--code", code, "--workspace", str(ws))
        export_id = record_export(ws, package)
        deployed = ok(
            app,
            "deploy",
            export_id,
            "--device",
            ready["agent_id"],
            "--workspace",
            str(ws),
            "--json",
        )
        assert deployed["status"] == "installed"
        answer = infer(ready["url"], api_key([str(app), "agent"], data), "shapes")
        assert answer["model"] == "shapes" and answer["version"] == "1"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_frozen_app_runs_trainers_in_the_training_environment(app: Path, tmp_path: Path) -> None:
    envs = {"OUTPOST_ENVS_DIR": str(tmp_path / "envs")}
    refused = run(
        app, "worker", "train", "--framework", "ultralytics", "--spec", "x.json", env=envs
    )
    assert refused.returncode == 1
    assert (
        "training environment" in refused.stderr and "outpost env setup training" in refused.stderr
    )
    status = ok(app, "env", "status", "--json", env=envs)
    assert status["ready"] is False and status["app_version"] == package_version()
    # An explicit interpreter (here: this test's, which holds the trainers) runs the child.
    explicit = {**envs, "OUTPOST_TRAINER_PYTHON": sys.executable}
    spec = tmp_path / "missing-spec.json"
    child = run(
        app, "worker", "train", "--framework", "ultralytics", "--spec", str(spec), env=explicit
    )
    assert child.returncode != 0 and str(spec) in child.stdout + child.stderr
