"""Upgrade in place: an agent and a desktop of one version, upgraded to a newer build, keep
their models and their workspace."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from device_agent.protocol_version import package_version
from tests.fakes import make_package
from tests.packaging.helpers import OFFLINE_PIP, AgentProcess, api_key, infer

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (
    "pyproject.toml",
    "README.md",
    "runtimes",
    "device_agent",
    "desktop_app",
    "trainers",
    "exporters",
)
# What outpost[agent,desktop] needs, fetched once into a local wheelhouse (the network step).
DEPENDENCIES = ["onnxruntime", "zeroconf", "aiohttp", "httpx", "cryptography", "numpy"]
DEPENDENCIES += ["opencv-python-headless", "pydantic", "sqlalchemy", "alembic", "platformdirs"]
DEPENDENCIES += ["defusedxml", "pycocotools", "pyyaml", "setuptools", "wheel"]


def build_wheel(version: str, tmp: Path) -> Path:
    """An outpost wheel of ``version`` from a copy of this source tree."""
    tree = tmp / f"src-{version}"
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / name)
    project = tree / "pyproject.toml"
    text = project.read_text()
    project.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1))
    out = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--wheel-dir", str(out), str(tree)], check=True, timeout=600)
    return next(out.glob(f"outpost-{version}-*.whl"))


def sh(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_agent_and_workspace_survive_an_upgrade_in_place(tmp_path: Path) -> None:
    old, new = f"{package_version()}.post1", f"{package_version()}.post2"
    house = tmp_path / "wheels"
    house.mkdir()
    build_wheel(old, tmp_path)
    build_wheel(new, tmp_path)
    sh(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--only-binary=:all:",
        "--dest",
        house,
        *DEPENDENCIES,
    )
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    offline = {**OFFLINE_PIP, "PIP_FIND_LINKS": str(house)}

    def install(version: str) -> None:
        sh(
            py,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--upgrade",
            f"outpost[agent,desktop]=={version}",
            env=offline,
        )

    install(old)
    agent, data, ws = [str(bin_dir / "outpost-agent")], tmp_path / "agent", tmp_path / "ws"
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    sh(*agent, "install-package", package, "--data-dir", data)
    key = api_key(agent, data)
    sample = tmp_path / "sample"
    sh(bin_dir / "outpost", "dataset", "sample", "--out", sample, "--count", "6", "--size", "64")
    sh(bin_dir / "outpost", "dataset", "import", sample, "--name", "shapes", "--workspace", ws)
    with AgentProcess(agent, data) as running:
        assert httpx.get(running.url + "/v1/info", timeout=10).json()["version"] == old
        before = infer(running.url, key, "shapes")

    install(new)  # in place, over the running install's files (the agent was stopped)
    assert sh(*agent, "--version").startswith(f"outpost-agent {new} ")
    assert sh(bin_dir / "outpost", "--version").startswith(f"outpost {new} ")
    with AgentProcess(agent, data) as running:
        assert httpx.get(running.url + "/v1/info", timeout=10).json()["version"] == new
        after = infer(running.url, key, "shapes")  # the same model, the same API key
    assert (
        (after["model"], after["version"])
        == (before["model"], before["version"])
        == ("shapes", "1")
    )
    assert after["detections"] == before["detections"]
    listed = json.loads(sh(bin_dir / "outpost", "dataset", "list", "--workspace", ws, "--json"))
    assert [d["name"] for d in listed] == ["shapes"]
    sh(bin_dir / "outpost", "workspace", "check", "--workspace", ws)
