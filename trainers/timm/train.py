"""Image classification with any timm architecture, in a plain torch training loop.

Data: ``spec.data`` is a folder with ``train/<class>/*`` and ``val/<class>/*`` (the layout
Outpost writes for a classify dataset). Class order: the ``names`` of a ``data.yaml`` in
that folder when there is one, else the sorted class folder names.

Checkpoints (``weights/last.pt`` every epoch, ``weights/best.pt`` at the best top-1) hold
plain data and tensors only, so ``torch.load(weights_only=True)`` reads them:
``{"arch", "num_classes", "class_names", "imgsz", "mean", "std", "state_dict", "epoch",
"optimizer", "best_top1", "options"}``.

Test hook: ``OUTPOST_TEST_STOP_AFTER_EPOCH=N`` makes the run fail right after epoch N is
reported and ``last.pt`` written, as an interrupted run would (used by the resume tests).
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimes.errors import OutpostError
from runtimes.fileio import atomic_write_bytes, atomic_write_text
from runtimes.offline import apply_offline_env
from trainers.protocol import EventWriter, JobSpec, SpecError
from trainers.tracking import MlflowTracker

STOP_AFTER_EPOCH_ENV = "OUTPOST_TEST_STOP_AFTER_EPOCH"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
CHECKPOINT_KEYS = (
    "arch",
    "num_classes",
    "class_names",
    "imgsz",
    "mean",
    "std",
    "state_dict",
    "epoch",
    "optimizer",
)
# Spec fields that an option of the same name in ``spec.extra`` replaces.
_SPEC_OPTIONS = ("epochs", "imgsz", "batch", "seed", "patience", "workers")


class TimmDataError(OutpostError):
    """The classification folder is missing a split, a class or images."""


class StoppedForTest(RuntimeError):
    """Raised by the test hook after the epoch it names."""


@dataclass(frozen=True)
class Split:
    """One split: image paths and their class ids."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _yaml_doc(root: Path) -> dict[str, Any]:
    import yaml

    path = root / "data.yaml"
    if not path.is_file():
        return {}
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc if isinstance(doc, dict) else {}


def class_names_of(root: Path) -> list[str]:
    """``data.yaml`` names when present, else the sorted class folders of ``train/``."""
    names = _yaml_doc(root).get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    train = root / "train"
    return sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_splits(root: Path) -> tuple[list[str], Split, Split]:
    """The class names and the train and val splits of a class-folder dataset.

    Raises:
        TimmDataError: no ``train/`` folder, a class folder not among the names, or no images.
    """
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise TimmDataError(
            f"{root} has no train/ folder; give the folder holding train/<class>/ and val/<class>/"
        )
    names = class_names_of(root)
    if not names:
        raise TimmDataError(f"{train_dir} has no class folders; add one folder per class")
    doc = _yaml_doc(root)
    val_name = str(doc.get("val") or ("val" if (root / "val").is_dir() else "train"))
    index = {n: i for i, n in enumerate(names)}
    splits: list[Split] = []
    for folder in (train_dir, root / val_name):
        files: list[Path] = []
        labels: list[int] = []
        if not folder.is_dir():
            raise TimmDataError(
                f"{folder} does not exist; add a val/ split or drop 'val' from data.yaml"
            )
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name not in index:
                raise TimmDataError(
                    f"{class_dir} is not among the class names {names}; add the name to data.yaml or remove the folder"
                )
            for image in _images(class_dir):
                files.append(image)
                labels.append(index[class_dir.name])
        if not files:
            raise TimmDataError(f"{folder} holds no images; add images under {folder}/<class>/")
        splits.append(Split(tuple(files), tuple(labels)))
    return names, splits[0], splits[1]


class FolderDataset:
    """Images letterboxed to ``imgsz``, flipped at random for training, normalised."""

    def __init__(
        self,
        split: Split,
        imgsz: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        fliplr: float,
    ) -> None:
        self.split = split
        self.imgsz = imgsz
        self.mean = mean
        self.std = std
        self.fliplr = fliplr

    def __len__(self) -> int:
        return len(self.split.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.split.files[i]) as img:
            array = letterbox_rgb(img, self.imgsz)
        if self.fliplr > 0 and random.random() < self.fliplr:
            array = array[:, ::-1, :]
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor, self.split.labels[i]


