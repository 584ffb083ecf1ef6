"""What the timm exporters share: the run's checkpoint loaded safely as an eval module, the
input it expects, and the manifest fields that reproduce its preprocessing exactly.

A timm run (``trainers/timm``) saves ``weights/best.pt`` as plain data and tensors:
``{"arch", "num_classes", "class_names", "imgsz", "mean", "std", "state_dict", ...}``. It is
read with ``torch.load(weights_only=True)`` only; the model is rebuilt from its architecture
name with ``timm.create_model(arch, pretrained=False)`` and the state dict is loaded strictly,
so nothing in the file is executed and nothing is downloaded.

The run trained on images letterboxed to a square of ``imgsz`` (Pillow's bilinear resize,
centred on a 114-grey canvas), scaled to 0..1 and normalised with the architecture's
``mean``/``std``. The exported graph ends in a softmax, so every format returns class
probabilities (``class_probs``), as an Ultralytics classifier does.

Other exporters (CoreML in its own environment, for one) reuse :func:`load_timm_checkpoint`
and :func:`reference_input`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.base import Capability, ExportError

REQUIRED_KEYS = ("arch", "num_classes", "class_names", "imgsz", "state_dict")
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
INPUT_NAME = "images"
OUTPUT_NAME = "probs"
PAD_VALUE = 114
# The tasks each framework's models have; a capability's frameworks × tasks is read
# through this (timm trains classifiers only).
FRAMEWORK_TASKS: dict[str, tuple[str, ...]] = {"timm": ("classify",)}


def capability_matrix(cap: Capability) -> list[dict[str, str]]:
    """The ``framework × task`` pairs a capability really supports (timm: classify only)."""
    return [
        {"framework": fw, "task": task, "format": cap.key}
        for fw in cap.frameworks
        for task in cap.tasks
        if task in FRAMEWORK_TASKS.get(fw, cap.tasks)
    ]


def check_timm_task(framework: str, task: str, key: str) -> None:
    """Refuse a timm export of another task than classify, before anything is written."""
    tasks = FRAMEWORK_TASKS.get(framework)
    if tasks is not None and task not in tasks:
        raise ExportError(
            f"{key} export of {framework} models supports {', '.join(tasks)} only, "
            f"not {task}; export an Ultralytics run for {task}"
        )


@dataclass(frozen=True)
class TimmModel:
    """A timm run's model ready to export: an eval module returning class probabilities."""

    module: Any  # torch.nn.Module: images (1, 3, H, W) normalised → probabilities (1, C)
    arch: str
    class_names: tuple[str, ...]
    imgsz: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tools: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.imgsz, self.imgsz)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Manifest ``model.preprocessing`` fields that reproduce the training transform."""
        return {
            "resize": "letterbox",
            "pad_value": PAD_VALUE,
            "scale": 1 / 255.0,
            "color": "RGB",
            "interpolation": "pil_bilinear",
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @property
    def postprocessing(self) -> dict[str, Any]:
        return {"kind": "classify", "nms_included": False, "output_layout": "class_probs"}

    def example(self) -> Any:
        """A zero input tensor of the model's shape (for tracing)."""
        import torch

        return torch.zeros(self.input_shape, dtype=torch.float32)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist; train the run first")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "pickled code"
        raise ExportError(
            f"checkpoint {path} holds code, not only tensors ({first}); "
            "export a checkpoint the timm trainer wrote"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({first}); retrain the run"
        ) from None
    if not isinstance(obj, dict):
        raise ExportError(f"checkpoint {path} is not an Outpost timm checkpoint; retrain the run")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ExportError(
            f"checkpoint {path} is not an Outpost timm checkpoint (no {missing[0]!r}); "
            "export the run's weights/best.pt"
        )
    return obj


