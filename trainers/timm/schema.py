"""The timm trainer's options, as its config schema."""

from __future__ import annotations

from typing import Any

from trainers.schema import ConfigSchema, OptionField

F = OptionField

FIELDS = (
    F("epochs", "int", 50, "Passes over the training split.", minimum=1, maximum=10_000),
    F(
        "imgsz",
        "int",
        224,
        "Input size in pixels (images are letterboxed to it).",
        minimum=32,
        maximum=1024,
    ),
    F("batch", "int", 32, "Images per batch.", minimum=1, maximum=4096),
    F("seed", "int", 0, "Random seed for reproducible runs.", minimum=0, maximum=2**31 - 1),
    F(
        "weights",
        "string",
        None,
        "Start from this state dict or Outpost timm checkpoint (.pt); empty: random init.",
        nullable=True,
        advanced=True,
    ),
    F("optimizer", "select", "AdamW", "Optimizer.", group="optimizer", choices=("AdamW", "SGD")),
    F("lr0", "float", 0.001, "Peak learning rate.", group="optimizer", minimum=1e-6, maximum=1.0),
    F(
        "weight_decay",
        "float",
        0.05,
        "Weight decay.",
        group="optimizer",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
    ),
    F(
        "momentum",
        "float",
        0.9,
        "SGD momentum / AdamW beta1.",
        group="optimizer",
        minimum=0.0,
        maximum=0.999,
        advanced=True,
    ),
    F(
        "scheduler",
        "select",
        "cosine",
        "Learning-rate schedule after warm-up.",
        group="scheduler",
        choices=("cosine", "step"),
    ),
    F(
        "warmup_epochs",
        "float",
        1.0,
        "Linear warm-up from 0 to lr0, in epochs.",
        group="scheduler",
        minimum=0.0,
        maximum=100.0,
    ),
    F(
        "lrf",
        "float",
        0.01,
        "Final learning rate as a fraction of lr0 (cosine).",
        group="scheduler",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
    ),
    F(
        "step_size",
        "int",
        30,
        "Epochs between decays (step).",
        group="scheduler",
        minimum=1,
        maximum=10_000,
        advanced=True,
    ),
    F(
        "gamma",
        "float",
        0.1,
        "Decay factor per step (step).",
        group="scheduler",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
    ),
    F(
        "fliplr",
        "float",
        0.5,
        "Probability of a horizontal flip.",
        group="augmentation",
        minimum=0.0,
        maximum=1.0,
    ),
    F(
        "label_smoothing",
        "float",
        0.1,
        "Label smoothing of the cross-entropy loss.",
        group="augmentation",
        minimum=0.0,
        maximum=0.5,
    ),
    F("amp", "bool", True, "Mixed precision on CUDA.", group="optimization"),
    F(
        "workers",
        "int",
        2,
        "Data-loading worker processes.",
        group="optimization",
        minimum=0,
        maximum=64,
        advanced=True,
    ),
    F(
        "patience",
        "int",
        100,
        "Stop after this many epochs without a better top-1 accuracy.",
        group="validation",
        minimum=0,
        maximum=10_000,
    ),
    F(
        "plots",
        "bool",
        True,
        "Draw the confusion matrix of the best epoch at the end (PNG, logged to MLflow).",
        group="validation",
    ),
)

PRESETS: dict[str, dict[str, Any]] = {
    # A quick look: few epochs, small images.
    "easy": {"epochs": 20, "imgsz": 128, "patience": 10},
    # A sound default.
    "medium": {"epochs": 50, "imgsz": 224},
    # Longer, with a longer warm-up and stronger regularisation.
    "advanced": {
        "epochs": 150,
        "imgsz": 224,
        "warmup_epochs": 5.0,
        "label_smoothing": 0.1,
        "weight_decay": 0.05,
        "patience": 30,
    },
}

SCHEMA = ConfigSchema("timm", FIELDS, PRESETS)
