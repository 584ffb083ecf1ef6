"""``outpost bundle``: the offline archive, and its install on a machine with no index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from desktop_app.cli import main as outpost
from desktop_app.core import bundle as bundle_mod
from desktop_app.core.bundle import BundleError, BundleSpec, build_bundle, download_command
from desktop_app.core.errors import InvalidArgumentError
from device_agent.protocol_version import package_version
from runtimes.errors import PackageError
from tests.fakes import make_package
from tests.packaging.helpers import OFFLINE_PIP, AgentProcess, api_key, infer

HEAVY = {"torch", "torchvision", "ultralytics", "pyside6", "pyside6-essentials", "sqlalchemy"}
HEAVY |= {"mlflow", "shiboken6", "alembic"}


def agent_requirements() -> set[str]:
    """Every distribution ``outpost[agent]`` pulls in, walked through the installed metadata."""
    seen: set[str] = set()
    todo: list[tuple[str, set[str]]] = [("outpost", {"agent"})]
    while todo:
        name, extras = todo.pop()
        for text in distribution(name).requires or []:
            req = Requirement(text)
            env = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(e) for e in env):
                continue
            dep = canonicalize_name(req.name)
            if dep not in seen and dep != "outpost":
                seen.add(dep)
                todo.append((dep, set(req.extras)))
    return seen


def test_the_agent_extra_stays_light() -> None:
    deps = agent_requirements()
    assert {"onnxruntime", "aiohttp", "zeroconf", "numpy"} <= deps
    assert not deps & HEAVY, deps & HEAVY


def test_targets_and_cli_choices_agree() -> None:
    from desktop_app.cli import build_parser

    bundle = build_parser()._subparsers._group_actions[0].choices["bundle"]  # type: ignore[union-attr]
    target = next(a for a in bundle._actions if a.dest == "target")
    assert sorted(target.choices or []) == sorted(bundle_mod.TARGETS)


def test_download_command_pins_the_target(tmp_path: Path) -> None:
    command = download_command("linux-aarch64", "3.10", tmp_path, [tmp_path / "own"], None)
    assert command[1:5] == ["-m", "pip", "download", "--only-binary=:all:"]
    platforms = [command[i + 1] for i, a in enumerate(command) if a == "--platform"]
    assert "manylinux_2_28_aarch64" in platforms and "manylinux2014_aarch64" in platforms
    assert all("aarch64" in p for p in platforms)
    assert command[command.index("--python-version") + 1] == "3.10"
    assert "cp310" in command and "--no-index" not in command
    assert command[-1] == f"outpost[agent]=={package_version()}"
    offline = download_command("macos-arm64", "3.11", tmp_path, [], tmp_path / "house")
    assert offline[offline.index("--no-index") + 2] == str(tmp_path / "house")
    with pytest.raises(InvalidArgumentError, match="unknown target 'win-x86'; choose one of"):
        download_command("win-x86", "3.11", tmp_path, [], None)


class FakeIndex:
    """Stands in for ``pip download``: records the command, drops the wheels it was given."""

    def __init__(self, wheels: Sequence[Path]) -> None:
        self.wheels = wheels
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> None:
        self.commands.append(list(command))
        dest = Path(command[command.index("--dest") + 1])
        for wheel in self.wheels:
            shutil.copy2(wheel, dest / wheel.name)


def _own_wheel(tmp_path: Path) -> Path:
    wheel = tmp_path / "own" / f"outpost-{package_version()}-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: the layout is what is checked
    return wheel


def test_bundle_layout_install_script_and_inventory(tmp_path: Path) -> None:
    package = make_package(tmp_path / "shapes-3.outpost.zip", version="3")
    dep = tmp_path / "dep" / "onnxruntime-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    dep.parent.mkdir()
    dep.write_bytes(b"wheel bytes")
    fake = FakeIndex([dep])
    out = tmp_path / "out" / "shapes.tar.gz"
    spec = BundleSpec(package, "linux-x86_64", "3.11", out, outpost_wheel=_own_wheel(tmp_path))
    said: list[str] = []
    result = build_bundle(spec, downloader=fake, progress=said.append)
    assert any("downloading" in line for line in said)
    assert result["wheels"] == 2 and result["model_version"] == "3"
    top = "outpost-bundle-shapes-3-linux-x86_64"
    assert result["install"] == f"tar xzf shapes.tar.gz && sh {top}/install.sh"
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert {f"{top}/install.sh", f"{top}/README.md", f"{top}/bundle.json"} <= names
        assert f"{top}/package/shapes-3.outpost.zip" in names
        assert f"{top}/wheels/{dep.name}" in names
        assert tar.getmember(f"{top}/install.sh").mode == 0o755
        tar.extractall(tmp_path / "x", filter="data")
    folder = tmp_path / "x" / top
    inventory = json.loads((folder / "bundle.json").read_text())
    assert inventory["package"]["sha256"] == bundle_mod._sha256(package)
    assert inventory["wheels"][dep.name] == bundle_mod._sha256(dep)
    script = (folder / "install.sh").read_text()
    assert "pip install --quiet --no-index" in script
    assert f"'outpost[agent]=={package_version()}'" in script
    for shell in ("sh", "bash"):
        done = subprocess.run([shell, "-n", str(folder / "install.sh")], check=False)
        assert done.returncode == 0
    assert "    sh install.sh\n" in (folder / "README.md").read_text()
    assert "--platform" in fake.commands[0]


def test_a_python_other_than_the_bundles_is_refused(tmp_path: Path) -> None:
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    out = tmp_path / "b.tar.gz"
    spec = BundleSpec(package, "linux-x86_64", "3.9", out, outpost_wheel=_own_wheel(tmp_path))
    build_bundle(spec, downloader=FakeIndex([]))
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    script = next((tmp_path / "x").glob("*/install.sh"))
    done = subprocess.run(
        ["sh", str(script), "--prefix", str(tmp_path / "venv")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "holds wheels for Python 3.9; pass --python" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_bad_input_is_named_and_leaves_no_archive(tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    with pytest.raises(PackageError, match="no package at"):
        build_bundle(BundleSpec(tmp_path / "none.outpost.zip", "linux-x86_64", "3.11", out))
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    with pytest.raises(InvalidArgumentError, match="--python must look like 3.11"):
        build_bundle(BundleSpec(package, "linux-x86_64", "311", out))

    def failing(command: Sequence[str]) -> None:
        raise BundleError("pip download failed: ERROR: no matching distribution")

    spec = BundleSpec(package, "linux-aarch64", "3.11", out, outpost_wheel=_own_wheel(tmp_path))
    with pytest.raises(BundleError, match="no matching distribution"):
        build_bundle(spec, downloader=failing)
    assert list(tmp_path.glob("*.tar.gz")) == [] and list(tmp_path.glob(".b.tar.gz*")) == []


@pytest.mark.slow
def test_offline_bundle_installs_and_serves_without_an_index(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Real: ``pip download`` for linux-x86_64 (network), then an install with no index."""
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        pytest.skip("installs the linux-x86_64 bundle on this machine")
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    out = tmp_path / "shapes.tar.gz"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    argv = ["bundle", str(package), "--target", "linux-x86_64", "--python", python]
    assert outpost([*argv, "--out", str(out), "--json"]) == 0
    result = json.loads(capfd.readouterr().out)
    with tarfile.open(out) as tar:
        wheels = {Path(n).name.split("-")[0].lower() for n in tar.getnames() if n.endswith(".whl")}
        tar.extractall(tmp_path / "device", filter="data")
    assert {"outpost", "onnxruntime", "aiohttp"} <= wheels and not wheels & HEAVY
    venv, data = tmp_path / "venv", tmp_path / "data"
    env = {**os.environ, **OFFLINE_PIP, "PYTHON": sys.executable}
    script = tmp_path / "device" / result["folder"] / "install.sh"
    done = subprocess.run(
        ["sh", str(script), "--prefix", str(venv), "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "installed shapes 1 (onnx, active)" in done.stdout
    agent = [str(venv / "bin" / "outpost-agent")]
    listed = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "list"], capture_output=True, text=True, check=True
    )
    assert "torch" not in listed.stdout.lower()
    with AgentProcess(agent, data) as running:
        answer = infer(running.url, api_key(agent, data), "shapes")
    assert answer["model"] == "shapes" and answer["version"] == "1"
