"""Isolated toolchain environments for exporters whose dependencies conflict with Outpost's.

Some converters pin versions the main environment cannot take: LiteRT's ``litert-torch``
(~1 GB with JAX and its pins), ``coremltools`` (numpy <= 2.3.5). Each such toolchain gets
its own virtual environment under the user's cache folder (``OUTPOST_TOOLENV_DIR``
overrides it), created once by ``outpost export setup NAME`` with pip and the machine's
configured package indexes, and reused by every export after that.

A toolenv is layered over the environment Outpost runs in: a ``.pth`` file adds the main
environment's ``site-packages`` *after* the toolenv's own, so torch and Ultralytics are
shared (not downloaded again) while the toolenv's pinned packages take precedence. The
export runs as a child process in the toolenv (:func:`ToolEnv.call`): JSON in on stdin,
JSON out in a result file, stderr kept for the error message. The main process never
imports the toolchain's libraries.

``toolenv.json`` in the environment records the packages it was set up with and every
installed version (provenance for the exports it makes); it is written last, so an
environment without it is incomplete and is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.base import ExportArtifact, ExportError, ExportRequest
from runtimes.fileio import atomic_write_text

ENV_VAR = "OUTPOST_TOOLENV_DIR"
RECORD = "toolenv.json"
CHILD_TIMEOUT_S = 3600.0
# The project root: the folder holding the ``exporters`` package (put on the child's path).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Toolchain:
    """One isolated toolchain: what it installs and what it is for."""

    name: str
    title: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]  # imported by the child (checked after set-up)
    approx_size: str
    purpose: str


TOOLCHAINS: dict[str, Toolchain] = {
    "litert": Toolchain(
        name="litert",
        title="LiteRT (TFLite)",
        packages=("litert-torch>=0.10.0", "ai-edge-quantizer>=0.10.0", "ai-edge-litert>=2.3.0"),
        modules=("litert_torch", "ai_edge_quantizer", "ai_edge_litert"),
        approx_size="~1 GB",
        purpose="tflite export (fp32, fp16, int8) through litert-torch and ai-edge-quantizer",
    ),
    "coreml": Toolchain(
        name="coreml",
        title="CoreML",
        packages=("coremltools>=9.0", "numpy>=1.24,<=2.3.5"),
        modules=("coremltools",),
        approx_size="~60 MB",
        purpose="coreml export (.mlpackage; fp32, fp16, int8 weights) through coremltools",
    ),
}

# The export formats that run in a toolchain's environment.
FORMAT_TOOLCHAINS = {"tflite": "litert", "coreml": "coreml"}


def toolenv_root() -> Path:
    """The folder holding every toolenv: ``$OUTPOST_TOOLENV_DIR`` or the user's cache folder."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("outpost")) / "toolenvs"


def toolchain(name: str) -> Toolchain:
    try:
        return TOOLCHAINS[name]
    except KeyError:
        raise ExportError(
            f"unknown export toolchain {name!r}; choose one of {', '.join(TOOLCHAINS)}"
        ) from None


def _main_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).lstat().st_size
            except OSError:
                continue
    return total


