"""Installed models: versions side by side, an atomically switched active one, rollback.

Layout under ``<data-dir>/models/<name>/``::

    <version-or-sha12>/      an extracted, verified package (manifest.json + its files)
    active.json              {"active": {...}, "previous": {...} | null}

A new package is verified, extracted to a staging folder, loaded and warmed up, and only
then becomes active. Until that moment the previous model keeps serving; on any failure
the staging folder is removed and a typed error says why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import shutil
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.errors import (
    AmbiguousModelError,
    InstallError,
    ModelNotFoundError,
    NoModelError,
    RollbackError,
    one_line,
)
from runtimes.backends import BackendRegistry
from runtimes.detections import Detections
from runtimes.errors import OutpostError, PackageError
from runtimes.fileio import atomic_write_text, sha256_bytes, sha256_file
from runtimes.package import Manifest, PackageReader
from runtimes.predictor import Predictor, Timing

log = logging.getLogger(__name__)

MODELS_DIR = "models"
ACTIVE_FILE = "active.json"
INSTALL_RECORD = ".outpost-install.json"
_SAFE_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class InstalledModel:
    """One loaded model version. ``predict_bytes`` lets one call at a time use the predictor."""

    name: str
    version: str
    folder: Path
    manifest: Manifest
    predictor: Predictor
    installed_at: str
    previous_version: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def format(self) -> str:
        return self.manifest.format.key

    @property
    def runtime(self) -> str:
        return self.predictor.backend.key

    @property
    def providers(self) -> list[str]:
        return self.predictor.backend.active_providers

    def describe(self) -> dict[str, Any]:
        spec = self.manifest.model
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "runtime": self.runtime,
            "providers": self.providers,
            "task": spec.task,
            "precision": spec.precision,
            "class_names": list(spec.class_names),
            "input": spec.input.model_dump(mode="json"),
            "installed_at": self.installed_at,
            "previous_version": self.previous_version,
        }

    def predict_bytes(
        self, data: bytes, *, conf: float | None = None, iou: float | None = None
    ) -> tuple[Detections, Timing]:
        with self.lock:
            return self.predictor.predict_bytes(data, conf=conf, iou=iou)


class ModelStore:
    """Installs packages under ``<data_dir>/models`` and keeps the active ones loaded.

    Call :meth:`load` once at start to bring back what was active before a restart.
    Methods are blocking (disk, model loading); the service runs them in an executor.
    """

    def __init__(
        self, data_dir: Path, *, registry: BackendRegistry | None = None, warmup_runs: int = 2
    ) -> None:
        self.root = Path(data_dir) / MODELS_DIR
        self._registry = registry
        self._warmup_runs = warmup_runs
        self._models: dict[str, InstalledModel] = {}
        self._models_lock = threading.Lock()
        # Models whose active version did not load at start: name → reason (for GET /v1/ready).
        # A later install or rollback of that model clears its entry.
        self.not_loaded: dict[str, str] = {}
        self._install_lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------

    def models(self) -> list[InstalledModel]:
        with self._models_lock:
            return [self._models[k] for k in sorted(self._models)]

    def get(self, name: str) -> InstalledModel:
        with self._models_lock:
            model = self._models.get(name)
            names = sorted(self._models)
        if model is None:
            if not names:
                raise NoModelError(
                    "no model is installed; upload a package first (PUT /v1/packages)"
                )
            raise ModelNotFoundError(
                f"model {name!r} is not installed; installed: {', '.join(names)}"
            )
        return model

    def resolve(self, name: str | None) -> InstalledModel:
        """The named model, or the only one installed when ``name`` is None."""
        if name:
            return self.get(name)
        with self._models_lock:
            names = sorted(self._models)
            if len(names) == 1:
                return self._models[names[0]]
        if not names:
            raise NoModelError("no model is installed; upload a package first (PUT /v1/packages)")
        raise AmbiguousModelError(
            f"several models are installed ({', '.join(names)}); name one with ?model=NAME"
        )

    # -- start -----------------------------------------------------------------------

    def load(self) -> list[str]:
        """Load every model's active version (or its previous one if that fails).

        Returns one line per problem met; a model that cannot be loaded is skipped, so
        one broken model never stops the agent from serving the others.
        """
        problems: list[str] = []
        if not self.root.is_dir():
            return problems
        for model_dir in sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            self._remove_leftovers(model_dir)
            try:
                record = self._read_active(model_dir)
            except InstallError as exc:
                problems.append(str(exc))
                self.not_loaded[model_dir.name] = str(exc)
                continue
            if record is None:
                continue
            candidates = [record["active"]] + (
                [record["previous"]] if record.get("previous") else []
            )
            for i, entry in enumerate(candidates):
                try:
                    model = self._open(model_dir.name, model_dir / entry["folder"])
                except OutpostError as exc:
                    problems.append(f"{model_dir.name} {entry.get('version')}: {exc}")
                    continue
                if i == 0 and record.get("previous"):
                    model = replace(model, previous_version=record["previous"].get("version"))
                with self._models_lock:
                    self._models[model.name] = model
                if i > 0:
                    problems.append(
                        f"{model_dir.name}: serving previous version {model.version} instead"
                    )
                    self.not_loaded[model_dir.name] = problems[-2]
                break
            else:
                self.not_loaded[model_dir.name] = problems[-1]
        for line in problems:
            log.warning("%s", line)
        return problems

    # -- changes ---------------------------------------------------------------------

    def install(self, package: bytes | Path) -> InstalledModel:
        """Verify, extract, load and warm up a package, then make it the active version.

        Raises:
            PackageError: the package cannot be read or verified (the reason is in the message).
            InstallError: the package is sound but its model does not load, or the disk refused it.
        """
        with self._install_lock:
            with PackageReader(package) as reader:
                reader.verify()
                package_sha = (
                    sha256_bytes(package)
                    if isinstance(package, bytes)
                    else sha256_file(Path(package))
                )
                manifest = reader.manifest
                model_dir = self.root / manifest.name
                staging = model_dir / f".staging-{secrets.token_hex(6)}"
                try:
                    reader.extract(staging)
                    self._write_install_record(staging, package_sha)
                    model = self._open(manifest.name, staging)
                    activated = self._activate(model_dir, staging, model, package_sha)
                    self.not_loaded.pop(manifest.name, None)
                    return activated
                except OutpostError:
                    raise
                except OSError as exc:
                    raise InstallError(
                        f"cannot install {manifest.name} {manifest.version}: {one_line(exc)}; check free disk space"
                    ) from None
                finally:
                    shutil.rmtree(staging, ignore_errors=True)

    def rollback(self, name: str) -> InstalledModel:
        """Make the previous version of ``name`` active again (the current one becomes previous)."""
        with self._install_lock:
            current = self.get(name)
            model_dir = self.root / name
            record = self._read_active(model_dir)
            previous = record.get("previous") if record else None
            if record is None or not previous or not (model_dir / previous["folder"]).is_dir():
                raise RollbackError(f"model {name} has no previous version to roll back to")
            model = self._open(name, model_dir / previous["folder"])
            try:
                self._write_active(model_dir, previous, record["active"])
            except OSError as exc:
                raise InstallError(
                    f"cannot roll {name} back: {one_line(exc)}; check the data folder"
                ) from None
            model = replace(model, previous_version=current.version)
            with self._models_lock:
                self._models[name] = model
            self.not_loaded.pop(name, None)
            log.info("rolled %s back from %s to %s", name, current.version, model.version)
            return model

    # -- helpers ---------------------------------------------------------------------

    def _open(self, name: str, folder: Path) -> InstalledModel:
        """Load and smoke-test a predictor: warm-up runs, then one full predict on a blank image."""
        try:
            predictor = Predictor(folder, registry=self._registry)
            predictor.warmup(self._warmup_runs)
            h, w = predictor.input_hw
            predictor.predict(np.full((h, w, 3), 114, np.uint8))
        except OutpostError:
            raise
        except Exception as exc:  # runtimes raise their own exception types (ORT, OpenVINO...)
            raise InstallError(
                f"model {name} in {folder.name} does not load or run: {one_line(exc)}; re-export the package"
            ) from None
        manifest = predictor.manifest
        if manifest.name != name:
            raise PackageError(f"{folder} holds model {manifest.name}, expected {name}")
        installed_at = (
            _read_json(folder / INSTALL_RECORD, strict=False).get("installed_at") or _now()
        )
        return InstalledModel(
            manifest.name, manifest.version, folder, manifest, predictor, installed_at
        )

    def _activate(
        self, model_dir: Path, staging: Path, model: InstalledModel, package_sha: str
    ) -> InstalledModel:
        try:
            record = self._read_active(model_dir)
        except InstallError:  # a corrupt record must not block the install that repairs it
            record = None
        folder_name = _pick_folder(model_dir, model.version, package_sha)
        final = model_dir / folder_name
        trash = model_dir / f".trash-{secrets.token_hex(6)}"
        old = record["active"] if record else None
        previous = old if old and old["folder"] != folder_name else (record or {}).get("previous")
        try:
            if final.exists():  # the very same package again: replace the copy on disk
                final.rename(trash)
            staging.rename(final)
            self._write_active(
                model_dir, {"folder": folder_name, "version": model.version}, previous
            )
        except OSError:
            with contextlib.suppress(OSError):  # put things back as they were
                if not staging.exists() and final.exists():
                    final.rename(staging)  # the caller removes it
                if trash.exists():
                    trash.rename(final)
            raise
        shutil.rmtree(trash, ignore_errors=True)
        model.predictor.folder = final
        model = replace(
            model, folder=final, previous_version=previous["version"] if previous else None
        )
        with self._models_lock:
            self._models[model.name] = model
        self._prune(model_dir, {folder_name, previous["folder"] if previous else ""})
        log.info(
            "installed %s %s (%s on %s)", model.name, model.version, model.format, model.runtime
        )
        return model

    def _read_active(self, model_dir: Path) -> dict[str, Any] | None:
        path = model_dir / ACTIVE_FILE
        if not path.exists():
            return None
        data = _read_json(path)
        if not _is_entry(data.get("active")):
            raise InstallError(f"{path} is corrupt; reinstall the model {model_dir.name}")
        if not _is_entry(data.get("previous")):
            data["previous"] = None
        return data

    def _write_active(
        self, model_dir: Path, active: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        record = {"active": active, "previous": previous, "updated_at": _now()}
        atomic_write_text(
            model_dir / ACTIVE_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n"
        )

    @staticmethod
    def _write_install_record(folder: Path, package_sha: str) -> None:
        record = {"package_sha256": package_sha, "installed_at": _now()}
        atomic_write_text(folder / INSTALL_RECORD, json.dumps(record, indent=2) + "\n")

    @staticmethod
    def _remove_leftovers(model_dir: Path) -> None:
        """Remove what an interrupted install left behind (staging, trash and temp files)."""
        for child in model_dir.iterdir():
            if child.name.startswith("."):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        child.unlink()

    @staticmethod
    def _prune(model_dir: Path, keep: set[str]) -> None:
        """Delete versions other than the active and the previous one (best effort)."""
        for child in model_dir.iterdir():
            if child.is_dir() and not child.name.startswith(".") and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)


def _is_entry(entry: object) -> bool:
    """A version entry of active.json: a plain folder name inside the model folder."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("folder"), str)
        and bool(_SAFE_FOLDER.match(entry["folder"]))
        and entry["folder"] != ACTIVE_FILE
    )


def _read_json(path: Path, *, strict: bool = True) -> dict[str, Any]:
    """A JSON object from ``path`` ({} when absent); corrupt files raise unless ``strict`` is off."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        if not strict:
            return {}
        raise InstallError(f"{path} is unreadable or corrupt; reinstall the model") from None
    return data if isinstance(data, dict) else {}


def _pick_folder(model_dir: Path, version: str, package_sha: str) -> str:
    """``<version>`` when it is a safe, free folder name; else one made unique by the package digest.

    A folder already holding the very same package (same digest) is reused.
    """
    sha12 = package_sha[:12]
    base = version if _SAFE_FOLDER.match(version) and version != ACTIVE_FILE else sha12
    candidates = [base] if base == sha12 else [base, f"{base}-{sha12}"]
    for candidate in candidates:
        existing = model_dir / candidate
        if (
            not existing.exists()
            or _read_json(existing / INSTALL_RECORD, strict=False).get("package_sha256")
            == package_sha
        ):
            return candidate
    return f"{sha12}-{secrets.token_hex(4)}"
