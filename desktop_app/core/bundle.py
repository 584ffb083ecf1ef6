"""Offline bundles: one archive that installs the agent and a model on an air-gapped device.

``outpost bundle EXPORT --target linux-aarch64 --out shapes.tar.gz`` writes a tar.gz holding:

- ``package/<name>-<version>.outpost.zip``: the model;
- ``wheels/``: an ``outpost`` wheel of this version plus every wheel ``outpost[agent]``
  needs on the target (fetched with ``pip download --platform ... --only-binary=:all:``
  when the bundle is built: the one step that uses the network, and it says so);
- ``install.sh``: ``pip install --no-index --find-links wheels 'outpost[agent]==V'`` into a
  virtualenv, then the model into the agent's store, then (``--service``) the boot service;
- ``README.md`` with that one command, and ``bundle.json`` (what is inside, with sha256s).

The archive is written to a temporary name and renamed once complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop_app.core.errors import InvalidArgumentError
from device_agent.protocol_version import PROTOCOL, package_version
from runtimes.errors import OutpostError, PackageError
from runtimes.fileio import atomic_writer
from runtimes.package import PackageReader

PACKAGE_SUFFIX = ".outpost.zip"
# What a wheel is built from (pyproject's packages and its readme).
SOURCE_ITEMS: tuple[str, ...] = ("pyproject.toml", "README.md", "runtimes", "exporters")
SOURCE_ITEMS += ("trainers", "device_agent", "desktop_app")


def _manylinux(arch: str, newest: int = 28) -> list[str]:
    """``manylinux_2_N`` tags from glibc 2.``newest`` down to 2.17 (pip does not expand them)."""
    return [f"manylinux_2_{n}_{arch}" for n in range(newest, 16, -1)] + [f"manylinux2014_{arch}"]


# Target → pip ``--platform`` tags, newest first. glibc 2.28 covers Debian 10+, Ubuntu 20.04+
# (Jetson JetPack 5/6) and Raspberry Pi OS 11+; macOS 11+ on Apple silicon.
TARGETS: dict[str, list[str]] = {
    "linux-x86_64": _manylinux("x86_64"),
    "linux-aarch64": _manylinux("aarch64"),
    "macos-arm64": [f"macosx_{v}_0_arm64" for v in range(14, 10, -1)]
    + [f"macosx_{v}_0_universal2" for v in range(14, 10, -1)],
}

Downloader = Callable[[Sequence[str]], None]


class BundleError(OutpostError):
    """An offline bundle could not be built."""


@dataclass(frozen=True)
class BundleSpec:
    """What to bundle.

    Attributes:
        package: the ``.outpost.zip`` to install on the device.
        target: one of :data:`TARGETS`.
        python: the device's Python, ``3.11`` style (the wheels are built for it).
        out: the archive to write (``.tar.gz``).
        wheels_from: a local wheelhouse to resolve from instead of the package indexes.
        outpost_wheel: the ``outpost`` wheel to ship (default: built from this source tree).
    """

    package: Path
    target: str
    python: str
    out: Path
    wheels_from: Path | None = None
    outpost_wheel: Path | None = None


def python_tag(python: str) -> str:
    parts = python.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or parts[0] != "3":
        raise InvalidArgumentError(f"--python must look like 3.11, got {python!r}")
    return f"cp3{parts[1]}"


def source_root() -> Path | None:
    """This source tree (the folder with ``pyproject.toml``), when running from one."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def bundled_wheel() -> Path | None:
    """The ``outpost`` wheel shipped inside a frozen app (``OUTPOST_WHEEL`` wins)."""
    explicit = os.environ.get("OUTPOST_WHEEL")
    if explicit:
        return Path(explicit)
    base = getattr(sys, "_MEIPASS", None)
    if base is None:
        return None
    found = sorted(Path(base, "wheels").glob(f"outpost-{package_version()}-*.whl"))
    return found[-1] if found else None