def letterbox_rgb(img: Any, imgsz: int) -> Any:
    """A PIL image as a ``(imgsz, imgsz, 3)`` float32 RGB array in 0..1: the longer side
    scaled to ``imgsz`` (bilinear), centred on grey (114) padding. Training, validation and
    :mod:`trainers.timm.predict` all prepare images with it."""
    import numpy as np
    from PIL import Image

    rgb = img.convert("RGB")
    w, h = rgb.size
    scale = imgsz / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (imgsz, imgsz), (114, 114, 114))
    canvas.paste(rgb, ((imgsz - nw) // 2, (imgsz - nh) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def lr_at(epoch: float, options: dict[str, Any], epochs: int) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, then cosine or step decay."""
    lr0 = float(options["lr0"])
    warmup = float(options["warmup_epochs"])
    if warmup > 0 and epoch < warmup:
        return lr0 * (epoch + 1e-3) / warmup
    if options["scheduler"] == "step":
        return lr0 * float(options["gamma"]) ** int(epoch // int(options["step_size"]))
    span = max(epochs - warmup, 1e-9)
    progress = min(max((epoch - warmup) / span, 0.0), 1.0)
    lrf = float(options["lrf"])
    return lr0 * (lrf + (1 - lrf) * 0.5 * (1 + math.cos(math.pi * progress)))


def choose_device(requested: str) -> str:
    """``auto`` → ``cuda:0`` when a GPU is present, else ``cpu``; ``0`` → ``cuda:0``."""
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.isdigit():
        return f"cuda:{requested}"
    return requested


def resolve_options(spec: JobSpec) -> dict[str, Any]:
    """Schema defaults, then the spec's own fields, then ``spec.extra`` — all validated."""
    from trainers.timm.schema import SCHEMA

    options = SCHEMA.defaults()
    for name in _SPEC_OPTIONS:
        value = getattr(spec, name)
        if value is not None:
            options[name] = value
    for name, value in spec.extra.items():
        options[name] = SCHEMA.field(name).coerce(value)
    return options


def load_weights_file(path: Path) -> dict[str, Any]:
    """A timm state dict or Outpost checkpoint, read with ``weights_only=True`` only.

    Raises:
        OutpostError: unreadable, or holding more than tensors and plain data.
    """
    import pickle

    import torch

    from trainers.ultralytics.weights import WeightsError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist; pick an existing weights file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path} contains code outside the plain tensors Outpost allows "
            f"({str(exc).strip().splitlines()[0][:160]}); use a state dict or an Outpost checkpoint"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint ({str(exc).strip().splitlines()[0][:160]})"
        ) from None
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{path} holds no state dict; save model.state_dict() or use an Outpost checkpoint"
        )
    return obj


def _load_matching(model: Any, state: dict[str, Any]) -> int:
    """Load every tensor whose name and shape match (a new head keeps its fresh weights)."""
    own = model.state_dict()
    usable = {
        k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape
    }
    model.load_state_dict(usable, strict=False)
    return len(usable)


def _save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _evaluate(
    model: Any, loader: Any, device: str, num_classes: int, criterion: Any
) -> tuple[float, float, float, list[list[int]]]:
    import torch

    model.eval()
    k = min(5, num_classes)
    loss_sum, n, top1, topk = 0.0, 0, 0, 0
    matrix = [[0] * num_classes for _ in range(num_classes)]  # rows predicted, columns true
    with torch.inference_mode():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images).float()
            loss_sum += float(criterion(logits, labels)) * len(labels)
            n += len(labels)
            best = logits.topk(k, dim=1).indices
            top1 += int((best[:, 0] == labels).sum())
            topk += int((best == labels[:, None]).any(dim=1).sum())
            for p, t in zip(best[:, 0].tolist(), labels.tolist(), strict=True):
                matrix[p][t] += 1
    return loss_sum / max(n, 1), top1 / max(n, 1), topk / max(n, 1), matrix


def validation_payload(
    names: list[str], matrix: list[list[int]], top1: float, top5: float, plots: list[str]
) -> dict[str, Any]:
    """The ``validation`` event from the confusion matrix of the best epoch."""
    per_class = []
    for c, name in enumerate(names):
        predicted = sum(matrix[c])
        true = sum(row[c] for row in matrix)
        hit = matrix[c][c]
        per_class.append(
            {
                "class": name,
                "images": true,
                "precision": hit / predicted if predicted else None,
                "recall": hit / true if true else None,
                "top1": hit / true if true else None,
            }
        )
    return {
        "primary_metric": {"key": "metrics/accuracy_top1", "value": top1},
        "per_class": per_class,
        "confusion_matrix": {"names": list(names), "matrix": matrix},
        "curves": {},
        "plots": plots,
        "samples": [],
        "top1": top1,
        "top5": top5,
    }