@dataclass(frozen=True)
class ToolEnv:
    """A toolchain's environment on this machine (which may not exist yet)."""

    spec: Toolchain
    path: Path

    @classmethod
    def for_name(cls, name: str, root: Path | None = None) -> ToolEnv:
        spec = toolchain(name)
        return cls(spec, (root or toolenv_root()) / name)

    @property
    def python(self) -> Path:
        return _venv_python(self.path)

    @property
    def record_file(self) -> Path:
        return self.path / RECORD

    def record(self) -> dict[str, Any] | None:
        """The set-up record, or None when the environment is absent or incomplete."""
        if not self.python.exists() or not self.record_file.is_file():
            return None
        try:
            data: dict[str, Any] = json.loads(self.record_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data

    def exists(self) -> bool:
        return self.record() is not None

    def missing_message(self, what: str) -> str:
        return (
            f"{what} export needs its toolchain; run `outpost export setup {self.spec.name}` "
            f"(installs {self.spec.approx_size} once)"
        )

    def require(self, what: str) -> dict[str, Any]:
        """The set-up record; a clear :class:`ExportError` when the toolenv is not set up.
        Writes nothing."""
        record = self.record()
        if record is None:
            raise ExportError(self.missing_message(what))
        return record

    def versions(self) -> dict[str, str]:
        """The versions of the toolchain's own packages (for an export's ``tools``)."""
        record = self.record() or {}
        wanted = {_dist_name(p) for p in self.spec.packages}
        installed: dict[str, str] = record.get("packages", {})
        return {name: v for name, v in installed.items() if _normalise(name) in wanted}

    def status(self) -> dict[str, Any]:
        record = self.record()
        return {
            "toolchain": self.spec.name,
            "title": self.spec.title,
            "path": str(self.path),
            "ready": record is not None,
            "packages": list(self.spec.packages),
            "approx_size": self.spec.approx_size,
            "size_mb": record.get("size_mb") if record else None,
            "setup_seconds": record.get("setup_seconds") if record else None,
            "purpose": self.spec.purpose,
        }

    def setup(
        self, *, force: bool = False, echo: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Create the environment (venv + pip install of the toolchain's packages) and write its
        record. Built in a temporary folder beside the final one and renamed when complete, so
        a failed set-up leaves nothing behind. Returns the record."""
        say = echo or (lambda _msg: None)
        if self.exists() and not force:
            found = self.verify()["modules"]
            say(
                f"{self.spec.title} toolchain already set up at {self.path} ("
                + ", ".join(f"{m} {v}" for m, v in found.items())
                + "); --force rebuilds it"
            )
            return self.require(self.spec.name)
        root = self.path.parent
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.spec.name}.", dir=root))
        say(
            f"setting up the {self.spec.title} toolchain in {self.path}: pip install "
            f"{' '.join(self.spec.packages)} ({self.spec.approx_size}, once)"
        )
        t0 = time.perf_counter()
        try:
            # No pip of its own: the main environment's pip arrives through the layering and
            # installs into the toolenv (it never removes a package of the main environment).
            venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(staging)
            python = _venv_python(staging)
            site = _site_packages(python)
            # After the toolenv's own site-packages: its pins win, torch/Ultralytics are shared.
            (site / "zz_outpost_main_env.pth").write_text(
                f"import site; site.addsitedir({_main_site_packages()!r})\n", encoding="utf-8"
            )
            _pip(python, ["install", "--no-input", *self.spec.packages], say)
            _check_imports(python, self.spec.modules)
            packages = _installed(python)
            seconds = time.perf_counter() - t0
            record = {
                "toolchain": self.spec.name,
                "requested": list(self.spec.packages),
                "packages": packages,
                "python": sys.version.split()[0],
                "layered_over": _main_site_packages(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "setup_seconds": round(seconds, 1),
                "size_mb": round(_folder_size(staging) / 2**20, 1),
            }
            atomic_write_text(staging / RECORD, json.dumps(record, indent=2, sort_keys=True))
            if self.path.exists():
                shutil.rmtree(self.path)
            os.replace(staging, self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        say(
            f"{self.spec.title} toolchain ready: {record['size_mb']} MB in "
            f"{record['setup_seconds']} s ({self.path})"
        )
        return record

    def verify(self) -> dict[str, Any]:
        """Run a child in the toolenv that imports the toolchain's modules; their versions."""
        return self.call(
            f"{__name__}:probe_child",
            {"modules": list(self.spec.modules)},
            what=self.spec.name,
            timeout=300,
        )

    def remove(self) -> bool:
        if not self.path.exists():
            return False
        shutil.rmtree(self.path)
        return True

    def call(
        self,
        target: str,
        payload: dict[str, Any],
        *,
        what: str,
        timeout: float = CHILD_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Run ``target`` (``"package.module:function"``, taking and returning a JSON-able dict)
        in the toolenv as a child process. Its failure becomes one :class:`ExportError` line
        with the child's last error line."""
        self.require(what)
        with tempfile.TemporaryDirectory(prefix="outpost-toolenv-") as tmp:
            result_file = Path(tmp) / "result.json"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(_child_path())}
            env.pop("PYTHONHOME", None)
            try:
                proc = subprocess.run(
                    [str(self.python), "-m", "exporters.toolenv", target, str(result_file)],
                    input=json.dumps(payload),
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise ExportError(
                    f"{what} export did not finish within {timeout:.0f} s; try a smaller --imgsz"
                ) from None
            if proc.returncode != 0 or not result_file.is_file():
                raise ExportError(f"{what} export failed: {_last_error(proc.stderr)}")
            result: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
            return result


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _dist_name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep, 1)[0]
    return _normalise(requirement)


def _child_path() -> list[str]:
    existing = os.environ.get("PYTHONPATH", "")
    return [str(PROJECT_ROOT), *[p for p in existing.split(os.pathsep) if p]]


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def _pip(python: Path, args: list[str], say: Callable[[str], None]) -> None:
    proc = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ExportError(
            f"pip could not install the toolchain: {_last_error(proc.stderr)}; "
            "check the package index settings (pip config list) and retry"
        )
    for line in proc.stdout.splitlines():
        if line.startswith("Successfully installed"):
            say(line)


def _check_imports(python: Path, modules: tuple[str, ...]) -> None:
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    proc = subprocess.run(
        [str(python), "-c", code, *modules], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ExportError(
            f"the toolchain installed but does not import: {_last_error(proc.stderr)}"
        )


def _installed(python: Path) -> dict[str, str]:
    """Every distribution the toolenv's python sees, toolenv's own first (they shadow)."""
    code = (
        "import json, importlib.metadata as md\n"
        "seen = {}\n"
        "for d in md.distributions():\n"
        "    n = d.metadata['Name']\n"
        "    if n and n not in seen: seen[n] = d.version\n"
        "print(json.dumps(seen))\n"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    data: dict[str, str] = json.loads(out.stdout)
    return dict(sorted(data.items(), key=lambda kv: kv[0].lower()))


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no error output"


def probe_child(payload: dict[str, Any]) -> dict[str, Any]:
    """Inside a toolenv: which interpreter runs, and the version of each module named in
    ``payload["modules"]`` (an import error fails the call). :meth:`ToolEnv.verify` runs it."""
    import importlib
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    dists = packages_distributions()
    versions: dict[str, str] = {}
    for name in payload.get("modules", []):
        module = importlib.import_module(name)
        found = getattr(module, "__version__", None)
        if found is None:
            for dist in dists.get(name.split(".")[0], []):
                with contextlib.suppress(PackageNotFoundError):
                    found = version(dist)
                    break
        versions[name] = str(found or "unknown")
    return {"prefix": sys.prefix, "python": sys.version.split()[0], "modules": versions}


def _child_main(argv: list[str]) -> int:
    """``python -m exporters.toolenv MODULE:FUNC RESULT_FILE``: read the payload (JSON) from
    stdin, call the function, write its result (JSON) to RESULT_FILE. Errors go to stderr."""
    import importlib

    target, result_file = argv
    module_name, _, func_name = target.partition(":")
    payload = json.loads(sys.stdin.read() or "{}")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(payload)
    atomic_write_text(Path(result_file), json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))


def child_payload(request: ExportRequest, **extra: Any) -> dict[str, Any]:
    """The JSON an exporter's child (run in its toolenv) receives for ``request``."""
    return {
        "checkpoint": str(request.checkpoint),
        "framework": request.framework,
        "task": request.task,
        "imgsz": request.imgsz,
        "out_dir": str(request.out_dir),
        "precision": request.precision,
        "config_dir": request.options.get("config_dir"),
        **extra,
    }


def child_artifact(
    out: dict[str, Any],
    request: ExportRequest,
    env: ToolEnv,
    *,
    format_key: str,
    runtime: str,
    details: dict[str, Any] | None = None,
) -> ExportArtifact:
    """The artifact a toolenv child reported (its tools plus the toolenv's package versions)."""
    return ExportArtifact(
        format_key=format_key,
        runtime=runtime,
        model_file=Path(out["model_file"]),
        class_names=tuple(out["class_names"]),
        architecture=out["architecture"],
        input_name=out["input_name"],
        input_shape=tuple(out.get("input_shape") or (1, 3, request.imgsz, request.imgsz)),
        output_layout=out["output_layout"],
        preprocessing=out["preprocessing"],
        postprocessing=out["postprocessing"],
        precision=request.precision,
        details=out["details"] if details is None else details,
        tools={**out["tools"], **env.versions()},
    )