def build_outpost_wheel(dest: Path, runner: Downloader | None = None) -> Path:
    """An ``outpost`` wheel of this version: the bundled one, or ``pip wheel --no-deps .``."""
    shipped = bundled_wheel()
    if shipped is not None:
        if not shipped.is_file():
            raise BundleError(f"the outpost wheel {shipped} is missing; reinstall the app")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(shipped, dest / shipped.name))
    root = source_root()
    if root is None:
        raise BundleError(
            "no outpost wheel to bundle: this install has no source tree; set OUTPOST_WHEEL "
            "to an outpost wheel of this version"
        )
    # Built from a clean copy: setuptools' in-tree build/ folder may hold deleted modules.
    tree = dest.parent / f"{dest.name}-source"
    for name in SOURCE_ITEMS:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["-q", "--wheel-dir", str(dest), str(tree)]
    try:
        (runner or run_pip)(command)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    found = sorted(dest.glob(f"outpost-{package_version()}-*.whl"))
    if not found:
        raise BundleError(
            f"pip wheel made no outpost-{package_version()} wheel in {dest}; "
            "is the source tree's version the installed one? reinstall with pip install -e ."
        )
    return found[-1]


def download_command(
    target: str, python: str, dest: Path, links: Sequence[Path], wheels_from: Path | None
) -> list[str]:
    """The ``pip download`` that fetches ``outpost[agent]``'s wheels for the target."""
    if target not in TARGETS:
        raise InvalidArgumentError(
            f"unknown target {target!r}; choose one of {', '.join(sorted(TARGETS))}"
        )
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:"]
    for tag in TARGETS[target]:
        command += ["--platform", tag]
    command += ["--python-version", python, "--implementation", "cp", "--abi", python_tag(python)]
    command += ["--abi", "abi3", "--abi", "none", "--dest", str(dest)]
    if wheels_from is not None:
        command += ["--no-index", "--find-links", str(wheels_from)]
    for link in links:
        command += ["--find-links", str(link)]
    command.append(f"outpost[agent]=={package_version()}")
    return command


