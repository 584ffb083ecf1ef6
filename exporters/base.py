"""The exporter interface, capability records, and the one wrapper every export runs through."""

from __future__ import annotations

import importlib.util
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes.errors import OutpostError

log = logging.getLogger("outpost.export")


class ExportError(OutpostError):
    """An export could not be produced."""


@dataclass(frozen=True)
class Capability:
    """What one format can do: which frameworks and tasks, which precisions, where it runs."""

    key: str
    title: str
    frameworks: tuple[str, ...]
    tasks: tuple[str, ...]
    precisions: tuple[str, ...]
    runtime: str
    suffix: str
    needs: tuple[str, ...] = ()  # importable modules the export needs on this machine
    notes: str = ""
    extra: str = "export"  # the pip extra that installs ``needs``


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules in ``names`` that are not installed here (looked up, not imported: importing
    Ultralytics before the offline recipe is applied makes it probe the network)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


@dataclass(frozen=True)
class ExportRequest:
    checkpoint: Path
    framework: str
    task: str
    imgsz: int
    out_dir: Path
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportArtifact:
    """A produced model file and what the package manifest needs to know about it."""

    format_key: str
    runtime: str
    model_file: Path
    class_names: tuple[str, ...]
    architecture: str
    input_name: str
    input_shape: tuple[int, int, int, int]
    output_layout: str
    precision: str
    details: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    # Files the model file needs beside it in the package (OpenVINO's weights ``.bin``).
    extra_files: tuple[Path, ...] = ()
    # Manifest ``model.preprocessing`` / ``model.postprocessing`` fields for the model's task
    # (a classifier's centre crop; the segment, pose and classify post-processing kinds).
    preprocessing: dict[str, Any] = field(default_factory=dict)
    postprocessing: dict[str, Any] = field(default_factory=dict)


class Exporter(ABC):
    capability: Capability

    @abstractmethod
    def export(self, request: ExportRequest) -> ExportArtifact:
        """Produce the model file in ``request.out_dir``."""

    def check(self, request: ExportRequest) -> None:
        self.check_supported(request)
        self.check_checkpoint(request)

    def check_supported(self, request: ExportRequest, pip_extra: str | None = None) -> None:
        """Framework, task, precision and the Python modules this format needs here
        (``pip_extra`` names the extra to install when it is not the capability's own)."""
        cap = self.capability
        if request.framework not in cap.frameworks:
            raise ExportError(
                f"{cap.key} export does not support {request.framework} models (supports {', '.join(cap.frameworks)})"
            )
        if request.task not in cap.tasks:
            raise ExportError(
                f"{cap.key} export does not support the {request.task} task (supports {', '.join(cap.tasks)})"
            )
        if request.precision not in cap.precisions:
            raise ExportError(
                f"{cap.key} export has no {request.precision} precision (choose {', '.join(cap.precisions)})"
            )
        missing = missing_modules(cap.needs)
        if missing:
            raise ExportError(
                f"{cap.key} export needs {', '.join(missing)}, not installed here; "
                f"pip install 'outpost[{pip_extra or cap.extra}]'"
            )

    @staticmethod
    def check_checkpoint(request: ExportRequest) -> None:
        if not request.checkpoint.exists():
            raise ExportError(
                f"checkpoint {request.checkpoint} does not exist; train the run first"
            )


def try_export(exporter: Exporter, request: ExportRequest) -> ExportArtifact:
    """Run one export with the same validation, timing, logging and error handling for every format."""
    exporter.check(request)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    key = exporter.capability.key
    log.info("exporting %s to %s", request.checkpoint, key)
    t0 = time.perf_counter()
    try:
        artifact = exporter.export(request)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a library failure becomes one typed line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"{key} export failed: {first}") from exc
    seconds = time.perf_counter() - t0
    log.info("%s export done in %.1f s: %s", key, seconds, artifact.model_file)
    return ExportArtifact(**{**artifact.__dict__, "seconds": round(seconds, 3)})
