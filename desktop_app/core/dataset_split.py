"""Splits (seeded, stratified train/val/test; split settings) and a version's content hash."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # the optional "fast" extra: the standard library's json alone
    orjson = None  # type: ignore[assignment]

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
    counts = Counter(map(itemgetter(0), boxes))
    top = max(counts.values())
    return int(min(c for c, n in counts.items() if n == top))


DOMINANT_TABLE_MAX = 1 << 22  # images x classes counted in one table (32 MiB of int64)


def dominant_classes(boxes: Sequence[Sequence[Sequence[Any]]], n_classes: int) -> list[int]:
    """:func:`dominant_class` of each image's ``boxes`` (integer class ids), counted for all
    images at once.

    One table of counts per (image, class) when the class ids are ``0..n_classes-1`` and the
    table stays small; otherwise image by image (the same answers).
    """
    lengths = np.fromiter(map(len, boxes), dtype=np.int64, count=len(boxes))
    total = int(lengths.sum())
    if not total or n_classes <= 0 or len(boxes) * n_classes > DOMINANT_TABLE_MAX:
        return [dominant_class(b) for b in boxes]
    try:
        classes = np.fromiter(
            map(itemgetter(0), itertools.chain.from_iterable(boxes)), dtype=np.int64, count=total
        )
    except (TypeError, ValueError, OverflowError):
        return [dominant_class(b) for b in boxes]
    if int(classes.min()) < 0 or int(classes.max()) >= n_classes:
        return [dominant_class(b) for b in boxes]
    image = np.repeat(np.arange(len(boxes), dtype=np.int64), lengths)
    counts = np.bincount(image * n_classes + classes, minlength=len(boxes) * n_classes)
    top = counts.reshape(len(boxes), n_classes).argmax(axis=1)  # the first (lowest) on ties
    top[lengths == 0] = BACKGROUND
    out: list[int] = top.tolist()
    return out


def check_test_fraction(test_fraction: float, val_fraction: float = 0.0) -> float:
    """Return ``test_fraction`` as a float, or raise when it is not in [0, 1 - val_fraction)."""
    try:
        tf = float(test_fraction)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"test fraction must be a number between 0 and 1, got {test_fraction!r}"
        ) from None
    if not 0.0 <= tf < 1.0:
        raise InvalidArgumentError(
            f"test fraction must be at least 0 and below 1, got {tf}; try 0.1 (or 0 for none)"
        )
    if val_fraction + tf >= 1.0:
        raise InvalidArgumentError(
            f"val ({val_fraction}) and test ({tf}) fractions leave nothing to train on; "
            "keep their sum below 1"
        )
    return tf


def stratified_split(
    strata: Sequence[int], val_fraction: float, seed: int, test_fraction: float = 0.0
) -> list[str]:
    """Assign "train", "val" (or "test") to each item, stratified by its stratum.

    The result depends only on the strata sequence, the fractions and ``seed``. The number
    of val items is ``round(n * val_fraction)``, at least 1 and at most n - 1 when n >= 2;
    with a test fraction, the number of test items is ``round(n * test_fraction)``, at least
    1 when n >= 3, and at least one item always stays in train. Each stratum gets its
    proportional share of each split (largest remainders break the rounding). Without a test
    fraction the result is the same as a plain train/val split with the same seed.

    Args:
        strata: One stratum key per item (e.g. its dominant class), in a stable item order.
        val_fraction: Share of items to put in val, in (0, 1).
        seed: Seed of the shuffle.
        test_fraction: Share of items to put in test, in [0, 1 - val_fraction).

    Returns:
        One split name per item, in the input order.
    """
    vf = check_val_fraction(val_fraction)
    tf = check_test_fraction(test_fraction, vf)
    n = len(strata)
    n_val = math.floor(n * vf + 0.5)
    n_val = 0 if n < 2 else min(max(n_val, 1), n - 1)
    n_test = 0
    if tf > 0 and n >= 3:
        n_test = max(math.floor(n * tf + 0.5), 1)
        n_test = min(n_test, n - 1 - n_val)
        if n_test < 1:  # the val share took everything but one train item; give test one
            n_val, n_test = n_val - 1, 1
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    keys = sorted(groups)
    sizes = [len(groups[k]) for k in keys]
    val_quotas = _largest_remainder([m * n_val / n for m in sizes], n_val) if n else []
    test_quotas = (
        _capped_quotas(
            [m * n_test / n for m in sizes],
            n_test,
            [m - q for m, q in zip(sizes, val_quotas, strict=True)],
        )
        if n_test
        else [0] * len(keys)
    )
    rng = np.random.Generator(np.random.PCG64(seed))
    out = ["train"] * n
    for key, q_val, q_test in zip(keys, val_quotas, test_quotas, strict=True):
        members = groups[key]
        order = rng.permutation(len(members))
        for j in order[:q_val]:
            out[members[int(j)]] = "val"
        for j in order[q_val : q_val + q_test]:
            out[members[int(j)]] = "test"
    return out


def _capped_quotas(shares: list[float], total: int, caps: list[int]) -> list[int]:
    """Largest-remainder quotas that never exceed ``caps`` (the excess goes to others)."""
    quotas = [min(q, c) for q, c in zip(_largest_remainder(shares, total), caps, strict=True)]
    left = total - sum(quotas)
    by_room = sorted(range(len(shares)), key=lambda i: (-(shares[i] - quotas[i]), i))
    while left > 0:
        moved = False
        for i in by_room:
            if left and quotas[i] < caps[i]:
                quotas[i] += 1
                left -= 1
                moved = True
        if not moved:
            break
    return quotas


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


_OUTLINES_ONLY = frozenset({"polygons"})
_PLAIN_ROW = frozenset({5})  # [cls, cx, cy, w, h]: a box alone
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_quote = json.encoder.encode_basestring_ascii


def encode_boxes(boxes: Sequence[Sequence[Any]]) -> str:
    """One item's boxes as :func:`content_hash` encodes them (canonical, compact JSON).

    The same text is valid JSON for ``DatasetItem.boxes``, so an import encodes each item's
    boxes once, for the hash (:func:`content_hash_encoded`) and for the database.
    """
    if orjson is not None:
        extras = 0  # rows with a dict of extras: only outlines are written this way
        if not set(map(len, boxes)) <= _PLAIN_ROW:
            for b in boxes:
                if len(b) == 6 and type(b[5]) is dict and b[5].keys() == _OUTLINES_ONLY:
                    extras += 1
                elif len(b) != 5:
                    extras = -1
                    break
        if extras >= 0:
            # Boxes (and outlines), the common case: orjson writes them 10-15x faster, in the
            # same text except where it spells a number differently (an exponent, "0.0000..."
            # where json writes 1e-05, null for nan) or meets a string; those go to json.
            try:
                raw = orjson.dumps(boxes)
            except (TypeError, orjson.JSONEncodeError):
                raw = b"null"
            if not (
                b"e" in raw
                or b"null" in raw
                or b"0.0000" in raw
                or raw.count(b'"') != 2 * extras  # only the "polygons" keys
            ):
                return raw.decode("ascii")
    return _CANONICAL.encode([list(b) for b in boxes])


def encode_boxes_all(items: Sequence[Sequence[Sequence[Any]]]) -> list[str]:
    """:func:`encode_boxes` of each item's boxes (the same texts), checked all at once when
    every row is a box alone (the common case): one scan of all the texts instead of one
    per item."""
    if orjson is None or not set(map(len, itertools.chain.from_iterable(items))) <= _PLAIN_ROW:
        return [encode_boxes(boxes) for boxes in items]
    try:
        raws = list(map(orjson.dumps, items))
    except (TypeError, orjson.JSONEncodeError):
        return [encode_boxes(boxes) for boxes in items]
    joined = b"".join(raws)  # "]][[" between items: no spelling spans two of them
    if b"e" in joined or b"null" in joined or b"0.0000" in joined or b'"' in joined:
        return [encode_boxes(boxes) for boxes in items]
    return [raw.decode("ascii") for raw in raws]


def content_hash_encoded(
    class_names: Sequence[str], items: Sequence[tuple[str, str, str, str, str]]
) -> str:
    """:func:`content_hash` of items whose boxes are already encoded with :func:`encode_boxes`.

    Args:
        class_names: The class names, in class-id order.
        items: ``(file_name, image sha256, encoded boxes, split, label status)`` per item.

    Returns:
        The same digest :func:`content_hash` gives for the decoded items, computed without
        encoding the boxes again: the canonical JSON of the whole payload is the encoded
        items joined in file-name order (file names are unique in a version; with a repeated
        name the items are decoded and hashed by :func:`content_hash`, which sorts whole rows).
    """
    rows = sorted(items, key=lambda item: item[0])
    if len({item[0] for item in rows}) != len(rows):
        return content_hash(
            class_names, [(fn, sha, json.loads(b), sp, st) for fn, sha, b, sp, st in items]
        )
    digest = hashlib.sha256(b'{"class_names":')
    digest.update(_CANONICAL.encode(list(class_names)).encode("ascii"))
    digest.update(b',"items":[')
    parts: list[str] = []
    for k, (fn, sha, boxes, split, status) in enumerate(rows):
        tail = "]" if status == "labelled" else f",{_quote(status)}]"
        parts.append(f"{',' if k else ''}[{_quote(fn)},{_quote(sha)},{boxes},{_quote(split)}{tail}")
        if len(parts) >= 1024:
            digest.update("".join(parts).encode("ascii"))
            parts.clear()
    digest.update("".join(parts).encode("ascii"))
    digest.update(b"]}")
    return digest.hexdigest()


# ---- split settings ------------------------------------------------------------------------

SPLIT_METHODS = ("auto", "manual", "partial")
DEFAULT_SPLIT: dict[str, Any] = {
    "method": "auto",
    "val": 0.2,
    "test": 0.0,
    "seed": 42,
    "assignments": {},
}


def normalize_split_settings(
    settings: Mapping[str, Any], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A complete, checked split setting: ``settings`` over ``base`` over the default.

    A setting is ``{"method": "auto"|"manual"|"partial", "val": 0.2, "test": 0.0,
    "seed": 42, "assignments": {file_name: "train"|"val"|"test"}}``; any key may be left out.

    Raises:
        InvalidArgumentError: an unknown key or method, a fraction out of range, a seed that
            is not an integer, or an assignment to a split other than train, val or test.
    """
    unknown = sorted(set(settings) - set(DEFAULT_SPLIT))
    if unknown:
        raise InvalidArgumentError(
            f"unknown split setting {unknown[0]!r}; use method, val, test, seed or assignments"
        )
    merged = {**DEFAULT_SPLIT, **(base or {}), **settings}
    method = str(merged["method"]).strip().lower()
    if method not in SPLIT_METHODS:
        raise InvalidArgumentError(
            f"split method {merged['method']!r} is not known; use auto, manual or partial"
        )
    val = check_val_fraction(merged["val"])
    test = check_test_fraction(merged["test"], val)
    seed = merged["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int | str):
        raise InvalidArgumentError(f"split seed must be an integer, got {seed!r}")
    try:
        seed = int(seed)
    except ValueError:
        raise InvalidArgumentError(f"split seed must be an integer, got {seed!r}") from None
    raw = merged["assignments"] or {}
    if not isinstance(raw, Mapping):
        raise InvalidArgumentError(
            "split assignments must map file names to train, val or test, e.g. "
            '{"img_001.jpg": "val"}'
        )
    assignments: dict[str, str] = {}
    for file_name, split in raw.items():
        s = str(split).strip().lower()
        if s not in SPLITS:
            raise InvalidArgumentError(
                f"image {file_name!r} is assigned to {split!r}; use train, val or test"
            )
        assignments[str(file_name)] = s
    return {"method": method, "val": val, "test": test, "seed": seed, "assignments": assignments}


def compute_split(
    items: Sequence[tuple[str, Sequence[Sequence[Any]]]], settings: Mapping[str, Any]
) -> list[str]:
    """The split of each item under a split setting (a pure function).

    ``auto`` draws every image, seeded and stratified by its dominant class; ``manual``
    takes each image's split from ``assignments`` (every image must be assigned);
    ``partial`` keeps the assigned images' splits and draws the rest as ``auto`` does, with
    the same fractions. The draw depends only on the set of (file name, boxes) pairs and
    the setting, not on the order of ``items``.

    Args:
        items: ``(file_name, boxes)`` of each image; boxes are ``[class, cx, cy, w, h, ...]``.
        settings: A split setting (completed with :func:`normalize_split_settings`).

    Returns:
        One of "train", "val", "test" per item, in the input order.

    Raises:
        InvalidArgumentError: the setting is invalid, a manual setting leaves images
            unassigned, or an assignment names an image that is not in ``items``.
    """
    s = normalize_split_settings(settings)
    assignments: dict[str, str] = s["assignments"]
    names = [fn for fn, _ in items]
    known = set(names)
    stray = sorted(set(assignments) - known)
    if stray and s["method"] != "auto":
        raise InvalidArgumentError(
            f"{len(stray)} split assignment(s) name images that are not in the dataset "
            f"(e.g. {stray[0]!r}); check the file names with `outpost dataset items`"
        )
    out: list[str | None] = [None] * len(items)
    if s["method"] in ("manual", "partial"):
        out = [assignments.get(fn) for fn in names]
    missing = [fn for fn, split in zip(names, out, strict=True) if split is None]
    if s["method"] == "manual" and missing:
        raise InvalidArgumentError(
            f"a manual split must assign every image; {len(missing)} of {len(items)} have no "
            f"split (e.g. {sorted(missing)[0]!r}); assign them or use --method partial"
        )
    pool = sorted((i for i, split in enumerate(out) if split is None), key=lambda i: names[i])
    if pool:
        strata = [dominant_class(items[i][1]) for i in pool]
        drawn = stratified_split(strata, s["val"], s["seed"], s["test"])
        for i, split in zip(pool, drawn, strict=True):
            out[i] = split
    return [split or "train" for split in out]


def parse_split_arg(text: str) -> dict[str, Any]:
    """``"val=0.1,test=0.1,seed=7,method=auto"`` → a (partial) split setting.

    Raises:
        InvalidArgumentError: a part is not ``key=value`` or a value is not a number.
    """
    out: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise InvalidArgumentError(
                f"split option {part!r} is not KEY=VALUE; e.g. --split val=0.1,test=0.1,seed=7"
            )
        try:
            if key in ("val", "test"):
                out[key] = float(value)
            elif key == "seed":
                out[key] = int(value)
            elif key == "method":
                out[key] = value
            else:
                raise InvalidArgumentError(
                    f"unknown split option {key!r}; use val, test, seed or method"
                )
        except ValueError:
            raise InvalidArgumentError(
                f"split option {part!r} needs a number; e.g. --split val=0.1,test=0.1,seed=7"
            ) from None
    if not out:
        raise InvalidArgumentError(
            f"split option {text!r} sets nothing; e.g. --split val=0.1,test=0.1,seed=7"
        )
    return out
