"""Trainer plugins: built-ins registered explicitly, third parties by entry point.

Importing this module is cheap: a plugin names its child-process module, its schema and how
to list its architectures, and keeps its heavy dependencies to that child.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from trainers.protocol import SpecError
from trainers.schema import ConfigSchema

ENTRY_POINT_GROUP = "outpost.trainers"


@dataclass(frozen=True)
class TrainerPlugin:
    key: str
    title: str
    tasks: tuple[str, ...]  # tasks trained end to end
    module: str  # run as ``python -m <module> train --spec F``
    schema: Callable[[], ConfigSchema]
    architectures: Callable[[], dict[str, str]]  # name → task

    def check_model(self, model: str, task: str) -> None:
        """Refuse an unknown architecture or one of another task, before anything starts."""
        path = Path(model).expanduser()
        if path.suffix in (".pt", ".yaml", ".yml") and path.exists():
            return
        archs = self.architectures()
        if model not in archs:
            close = sorted(a for a in archs if a.startswith(model.split(".")[0][:6]))[:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SpecError(
                f"unknown model {model!r} for {self.key}{hint}; list them with: outpost models list"
            )
        if archs[model] != task:
            raise SpecError(
                f"model {model!r} is a {archs[model]} model but the dataset is {task}; "
                f"pick a {task} model (outpost models list --framework {self.key} --task {task})"
            )


def _ultralytics_schema() -> ConfigSchema:
    from trainers.ultralytics.schema import SCHEMA

    return SCHEMA


def _ultralytics_architectures() -> dict[str, str]:
    from trainers.ultralytics.models import architectures

    return architectures()


ULTRALYTICS = TrainerPlugin(
    key="ultralytics",
    title="Ultralytics YOLO",
    tasks=("detect", "segment", "classify", "pose"),
    module="trainers.ultralytics",
    schema=_ultralytics_schema,
    architectures=_ultralytics_architectures,
)


def _timm_schema() -> ConfigSchema:
    from trainers.timm.schema import SCHEMA

    return SCHEMA


def _timm_architectures() -> dict[str, str]:
    from trainers.timm.models import architectures

    return architectures()


TIMM = TrainerPlugin(
    key="timm",
    title="timm image classification",
    tasks=("classify",),
    module="trainers.timm",
    schema=_timm_schema,
    architectures=_timm_architectures,
)


class TrainerRegistry:
    def __init__(self) -> None:
        self._plugins: dict[str, TrainerPlugin] = {}

    def register(self, plugin: TrainerPlugin) -> None:
        if plugin.key in self._plugins:
            raise ValueError(f"trainer {plugin.key!r} is already registered")
        self._plugins[plugin.key] = plugin

    def get(self, key: str) -> TrainerPlugin:
        try:
            return self._plugins[key]
        except KeyError:
            raise SpecError(
                f"unknown framework {key!r}; choose one of {', '.join(self._plugins)}"
            ) from None

    def plugins(self) -> list[TrainerPlugin]:
        return list(self._plugins.values())


def default_registry() -> TrainerRegistry:
    registry = TrainerRegistry()
    registry.register(ULTRALYTICS)
    registry.register(TIMM)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        registry.register(ep.load())
    return registry
