"""Create ML object detection JSON: a list of images, each with centre-based pixel boxes.

One annotation file is a JSON array::

    [{"image": "cat1.jpg",
      "annotations": [{"label": "cat",
                       "coordinates": {"x": 32, "y": 24, "width": 20, "height": 10}}]}]

``x``/``y`` are the box centre and ``width``/``height`` its size, in pixels of the image.
Accepted layouts: one JSON file with the images beside it (or in ``images/``), a folder
holding such a file, or one folder per split (``train/``, ``valid/`` or ``val/``,
``test/``), each with its JSON and its images. The file states no image sizes, so boxes are
checked against the decoded images. Create ML keeps no class list: the classes are the
sorted label names, and a class without boxes is not kept. Images in the folder that the
JSON does not list are not read. Detection only.

The helpers :func:`load_json`, :func:`peek_first_item` and :func:`finish_scan` are shared
with the other JSON and XML readers of this package (Label Studio, CVAT).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    import orjson
except ImportError:  # the optional "fast" extra: the standard library's json alone
    orjson = None  # type: ignore[assignment]

from desktop_app.core.dataset_records import (
    Annotation,
    CopyImage,
    ExportDataset,
    ImageRuns,
    Problems,
    Progress,
    ScannedDataset,
    SourceImage,
    box_from_pixels,
    finite,
    inspect_images,
    safe_relative,
    split_of,
)
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities
from runtimes.fileio import atomic_write_text

ANNOTATION_FILE = "annotations.json"
SPLIT_FOLDERS = ("train", "valid", "val", "validation", "test")
PEEK_BYTES = 1 << 20

# Annotations computed once the image's decoded (width, height) is known.
Later = Callable[[int, int], tuple[Annotation, ...]]


# ---- shared helpers --------------------------------------------------------------------


_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # "0" or " "
_LONG_NUMBER = b"0" * 19  # 19 digits in a row: an integer orjson may not read exactly


def load_json(p: Path) -> Any:
    """Parse a JSON file (with orjson, or json where the two could differ: the same result).

    Raises:
        DatasetFormatError: unreadable, not UTF-8, malformed (with line and column) or
            nested too deeply.
    """
    return parse_json(read_json_bytes(p), p)


def read_json_bytes(p: Path) -> bytes:
    """The bytes of a JSON file (:func:`load_json`'s first half).

    Raises:
        DatasetFormatError: the file cannot be read.
    """
    try:
        with open(p, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise DatasetFormatError(f"{p} cannot be read ({exc.strerror}); check the file") from None


def parse_json(raw: bytes, p: Path) -> Any:
    """Parse the bytes of the JSON file ``p`` (:func:`load_json`'s second half).

    Raises:
        DatasetFormatError: not UTF-8, malformed (with line and column) or nested too deeply.
    """
    # orjson is 2-3x faster and builds the same objects, except that it reads an integer
    # beyond 64 bits as a float: a file with any run of 19 or more digits goes to json
    if orjson is not None and raw.translate(_DIGITS_ONLY).find(_LONG_NUMBER) < 0:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json gives the message, and accepts what orjson refuses (NaN, a BOM, UTF-16)
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise DatasetFormatError(f"{p} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(
            f"{p} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); fix the file"
        ) from None
    except RecursionError:
        raise DatasetFormatError(f"{p} nests JSON too deeply to read; fix the file") from None


def peek_first_item(p: Path) -> Any:
    """The first element of a JSON array file, read from its first MiB only (None if not one).

    Detection uses it to tell list-shaped JSON formats apart without parsing whole files.
    """
    try:
        with open(p, "rb") as fh:
            head = fh.read(PEEK_BYTES)
    except OSError:
        return None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text.startswith("["):
        return None
    try:
        item, _ = json.JSONDecoder().raw_decode(text[1:].lstrip())
    except (ValueError, RecursionError):
        return None
    return item


def finish_scan(
    root: Path,
    fmt: str,
    class_names: Sequence[str],
    sources: Sequence[SourceImage],
    has_source_split: bool,
    progress: Progress | None,
    problems: Problems,
    *,
    task: str = "detect",
    later: Mapping[str, Later] | None = None,
) -> ScannedDataset:
    """Run :func:`inspect_images`, then fill in what the reader left for after decoding.

    ``later`` maps a file name to a function of the decoded image size that returns the
    image's annotations (for formats whose files state no image size); problems those
    functions report are added to the result's ``problems``.
    """
    scanned = inspect_images(
        root, fmt, class_names, sources, has_source_split, progress, problems=problems, task=task
    )
    if not later:
        return scanned
    images = tuple(
        replace(img, boxes=later[img.file_name](img.width, img.height))
        if img.file_name in later
        else img
        for img in scanned.images
    )
    return replace(scanned, images=images, problems=tuple(problems.messages))


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if finite((v,)) else None


# ---- reading ---------------------------------------------------------------------------


def _is_createml(item: Any) -> bool:
    return isinstance(item, dict) and "image" in item and "annotations" in item


def _annotation_files(root: Path) -> list[tuple[Path, str | None]]:
    found: list[tuple[Path, str | None]] = []
    for folder, split in ((root, None), *((root / s, split_of(s)) for s in SPLIT_FOLDERS)):
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob("*.json")):
            if p.is_file() and not p.name.startswith(".") and _is_createml(peek_first_item(p)):
                found.append((p, split))
    return found


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".json" and _is_createml(peek_first_item(path))
    return path.is_dir() and bool(_annotation_files(path))


_Box = tuple[str, tuple[float, float, float, float], str]  # label, pixel corners, where


def read(
    path: Path, progress: Progress | None = None, problems: Problems | None = None
) -> ScannedDataset:
    """Validate Create ML annotation file(s) and their images completely.

    Raises:
        DatasetFormatError: on the first problem (strict), or a layout that is not Create
            ML at all; the message names the file and what is wrong.
    """
    problems = problems if problems is not None else Problems()
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetFormatError(f"not a Create ML dataset: {path} does not exist; check the path")
    path = path.resolve()
    if path.is_file():
        root = path.parent
        folder_split = split_of(root.name) if root.name.lower() in SPLIT_FOLDERS else None
        files = [(path, folder_split)]
    else:
        root = path
        files = _annotation_files(root)
        if not files:
            raise DatasetFormatError(
                f"not a Create ML dataset: {root} has no JSON file listing images with annotations (nor train/, valid/, test/ folders with one); check the path or --format"
            )
    sources: list[SourceImage] = []
    pending: dict[str, list[_Box]] = {}
    image_runs = ImageRuns(root)  # read by the import's helper while the rest is parsed
    for json_path, split in files:
        for src, boxes in _read_file(json_path, split, problems):
            sources.append(src)
            image_runs.add(src.path)
            # A name listed again (another split folder) is refused by inspect_images,
            # which keeps the first: keep the first one's boxes too.
            pending.setdefault(src.file_name, boxes)
    image_runs.flush()
    names = tuple(sorted({label for boxes in pending.values() for label, _, _ in boxes}))
    class_of = {n: i for i, n in enumerate(names)}

    def convert(boxes: list[_Box]) -> Later:
        def run(width: int, height: int) -> tuple[Annotation, ...]:
            out = []
            for label, corners, at in boxes:
                try:
                    x0, y0, x1, y1 = box_from_pixels(corners, width, height, at)
                except DatasetFormatError as exc:
                    problems.add_error(exc)
                    continue
                out.append(Annotation.from_xyxy(class_of[label], x0, y0, x1, y1))
            return tuple(out)

        return run

    later = {name: convert(boxes) for name, boxes in pending.items()}
    sources.sort(key=lambda s: s.file_name)
    has_split = any(s.split for s in sources)
    return finish_scan(root, "createml", names, sources, has_split, progress, problems, later=later)


def _read_file(
    json_path: Path, split: str | None, problems: Problems
) -> list[tuple[SourceImage, list[_Box]]]:
    doc = load_json(json_path)
    if not isinstance(doc, list):
        raise DatasetFormatError(
            f"{json_path}: the top level must be a list of images with annotations; fix the file"
        )
    out: list[tuple[SourceImage, list[_Box]]] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc):
        at = f"{json_path}: item {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            problems.add(f'{at} has no "image" file name; add it or remove the item')
            continue
        try:
            name = safe_relative(entry["image"], at)
        except DatasetFormatError as exc:
            problems.add_error(exc)
            continue
        at = f"{json_path}: image {name}"
        if name in seen:
            problems.add(f"{at} is listed twice; merge its annotations into one item")
            continue
        seen.add(name)
        anns = entry.get("annotations")
        if not isinstance(anns, list):
            problems.add(f'{at}: "annotations" must be a list; fix the file')
            continue
        boxes: list[_Box] = []
        for j, ann in enumerate(anns):
            box = _box(ann, f"{at} annotation {j}", problems)
            if box is not None:
                boxes.append(box)
        out.append(
            (SourceImage(name, _locate(json_path.parent, name), split, (), None, json_path), boxes)
        )
    return out


def _box(ann: Any, at: str, problems: Problems) -> _Box | None:
    if not isinstance(ann, dict):
        problems.add(f"{at} is not an object; fix the file")
        return None
    label = ann.get("label")
    if not isinstance(label, str) or not label.strip():
        problems.add(f"{at} has no label; name it")
        return None
    coords = ann.get("coordinates")
    values = (
        [number(coords.get(k)) for k in ("x", "y", "width", "height")]
        if isinstance(coords, dict)
        else [None]
    )
    if any(v is None for v in values):
        problems.add(
            f"{at} ({label}): coordinates must hold finite numbers x, y, width, height; fix them"
        )
        return None
    cx, cy, w, h = (float(v) for v in values if v is not None)
    return label.strip(), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), at


def _locate(folder: Path, name: str) -> Path:
    for p in (folder / name, folder / "images" / name):
        if p.is_file() or p.is_symlink():
            return p
    return folder / name  # missing: inspect_images reports it


# ---- writing ---------------------------------------------------------------------------


def write(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """One folder per split that holds images, each with ``annotations.json`` and the images."""
    splits = [s for s in data.splits if any(i.split == s for i in data.items)] or ["train"]
    for split in splits:
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        doc: list[dict[str, Any]] = []
        for item in (i for i in data.items if i.split == split):
            copy_image(item.sha256, folder / item.file_name)
            doc.append(
                {
                    "image": item.file_name,
                    "annotations": [
                        {
                            "label": data.class_names[a.cls],
                            "coordinates": {
                                "x": a.cx * item.width,
                                "y": a.cy * item.height,
                                "width": a.w * item.width,
                                "height": a.h * item.height,
                            },
                        }
                        for a in item.annotations
                    ],
                }
            )
        atomic_write_text(
            folder / ANNOTATION_FILE, json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
        )


FORMAT = DatasetFormat(
    key="createml",
    title="Create ML JSON (object detection)",
    detect=detect,
    read=read,
    write=write,
    capabilities=FormatCapabilities(),
)