class _WithSoftmax:
    """Builds ``softmax(model(x))`` as a torch module (made lazily: torch imports here)."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class Probabilities(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.softmax(self.inner(x), dim=1)

        return Probabilities(model).eval()


def load_timm_checkpoint(path: Path) -> TimmModel:
    """Rebuild a timm run's model from ``path`` (``weights_only=True``), in eval mode.

    Raises:
        ExportError: a missing, unreadable or code-carrying file, a file that is not a timm
            checkpoint, an unknown architecture, or tensors that do not fit it.
    """
    path = Path(path)
    ckpt = _read_checkpoint(path)
    try:
        import timm
        import torch
    except ImportError as exc:
        raise ExportError(f"timm export needs {exc.name}; pip install 'outpost[train]'") from None
    arch = str(ckpt["arch"])
    names = tuple(str(n) for n in ckpt["class_names"])
    if len(names) != int(ckpt["num_classes"]):
        raise ExportError(
            f"checkpoint {path} lists {len(names)} class names for {ckpt['num_classes']} "
            "classes; retrain the run"
        )
    if arch not in timm.list_models():
        raise ExportError(
            f"checkpoint {path} names architecture {arch!r}, unknown to timm {timm.__version__}; "
            "install the timm version the run trained with"
        )
    model = timm.create_model(arch, pretrained=False, num_classes=len(names))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise ExportError(
            f"checkpoint {path} does not fit {arch} ({first}); export the run's own weights"
        ) from None
    model.eval()
    mean = tuple(float(v) for v in ckpt.get("mean") or DEFAULT_MEAN)
    std = tuple(float(v) for v in ckpt.get("std") or DEFAULT_STD)
    return TimmModel(
        module=_WithSoftmax.wrap(model),
        arch=arch,
        class_names=names,
        imgsz=int(ckpt["imgsz"]),
        mean=mean,
        std=std,
        tools={"timm": str(timm.__version__), "torch": torch.__version__.split("+")[0]},
    )


def reference_input(image: Path, model: TimmModel) -> np.ndarray:
    """The ``(1, 3, H, W)`` float32 input the run's own validation gave ``image``: Pillow's
    decode and bilinear resize, letterboxed on 114 grey, scaled to 0..1, then normalised (the
    trainer's ``FolderDataset`` without its random flip)."""
    from PIL import Image

    size = model.imgsz
    with Image.open(image) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    canvas.paste(rgb, ((size - nw) // 2, (size - nh) // 2))
    scaled = np.asarray(canvas, dtype=np.float32) / 255.0
    normed = (scaled - np.asarray(model.mean, np.float32)) / np.asarray(model.std, np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1)[None], dtype=np.float32)


def reference_probabilities(model: TimmModel, tensor: np.ndarray) -> np.ndarray:
    """The PyTorch model's class probabilities ``(C,)`` for one input tensor."""
    import torch

    with torch.inference_mode():
        out = model.module(torch.from_numpy(np.ascontiguousarray(tensor, dtype=np.float32)))
    return np.asarray(out.float().numpy().reshape(-1), np.float32)


def timm_artifact_fields(model: TimmModel) -> dict[str, Any]:
    """The :class:`~exporters.base.ExportArtifact` fields every timm format shares."""
    return {
        "class_names": model.class_names,
        "architecture": model.arch,
        "input_name": INPUT_NAME,
        "input_shape": model.input_shape,
        "output_layout": "class_probs",
        "preprocessing": model.preprocessing,
        "postprocessing": model.postprocessing,
    }


def export_timm_onnx(model: TimmModel, target: Path, opset: int | None = None) -> int:
    """Write ``model`` as a static-shape ONNX file at ``target``; returns the opset used."""
    import torch

    opset = int(opset or 17)
    kwargs: dict[str, Any] = {}
    try:
        import inspect

        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            kwargs["dynamo"] = False  # the TorchScript-based exporter: no onnxscript needed
    except (TypeError, ValueError):
        pass
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        # torch >= 2.9 marks the TorchScript-based exporter as legacy; it needs no onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            model.module,
            (model.example(),),
            str(target),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            do_constant_folding=True,
            **kwargs,
        )
    return opset