def _plot_confusion(path: Path, names: list[str], matrix: list[list[int]]) -> Path | None:
    """A confusion matrix PNG (skipped when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    size = max(4.0, 0.4 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            if value:
                ax.text(c, r, str(value), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _write_results(path: Path, rows: list[dict[str, float]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def _read_results(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def run_training(spec: JobSpec, events: EventWriter) -> dict[str, Any]:
    """Train; emit ``start``, ``train_start``, one ``epoch_end`` per epoch and ``validation``.

    Returns:
        The fields of the ``end`` event.

    Raises:
        SpecError: an unknown architecture, a task other than classify, bad options.
        TimmDataError: the data folder is not a class-folder dataset.
        WeightsError: a weights or resume file that is unreadable or not plain tensors.
    """
    apply_offline_env(Path(spec.config_dir))
    if spec.task != "classify":
        raise SpecError(
            f"timm trains classify datasets, not {spec.task}; pick an Ultralytics model"
        )
    options = resolve_options(spec)
    names, train_split, val_split = load_splits(Path(spec.data))
    resume: dict[str, Any] | None = None
    if spec.resume:
        resume = load_weights_file(Path(spec.resume))
        missing = [k for k in CHECKPOINT_KEYS if k not in resume]
        if missing:
            raise SpecError(
                f"{spec.resume} is not an Outpost timm checkpoint (no {missing[0]!r}); resume from weights/last.pt"
            )
        if int(resume["epoch"]) >= int(options["epochs"]):
            raise SpecError(
                f"{spec.resume} is the checkpoint of a finished run; nothing to resume, start a new run"
            )
        if list(resume["class_names"]) != names:
            raise SpecError(
                f"{spec.resume} was trained on classes {list(resume['class_names'])}, the dataset has {names}; start a new run"
            )
        options["imgsz"] = int(resume["imgsz"])
    tracker = MlflowTracker(spec)
    tracker.start()
    import timm
    import torch
    from torch.utils.data import DataLoader

    from trainers.timm.models import architectures

    arch = str(resume["arch"]) if resume else spec.model
    start_weights: dict[str, Any] | None = None
    if not resume and Path(arch).suffix == ".pt":
        start_weights = load_weights_file(Path(arch))
        if "arch" not in start_weights:
            raise SpecError(
                f"{arch} names no architecture; set the model to a timm name and the weights option to this file"
            )
        arch = str(start_weights["arch"])
    if arch not in architectures():
        raise SpecError(
            f"unknown timm model {arch!r}; list them with: outpost models list --framework timm --search TEXT"
        )
    if options.get("weights") and not resume:
        start_weights = load_weights_file(Path(options["weights"]))

    device = choose_device(spec.device)
    threads = os.cpu_count() or 1
    if device == "cpu":
        torch.set_num_threads(threads)
    seed = int(options["seed"])
    random.seed(seed)
    torch.manual_seed(seed)
    events.emit("start", device=device, pid=os.getpid())

    model = timm.create_model(arch, pretrained=False, num_classes=len(names))
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    if start_weights is not None:
        state = start_weights.get("state_dict", start_weights)
        if _load_matching(model, state) == 0:
            raise SpecError(
                f"no tensor of the weights file matches {arch}; pick weights of this architecture"
            )
    if resume:
        model.load_state_dict(resume["state_dict"])
    model.to(device)

    imgsz = int(options["imgsz"])
    epochs = int(options["epochs"])
    batch = int(options["batch"])
    workers = int(options["workers"])
    train_ds = FolderDataset(train_split, imgsz, mean, std, float(options["fliplr"]))
    val_ds = FolderDataset(val_split, imgsz, mean, std, 0.0)
    generator = torch.Generator().manual_seed(seed)
    train_loader: Any = DataLoader(
        train_ds,  # type: ignore[arg-type]
        batch_size=min(batch, len(train_ds)),
        shuffle=True,
        num_workers=workers,
        generator=generator,
        drop_last=len(train_ds) > batch,
    )
    val_loader: Any = DataLoader(
        val_ds,  # type: ignore[arg-type]
        batch_size=batch,
        shuffle=False,
        num_workers=workers,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    if options["optimizer"] == "SGD":
        optimizer: Any = torch.optim.SGD(
            params,
            lr=options["lr0"],
            momentum=options["momentum"],
            weight_decay=options["weight_decay"],
            nesterov=True,
        )
    else:
        optimizer = torch.optim.AdamW(
            params,
            lr=options["lr0"],
            betas=(options["momentum"], 0.999),
            weight_decay=options["weight_decay"],
        )
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(options["label_smoothing"]))
    use_amp = bool(options["amp"]) and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    save_dir = (
        Path(spec.resume).resolve().parent.parent if spec.resume else Path(spec.run_dir) / "train"
    )
    weights_dir = save_dir / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = weights_dir / "last.pt", weights_dir / "best.pt"
    results_path = save_dir / "results.csv"
    start_epoch = int(resume["epoch"]) + 1 if resume else 1
    best_top1 = float(resume.get("best_top1", -1.0)) if resume else -1.0
    best_epoch = int(resume.get("best_epoch", 0)) if resume else 0
    best_eval: tuple[float, float, list[list[int]]] | None = None
    rows = (
        [r for r in _read_results(results_path) if r.get("epoch", 0) < start_epoch]
        if resume
        else []
    )
    stop_after = int(os.environ.get(STOP_AFTER_EPOCH_ENV, "0") or 0)
    events.emit(
        "train_start",
        epochs=epochs,
        device=device,
        threads=torch.get_num_threads(),
        start_epoch=start_epoch,
    )
    steps = max(len(train_loader), 1)
    metrics: dict[str, float] = {}
    try:
        for epoch in range(start_epoch, epochs + 1):
            model.train()
            loss_sum, seen = 0.0, 0
            lr = 0.0
            for step, (images, labels) in enumerate(train_loader):
                lr = lr_at(epoch - 1 + step / steps, options, epochs)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, labels = images.to(device), labels.to(device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    loss = criterion(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += float(loss.detach()) * len(labels)
                seen += len(labels)
            val_loss, top1, top5, matrix = _evaluate(
                model, val_loader, device, len(names), criterion
            )
            metrics = {
                "train/loss": loss_sum / max(seen, 1),
                "val/loss": val_loss,
                "metrics/accuracy_top1": top1,
                "metrics/accuracy_top5": top5,
                "lr/pg0": lr,
            }
            improved = top1 > best_top1
            if improved:
                best_top1, best_epoch = top1, epoch
                best_eval = (top1, top5, matrix)
            ckpt = {
                "arch": arch,
                "num_classes": len(names),
                "class_names": list(names),
                "imgsz": imgsz,
                "mean": list(mean),
                "std": list(std),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "epoch": epoch,
                "optimizer": optimizer.state_dict(),
                "best_top1": best_top1,
                "best_epoch": best_epoch,
                "options": {k: v for k, v in options.items() if v is not None},
            }
            _save_checkpoint(last_path, ckpt)
            if improved:
                _save_checkpoint(best_path, {**ckpt, "optimizer": {}})
            rows.append({"epoch": float(epoch), **metrics})
            _write_results(results_path, rows)
            events.emit(
                "epoch_end", epoch=epoch, epochs=epochs, metrics=metrics, last=str(last_path)
            )
            tracker.log_metrics(metrics, step=epoch)
            if stop_after and epoch == stop_after and epoch < epochs:
                raise StoppedForTest(f"stopped after epoch {epoch} ({STOP_AFTER_EPOCH_ENV})")
            patience = int(options["patience"])
            if patience and epoch - best_epoch >= patience:
                print(
                    f"no better top-1 for {patience} epochs; stopping at epoch {epoch}",
                    file=sys.stderr,
                )
                break
    except BaseException as exc:
        tracker.abort(exc)
        raise

    if best_eval is None:  # resumed after the best epoch: evaluate best.pt once more
        best = load_weights_file(best_path)
        model.load_state_dict(best["state_dict"])
        _, top1, top5, matrix = _evaluate(model, val_loader, device, len(names), criterion)
        best_eval = (top1, top5, matrix)
    top1, top5, matrix = best_eval
    # the schema's default (True) when the spec leaves ``plots`` out; the spec's value otherwise
    plots = spec.plots if "plots" in spec.model_fields_set else True
    plot = _plot_confusion(save_dir / "confusion_matrix.png", names, matrix) if plots else None
    validation = validation_payload(names, matrix, top1, top5, [str(plot)] if plot else [])
    events.emit("validation", **validation)
    import json

    confusion_json = save_dir / "confusion_matrix.json"
    atomic_write_text(confusion_json, json.dumps(validation["confusion_matrix"]))
    for artifact in (best_path, results_path, confusion_json, *(p for p in [plot] if p)):
        tracker.log_artifact(artifact)
    tracker.finish("FINISHED")
    final = {"metrics/accuracy_top1": top1, "metrics/accuracy_top5": top5}
    return {
        "best": str(best_path),
        "last": str(last_path),
        "metrics": final,
        "mlflow_run_id": tracker.run_id,
        "warnings": [tracker.error] if tracker.error else [],
        "device": device,
    }
