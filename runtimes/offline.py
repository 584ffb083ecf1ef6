"""The offline recipe: environment that keeps ML libraries from reaching for the network.

Applied before Ultralytics, MLflow or OpenVINO are imported, in every process that may
import them (trainer children, exporters, benchmarks).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "YOLO_VERBOSE": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "OPENVINO_TELEMETRY": "0",
}


def _find_ttf() -> Path | None:
    try:
        import matplotlib

        candidate = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    for candidate in (
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        Path("/System/Library/Fonts/Supplemental/Arial.ttf"),
        Path("C:/Windows/Fonts/arial.ttf"),
    ):
        if candidate.exists():
            return candidate
    return None


def apply_offline_env(config_dir: Path) -> None:
    """Set the offline variables and give Ultralytics a local font in ``config_dir``.

    Without ``Arial.ttf`` in its config folder Ultralytics downloads one on every dataset
    check, even with plots off.
    """
    config_dir = Path(config_dir)
    os.environ.update(OFFLINE_ENV)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    font_dir = config_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = font_dir / name
        if not target.exists():
            ttf = _find_ttf()
            if ttf is not None:
                shutil.copyfile(ttf, target)


def quiet_ultralytics_settings() -> None:
    """Switch off every Ultralytics integration that could talk to a service by itself."""
    from ultralytics.utils import SETTINGS

    wanted = {
        "sync": False,
        "hub": False,
        "mlflow": False,
        "clearml": False,
        "comet": False,
        "dvc": False,
        "neptune": False,
        "raytune": False,
        "tensorboard": False,
        "wandb": False,
    }
    changes = {k: v for k, v in wanted.items() if k in SETTINGS and SETTINGS[k] != v}
    if changes:
        SETTINGS.update(changes)  # type: ignore[no-untyped-call]
