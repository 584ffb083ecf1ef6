"""Train/val splits (seeded, stratified) and the content hash of a dataset version."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from desktop_app.core.errors import InvalidArgumentError

SPLITS = ("train", "val", "test")
BACKGROUND = -1  # stratum of images without boxes


def check_val_fraction(val_fraction: float) -> float:
    """Return ``val_fraction`` as a float, or raise when it is not in (0, 1)."""
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"val_fraction must be a number between 0 and 1, got {val_fraction!r}"
        ) from None
    if not 0.0 < vf < 1.0:
        raise InvalidArgumentError(
            f"val_fraction must be between 0 and 1 (exclusive), got {vf}; try 0.2"
        )
    return vf


def dominant_class(boxes: Sequence[Sequence[Any]]) -> int:
    """The most frequent class id among ``boxes`` (lowest id on ties; -1 with no boxes)."""
    if not boxes:
        return BACKGROUND
    counts = Counter(int(b[0]) for b in boxes)
    return min(counts, key=lambda c: (-counts[c], c))


def stratified_split(strata: Sequence[int], val_fraction: float, seed: int) -> list[str]:
    """Assign "train" or "val" to each item, stratified by its stratum (e.g. dominant class).

    The result depends only on the strata sequence, ``val_fraction`` and ``seed``. The number
    of val items is ``round(n * val_fraction)``, at least 1 and at most n - 1 when n >= 2;
    each stratum gets its proportional share (largest remainders break the rounding).

    Args:
        strata: One stratum key per item, in a stable item order.
        val_fraction: Share of items to put in val, in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        One split name per item, in the input order.
    """
    vf = check_val_fraction(val_fraction)
    n = len(strata)
    n_val = math.floor(n * vf + 0.5)
    n_val = 0 if n < 2 else min(max(n_val, 1), n - 1)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    keys = sorted(groups)
    quotas = _largest_remainder([len(groups[k]) * n_val / n for k in keys], n_val) if n else []
    rng = np.random.Generator(np.random.PCG64(seed))
    out = ["train"] * n
    for key, quota in zip(keys, quotas, strict=True):
        members = groups[key]
        order = rng.permutation(len(members))
        for j in order[:quota]:
            out[members[int(j)]] = "val"
    return out


def _largest_remainder(shares: list[float], total: int) -> list[int]:
    floors = [math.floor(s) for s in shares]
    left = total - sum(floors)
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in by_remainder[:left]:
        floors[i] += 1
    return floors


def content_hash(class_names: Sequence[str], items: Sequence[Sequence[Any]]) -> str:
    """sha256 over the class names and the sorted (file_name, image sha256, boxes, split) items.

    Boxes are ``[class, cx, cy, w, h]``; the JSON encoding is canonical, so the same content
    always gives the same hash. An item may carry a fifth element, its label status; it
    counts only when it is not "labelled" (so an unlabelled image differs from a background
    one, and hashes of fully labelled versions stay what they were).
    """
    rows = []
    for item in items:
        fn, sha, boxes, split = item[:4]
        row: list[Any] = [fn, sha, [list(b) for b in boxes], split]
        if len(item) > 4 and item[4] != "labelled":
            row.append(item[4])
        rows.append(row)
    rows.sort()
    payload = {"class_names": list(class_names), "items": rows}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()