def run_pip(command: Sequence[str]) -> None:
    """Run pip; a failure raises with pip's last error line."""
    done = subprocess.run(list(command), capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        errors = (
            [ln for ln in lines if ln.startswith("ERROR")] or lines or [f"exit {done.returncode}"]
        )
        raise BundleError(
            f"pip {command[3]} failed: {errors[-1].strip()}; check the network (or --wheels-from) "
            "and that the target has wheels for every dependency"
        )


def install_script(name: str, version: str, package_file: str, python: str) -> str:
    """The bundle's ``install.sh`` (POSIX sh)."""
    requirement = shlex.quote(f"outpost[agent]=={version}")
    return f"""#!/bin/sh
# Installs the Outpost agent {version} and the model {name} from this folder, offline.
# Usage: sh install.sh [--prefix DIR] [--data-dir DIR] [--python PYTHON] [--service|--user-service]
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${{PYTHON:-python3}}
PREFIX=${{OUTPOST_PREFIX:-$HOME/.local/share/outpost-agent/venv}}
DATA_DIR=${{OUTPOST_DATA_DIR:-}}
SERVICE=no
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --data-dir) DATA_DIR=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --service) SERVICE=system; shift ;;
    --user-service) SERVICE=user; shift ;;
    -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1; see sh install.sh --help" >&2; exit 2 ;;
  esac
done
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != ({python.replace(".", ", ")}))' 2>/dev/null; then
  echo "install.sh: this bundle holds wheels for Python {python}; pass --python /path/to/python{python}" >&2
  exit 1
fi
if [ "$SERVICE" = system ] && [ -z "$DATA_DIR" ]; then DATA_DIR=/var/lib/outpost-agent; fi
[ -x "$PREFIX/bin/python" ] || "$PYTHON" -m venv "$PREFIX"
PIP_CONFIG_FILE=/dev/null "$PREFIX/bin/python" -m pip install --quiet --no-index \\
  --find-links "$HERE/wheels" --upgrade {requirement}
if [ -n "$DATA_DIR" ]; then set -- --data-dir "$DATA_DIR"; else set --; fi
# an upgrade: the running service lets go of its data folder (install-service starts it again)
if command -v systemctl >/dev/null 2>&1; then
  case "$SERVICE" in
    system) systemctl stop outpost-agent 2>/dev/null || true ;;
    user) systemctl --user stop outpost-agent 2>/dev/null || true ;;
  esac
fi
"$PREFIX/bin/outpost-agent" install-package "$HERE/package/{package_file}" "$@"
case "$SERVICE" in
  system) "$PREFIX/bin/outpost-agent" install-service "$@" ;;
  user) "$PREFIX/bin/outpost-agent" install-service --user "$@" ;;
  *) echo "start it with: $PREFIX/bin/outpost-agent serve $*" ;;
esac
"""


def readme(name: str, version: str, agent_version: str, target: str, python: str) -> str:
    return f"""# Outpost offline bundle: {name} {version}

For {target}, Python {python}. Holds the Outpost agent {agent_version} (protocol {PROTOCOL}),
every wheel it needs, and the model package. Nothing is downloaded while installing.

Install (a virtualenv in ~/.local/share/outpost-agent/venv, the model in the agent's store):

    sh install.sh

Add `--service` (as root: a system service) or `--user-service` to start the agent at boot;
`--prefix DIR`, `--data-dir DIR` and `--python PATH` choose where. Running it again with a
newer bundle upgrades the agent in place and keeps the installed models. The model is not
installed beside a running agent: with `--service`/`--user-service` on systemd the script
stops the service first (and starts it again); otherwise stop the agent first.

Then pair it with a desktop: `outpost-agent pair` on the device, and on the desktop
`outpost devices pair AGENT_ID --code NNNNNN`.
"""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add_text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def build_bundle(
    spec: BundleSpec,
    *,
    downloader: Downloader = run_pip,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build the archive; returns what is inside.

    Raises:
        InvalidArgumentError: an unknown target or a malformed Python version.
        PackageError: the package cannot be read.
        BundleError: pip could not build or fetch a wheel (the message says which step).
    """
    say = progress or (lambda _m: None)
    if spec.target not in TARGETS:
        raise InvalidArgumentError(
            f"unknown target {spec.target!r}; choose one of {', '.join(sorted(TARGETS))}"
        )
    python_tag(spec.python)
    if not spec.package.is_file():
        raise PackageError(f"no package at {spec.package}; export the model first")
    with PackageReader(spec.package) as reader:
        manifest = reader.manifest
    package_file = f"{manifest.name}-{manifest.version}{PACKAGE_SUFFIX}"
    top = f"outpost-bundle-{manifest.name}-{manifest.version}-{spec.target}"
    agent_version = package_version()
    with tempfile.TemporaryDirectory(prefix="outpost-bundle-") as tmp:
        work = Path(tmp)
        if spec.outpost_wheel is not None:
            own = work / "own"
            own.mkdir()
            own_wheel = Path(shutil.copy2(spec.outpost_wheel, own / spec.outpost_wheel.name))
        else:
            say("building the outpost wheel from this install")
            own_wheel = build_outpost_wheel(work / "own", downloader)
        wheels = work / "wheels"
        wheels.mkdir()
        where = f"from {spec.wheels_from}" if spec.wheels_from else "from the package index"
        say(f"downloading the agent's wheels for {spec.target}, Python {spec.python} ({where})")
        downloader(
            download_command(spec.target, spec.python, wheels, [own_wheel.parent], spec.wheels_from)
        )
        if not (wheels / own_wheel.name).is_file():
            shutil.copy2(own_wheel, wheels / own_wheel.name)
        files = sorted(wheels.glob("*.whl"))
        inventory = {
            "format": 1,
            "agent_version": agent_version,
            "protocol": PROTOCOL,
            "target": spec.target,
            "python": spec.python,
            "package": {
                "file": f"package/{package_file}",
                "name": manifest.name,
                "version": manifest.version,
                "sha256": _sha256(spec.package),
            },
            "wheels": {f.name: _sha256(f) for f in files},
            "install": "sh install.sh",
        }
        spec.out.parent.mkdir(parents=True, exist_ok=True)
        say(f"writing {spec.out}")
        with atomic_writer(spec.out) as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
            _add_text(
                tar,
                f"{top}/README.md",
                readme(manifest.name, manifest.version, agent_version, spec.target, spec.python),
            )
            _add_text(
                tar,
                f"{top}/install.sh",
                install_script(manifest.name, agent_version, package_file, spec.python),
                0o755,
            )
            _add_text(tar, f"{top}/bundle.json", json.dumps(inventory, indent=2) + "\n")
            tar.add(spec.package, f"{top}/package/{package_file}", recursive=False)
            for f in files:
                tar.add(f, f"{top}/wheels/{f.name}", recursive=False)
    return {
        "bundle": str(spec.out),
        "folder": top,
        "size_bytes": spec.out.stat().st_size,
        "model": manifest.name,
        "model_version": manifest.version,
        "agent_version": agent_version,
        "target": spec.target,
        "python": spec.python,
        "wheels": len(files),
        "install": f"tar xzf {spec.out.name} && sh {top}/install.sh",
    }
