"""The architectures the installed Ultralytics ships, found from its model YAMLs (no import)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

FAMILIES = ("v8", "11", "26")  # yolov8, yolo11, yolo26
SCALES = ("n", "s", "m", "l", "x")
TASK_SUFFIX = {"": "detect", "-seg": "segment", "-cls": "classify", "-pose": "pose", "-obb": "obb"}
_BASE = re.compile(r"^(yolov8|yolo11|yolo26)(-seg|-cls|-pose|-obb)?\.yaml$")


def models_dir() -> Path | None:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "cfg" / "models"


def architectures() -> dict[str, str]:
    """Model YAML name (``yolo11n.yaml``) → task, for every scale of every family installed."""
    root = models_dir()
    found: dict[str, str] = {}
    if root is None:
        return found
    for family in FAMILIES:
        for yaml_file in sorted((root / family).glob("*.yaml")):
            match = _BASE.match(yaml_file.name)
            if not match:
                continue
            stem, suffix = match.group(1), match.group(2) or ""
            for scale in SCALES:
                found[f"{stem}{scale}{suffix}.yaml"] = TASK_SUFFIX[suffix]
    return found
