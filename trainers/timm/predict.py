"""Class probabilities from a timm checkpoint Outpost trained, for evaluation.

:class:`TimmClassifier` reads ``weights/best.pt`` (or ``last.pt``) with
``torch.load(weights_only=True)`` only, rebuilds the architecture it names and prepares
each image exactly as the trainer's validation does (:func:`trainers.timm.train.letterbox_rgb`
and the checkpoint's mean and std), so its top-1 on a split is the trainer's own.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from trainers.protocol import SpecError
from trainers.timm.train import CHECKPOINT_KEYS, letterbox_rgb, load_weights_file


class TimmClassifier:
    """A timm classifier on the CPU, from an Outpost timm checkpoint.

    Raises:
        WeightsError: the file is unreadable or holds more than plain data and tensors.
        SpecError: the file is not an Outpost timm checkpoint.
    """

    def __init__(self, checkpoint: Path, threads: int | None = None) -> None:
        import timm
        import torch

        ckpt = load_weights_file(Path(checkpoint))
        missing = [k for k in CHECKPOINT_KEYS if k not in ckpt and k != "optimizer"]
        if missing:
            raise SpecError(
                f"{checkpoint} is not an Outpost timm checkpoint (no {missing[0]!r}); "
                "evaluate the run's weights/best.pt"
            )
        if threads:
            torch.set_num_threads(threads)
        self.class_names: tuple[str, ...] = tuple(str(n) for n in ckpt["class_names"])
        self.imgsz = int(ckpt["imgsz"])
        self.mean = tuple(float(v) for v in ckpt["mean"])
        self.std = tuple(float(v) for v in ckpt["std"])
        self.arch = str(ckpt["arch"])
        model = timm.create_model(self.arch, pretrained=False, num_classes=len(self.class_names))
        model.load_state_dict(ckpt["state_dict"])
        self.model: Any = model.eval()

    def probs(self, data: bytes) -> Any:
        """The ``(C,)`` float32 softmax probabilities for one encoded image.

        Raises:
            OSError: the bytes are not an image PIL can read.
        """
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            array = letterbox_rgb(img, self.imgsz)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
        with torch.inference_mode():
            logits = self.model(tensor).float()
        return torch.softmax(logits, dim=1)[0].numpy().astype(np.float32)
