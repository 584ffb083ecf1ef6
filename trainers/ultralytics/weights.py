"""Checking a user's weights file before anything unpickles it without restrictions.

A ``.pt`` from Ultralytics pickles the model object, so loading it runs whatever the pickle
names. :func:`check_weights` loads it only with ``torch.load(weights_only=True)`` and an
allow-list of the classes a genuine checkpoint is made of (Ultralytics' model and layer
classes, ``torch.nn`` layers, the classification transforms, a few plain data types),
computed from those modules rather than typed by hand. Anything else is refused by name
before a single object is built.
"""

from __future__ import annotations

import enum
import importlib
import pathlib
import pickle
import pkgutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from runtimes.errors import OutpostError

# Packages whose nn.Module classes a checkpoint may name (every submodule is walked).
_MODULE_PACKAGES = ("torch.nn.modules", "ultralytics.nn.modules")
# Modules whose nn.Module classes a checkpoint may name (the model classes themselves).
_MODEL_MODULES = ("ultralytics.nn.tasks",)


class WeightsError(OutpostError):
    """A weights file is unreadable or holds something other than model classes."""


def _safe_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as Ultralytics checkpoints pickle it (``Detect.forward``), nothing more."""
    import torch.nn as nn

    if (
        isinstance(obj, type)
        and not name.startswith("__")
        and issubclass(obj, (nn.Module, enum.Enum))
    ):
        return getattr(obj, name)
    if isinstance(obj, nn.Module) and name in {"forward", "forward_fuse"}:
        return getattr(type(obj), name).__get__(obj)
    raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not allowed")


def _classes_of(module_name: str, base: type) -> dict[str, Any]:
    module = importlib.import_module(module_name)
    found: dict[str, Any] = {}
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, base) and value.__module__ == module_name:
            found[f"{module_name}.{value.__qualname__}"] = value
    return found


@lru_cache(maxsize=1)
def allowed_globals() -> dict[str, Any]:
    """Pickled name (``module.Class``) → the object a genuine checkpoint may reconstruct."""
    import numpy as np
    import torch.nn as nn
    from torchvision.transforms.functional import InterpolationMode
    from ultralytics.utils import IterableSimpleNamespace

    allowed: dict[str, Any] = {}
    for package_name in _MODULE_PACKAGES:
        package = importlib.import_module(package_name)
        names = [package_name] + [
            f"{package_name}.{info.name}" for info in pkgutil.iter_modules(package.__path__)
        ]
        for name in names:
            try:
                allowed.update(_classes_of(name, nn.Module))
            except ImportError:  # an optional layer module whose dependency is missing
                continue
    for name in _MODEL_MODULES:
        allowed.update(_classes_of(name, nn.Module))
    allowed.update(_classes_of("torchvision.transforms.transforms", object))
    allowed = {k: v for k, v in allowed.items() if isinstance(v, type)}
    for obj in (InterpolationMode, IterableSimpleNamespace, np.dtype):
        allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    for dtype in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        allowed[f"{type(np.dtype(dtype)).__module__}.{type(np.dtype(dtype)).__qualname__}"] = type(
            np.dtype(dtype)
        )
    scalar = np.float64(0).__reduce__()[0]
    for name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        allowed[name] = scalar
    for module in ("pathlib", "pathlib._local"):
        for cls in ("PosixPath", "WindowsPath"):
            allowed[f"{module}.{cls}"] = pathlib.Path().__class__
    allowed["builtins.getattr"] = _safe_getattr
    return allowed


def _refuse(path: Path, name: str) -> WeightsError:
    return WeightsError(
        f"{path} contains code outside the model classes Outpost allows ({name}); "
        "use weights exported by Ultralytics or Outpost"
    )


def _unreadable(path: Path, exc: BaseException) -> WeightsError:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return WeightsError(f"{path} is not a readable PyTorch checkpoint ({detail})")


def load_checkpoint_safely(path: Path) -> Any:
    """Load a ``.pt`` with ``weights_only=True`` and the allow-list; return what it holds.

    Raises:
        WeightsError: the file is missing, not a PyTorch checkpoint, or names a global
            outside the allow-list (nothing from the file has run then).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist; pick an existing weights file")
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise _unreadable(path, exc) from None
    allowed = allowed_globals()
    for name in needed:
        if name not in allowed:
            raise _refuse(path, name)
    entries: list[Any] = [(allowed[name], name) for name in needed]
    try:
        with torch.serialization.safe_globals(entries):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refuse(path, _global_named(str(exc))) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise _unreadable(path, exc) from None


def _global_named(message: str) -> str:
    """The ``module.name`` torch's refusal message names, else a short form of the message."""
    import re

    match = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"global ([\w.]+)", message)
    if match:
        return match.group(1)
    lines = message.strip().splitlines()
    return lines[0][:120] if lines else "unknown"


def check_weights(path: Path, task: str | None = None) -> dict[str, Any]:
    """Check an Ultralytics weights file: safe to load, holds a model, and of ``task`` if given.

    Returns:
        The loaded checkpoint dict.

    Raises:
        WeightsError: unreadable, unsafe, no model inside, or a model of another task.
    """
    import torch.nn as nn

    ckpt = load_checkpoint_safely(path)
    if isinstance(ckpt, nn.Module):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict):
        raise WeightsError(
            f"{path} holds no Ultralytics model; use weights saved by Ultralytics or Outpost"
        )
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, nn.Module):
        raise WeightsError(
            f"{path} holds no Ultralytics model; use weights saved by Ultralytics or Outpost"
        )
    if task is not None:
        found = _task_of(model)
        if found is not None and found != task:
            raise WeightsError(
                f"{path} is a {found} model but the dataset is {task}; pick {task} weights"
            )
    return ckpt


def _task_of(model: Any) -> str | None:
    from ultralytics.nn.tasks import (
        ClassificationModel,
        DetectionModel,
        PoseModel,
        SegmentationModel,
    )

    for cls, task in (
        (PoseModel, "pose"),
        (SegmentationModel, "segment"),
        (ClassificationModel, "classify"),
    ):
        if isinstance(model, cls):
            return task
    if isinstance(model, DetectionModel):
        return getattr(model, "task", None) if type(model) is not DetectionModel else "detect"
    return None
