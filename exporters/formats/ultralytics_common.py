"""What the Ultralytics-based exporters share: an isolated export call and the model's facts.

Ultralytics writes an export next to its checkpoint. The checkpoint is copied into the
export's own build folder first, so a failed export never leaves files beside the run's
weights, and the build folder is all there is to clean up.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.base import ExportError, ExportRequest
from runtimes.offline import apply_offline_env, quiet_ultralytics_settings


@contextlib.contextmanager
def quiet_ultralytics() -> Iterator[None]:
    """Ultralytics logs banners and usage hints at INFO; an export reports through our log only."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


@dataclass(frozen=True)
class UltralyticsExport:
    """The file or folder Ultralytics produced, and what the manifest needs from the model."""

    produced: Path
    class_names: tuple[str, ...]
    architecture: str
    end2end: bool
    tools: dict[str, str]
    task: str = "detect"
    kpt_shape: tuple[int, int] | None = None  # pose: (keypoints, 2|3)
    mask_channels: int | None = None  # segment: prototype channels

    @property
    def output_layout(self) -> str:
        if self.task == "classify":
            return "class_probs"
        return "xyxy_score_class" if self.end2end else "xywh_classes"

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Manifest preprocessing fields beyond the letterbox defaults."""
        return {"resize": "center_crop"} if self.task == "classify" else {}

    @property
    def postprocessing(self) -> dict[str, Any]:
        """Manifest postprocessing fields for the model's task."""
        if self.task == "classify":
            return {"kind": "classify", "nms_included": False}
        if self.task == "segment":
            return {
                "kind": "yolo_segment",
                "mask": {"output": 1, "channels": self.mask_channels or 32},
            }
        if self.task == "pose":
            return {"kind": "yolo_pose", "kpt_shape": list(self.kpt_shape or (17, 3))}
        return {"kind": "yolo_detect"}


def export_with_ultralytics(
    request: ExportRequest, fmt: str, title: str, **kwargs: Any
) -> UltralyticsExport:
    """Run ``YOLO.export(format=fmt, **kwargs)`` on a copy of the checkpoint in the build folder."""
    config_dir = request.options.get("config_dir")
    if config_dir:
        apply_offline_env(Path(config_dir))
    try:
        import torch
        import ultralytics
        from ultralytics import YOLO  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ExportError(
            f"{title} export needs {exc.name}; pip install 'outpost[export]'"
        ) from None
    quiet_ultralytics_settings()
    source_dir = request.out_dir / "source"
    source_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = source_dir / "model.pt"
    shutil.copyfile(request.checkpoint, checkpoint)
    with quiet_ultralytics():
        model: Any = YOLO(str(checkpoint), task=request.task)
        produced = Path(
            model.export(format=fmt, imgsz=request.imgsz, device="cpu", verbose=False, **kwargs)
        )
    names = dict(model.names)
    yaml_file = getattr(model.model, "yaml", {}).get("yaml_file", "")
    head = model.model.model[-1] if hasattr(model.model, "model") else None
    task = str(getattr(model, "task", request.task) or request.task)
    if task != request.task:
        raise ExportError(
            f"the checkpoint is a {task} model, not {request.task}; export it as a {task} run"
        )
    kpt_shape = getattr(head, "kpt_shape", None) if task == "pose" else None
    return UltralyticsExport(
        produced=produced,
        class_names=tuple(str(names[i]) for i in sorted(names)),
        architecture=Path(str(yaml_file)).stem or Path(request.checkpoint).stem,
        end2end=bool(getattr(head, "end2end", False)),
        tools={"ultralytics": ultralytics.__version__, "torch": torch.__version__.split("+")[0]},
        task=task,
        kpt_shape=(int(kpt_shape[0]), int(kpt_shape[1])) if kpt_shape else None,
        mask_channels=int(getattr(head, "nm", 32)) if task == "segment" else None,
    )


def remove_source(request: ExportRequest) -> None:
    shutil.rmtree(request.out_dir / "source", ignore_errors=True)
