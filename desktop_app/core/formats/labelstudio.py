"""Label Studio JSON export: a list of tasks, each an image with its annotation results.

::

    [{"id": 1, "data": {"image": "images/cat1.jpg"},
      "annotations": [{"result": [
        {"type": "rectanglelabels", "from_name": "label", "to_name": "image",
         "original_width": 64, "original_height": 48,
         "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0,
                   "rectanglelabels": ["cat"]}}]}]}]

Coordinates are percentages of the image (``x``/``y`` the top-left corner). Result types
read: ``rectanglelabels`` (boxes; a rotated box is a problem), ``polygonlabels`` (one
object per polygon, its box the polygon's bounds; task ``segment``) and ``choices`` (one
whole-image class per image; task ``classify``); any other type is reported as a problem.
The first annotation of a task that is not cancelled (``was_cancelled``) is used;
predictions are not read. A task without such an annotation is an unlabelled image; an
annotation with an empty result is a labelled image without objects (background).
Classes are the sorted label names. A ``split`` field in ``data`` (written by the writer)
gives the split. The JSON-MIN export is not supported.

Image paths (``data.image``, or the one string in ``data`` naming an image file): a path
relative to the JSON's folder is used as is; ``/data/upload/<n>/<prefix>-name.jpg`` (Label
Studio's uploads) is looked up by its file name, without the 8-hex-digit prefix Label Studio
adds (or with it), anywhere under the folder; ``/data/local-files/?d=<path>`` is tried as
``<path>`` under the folder, then by its file name. A file name found twice is a problem;
URLs are refused. An image under ``images/`` is stored under its path inside ``images/``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from desktop_app.core.dataset_records import (
    Annotation,
    CopyImage,
    ExportDataset,
    ExportItem,
    ImageRuns,
    Problems,
    Progress,
    ScannedDataset,
    SourceImage,
    box_from_pixels,
    is_image_name,
    safe_relative,
    snap,
    split_of,
)
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities
from desktop_app.core.formats.createml import Later, finish_scan, load_json, number, peek_first_item
from runtimes.fileio import atomic_write_text

TASKS_FILE = "tasks.json"
IMAGES = "images"
UPLOAD, LOCAL = "/data/upload/", "/data/local-files/"
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
_SHAPES = ("rectanglelabels", "polygonlabels")


def _is_labelstudio(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("data"), dict)


def _task_files(root: Path) -> list[Path]:
    return [
        p
        for p in sorted(root.glob("*.json"))
        if p.is_file() and not p.name.startswith(".") and _is_labelstudio(peek_first_item(p))
    ]


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".json" and _is_labelstudio(peek_first_item(path))
    return path.is_dir() and bool(_task_files(path))


# ---- reading ---------------------------------------------------------------------------

# A result kept for after decoding: kind, label, percent numbers, where.
_Result = tuple[str, str, tuple[float, ...], str]


def read(
    path: Path, progress: Progress | None = None, problems: Problems | None = None
) -> ScannedDataset:
    """Validate a Label Studio JSON export and its images completely.

    Raises:
        DatasetFormatError: on the first problem (strict), or a file that is not a Label
            Studio JSON export; the message names the file and what is wrong.
    """
    problems = problems if problems is not None else Problems()
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetFormatError(
            f"not a Label Studio dataset: {path} does not exist; check the path"
        )
    path = path.resolve()
    if path.is_file():
        json_path, root = path, path.parent
    else:
        root = path
        found = _task_files(root)
        if not found:
            raise DatasetFormatError(
                f"not a Label Studio dataset: {root} has no JSON export (a list of tasks with data and annotations); check the path or --format"
            )
        json_path = (root / TASKS_FILE) if (root / TASKS_FILE) in found else found[0]
    doc = load_json(json_path)
    if not isinstance(doc, list):
        raise DatasetFormatError(
            f"{json_path}: the top level must be a list of tasks (Label Studio JSON export); fix the file"
        )
    if doc and isinstance(doc[0], dict) and "data" not in doc[0] and "image" in doc[0]:
        raise DatasetFormatError(
            f"{json_path} looks like Label Studio's JSON-MIN export, which is not supported; export as JSON"
        )
    finder = _Finder(root)
    image_runs = ImageRuns(root)  # read by the import's helper while the rest is parsed
    sources: list[SourceImage] = []
    pending: dict[str, list[_Result]] = {}
    seen: dict[str, str] = {}
    for i, task in enumerate(doc):
        tid = task.get("id", i) if isinstance(task, dict) else i
        at = f"{json_path}: task {tid}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.add(f'{at} has no "data" object; fix or remove the task')
            continue
        try:
            file_name, image_path = finder.resolve(_image_ref(task["data"], at), at)
        except DatasetFormatError as exc:
            problems.add_error(exc)
            continue
        if file_name in seen:
            problems.add(
                f"{at}: image {file_name} is also {seen[file_name]}; keep one task per image"
            )
            continue
        seen[file_name] = at
        at = f"{at} ({file_name})"
        raw_split = task["data"].get("split")
        split = split_of(raw_split) if isinstance(raw_split, str) else None
        annotation = _first_annotation(task, at, problems)
        results: list[_Result] = []
        sizes: set[tuple[int, int]] = set()
        if annotation is not None:
            for j, res in enumerate(annotation):
                parsed = _result(res, f"{at} result {j}", problems)
                if parsed is not None:
                    results.append(parsed[0])
                    if parsed[1] is not None:
                        sizes.add(parsed[1])
        if len(sizes) > 1:
            problems.add(f"{at}: results state different original sizes {sorted(sizes)}; fix them")
        declared = sizes.pop() if len(sizes) == 1 else None
        pending[file_name] = results
        sources.append(
            SourceImage(
                file_name, image_path, split, (), declared, json_path, annotation is not None
            )
        )
        image_runs.add(image_path)
    image_runs.flush()
    kinds = {kind for results in pending.values() for kind, *_ in results}
    task_kind = (
        "classify" if kinds == {"choices"} else "segment" if "polygonlabels" in kinds else "detect"
    )
    if "choices" in kinds and kinds != {"choices"}:
        for results in pending.values():
            for kind, _, _, where in results:
                if kind == "choices":
                    problems.add(
                        f"{where}: image choices in an export with regions cannot be kept; remove them or import with --lenient"
                    )
        pending = {n: [r for r in rs if r[0] != "choices"] for n, rs in pending.items()}
    names = tuple(sorted({label for rs in pending.values() for _, label, _, _ in rs}))
    class_of = {n: i for i, n in enumerate(names)}

    def convert(results: list[_Result]) -> Later:
        def run(width: int, height: int) -> tuple[Annotation, ...]:
            out = []
            for kind, label, values, where in results:
                try:
                    out.append(_annotation(kind, class_of[label], values, width, height, where))
                except DatasetFormatError as exc:
                    problems.add_error(exc)
            return tuple(out)

        return run

    later = {name: convert(results) for name, results in pending.items()}
    sources.sort(key=lambda s: s.file_name)
    has_split = any(s.split for s in sources)
    return finish_scan(
        root,
        "labelstudio",
        names,
        sources,
        has_split,
        progress,
        problems,
        task=task_kind,
        later=later,
    )


def _image_ref(data: dict[str, Any], at: str) -> str:
    ref = data.get("image")
    if isinstance(ref, str) and ref.strip():
        return ref
    candidates = [v for v in data.values() if isinstance(v, str) and is_image_name(v.split("?")[0])]
    if len(candidates) == 1:
        return candidates[0]
    raise DatasetFormatError(f"{at}: data names no image (expected data.image); add it")


class _Finder:
    """Turns a task's image reference into (stored file name, path under the folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None

    def resolve(self, ref: str, at: str) -> tuple[str, Path]:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", ref):
            raise DatasetFormatError(
                f"{at}: image {ref!r} is a URL; download the images into {self.root} and point to them"
            )
        if ref.startswith(UPLOAD):
            name = unquote(ref.rsplit("/", 1)[-1])
            return self._by_basename([_UPLOAD_PREFIX.sub("", name), name], ref, at)
        if ref.startswith(LOCAL):
            values = parse_qs(urlsplit(ref).query).get("d", [])
            if not values:
                raise DatasetFormatError(f"{at}: image {ref!r} has no ?d= path; fix it")
            rel = safe_relative(values[0], at)
            if (self.root / rel).is_file():
                return self._named(rel)
            return self._by_basename([rel.rsplit("/", 1)[-1]], ref, at)
        return self._named(safe_relative(ref, at))

    def _named(self, rel: str) -> tuple[str, Path]:
        head, _, rest = rel.partition("/")
        return (rest if head == IMAGES and rest else rel), self.root / rel

    def _by_basename(self, names: list[str], ref: str, at: str) -> tuple[str, Path]:
        index = self._index()
        for name in names:
            hits = index.get(name, [])
            if len(hits) > 1:
                shown = ", ".join(str(p) for p in hits[:3])
                raise DatasetFormatError(
                    f"{at}: image {ref!r} matches {len(hits)} files ({shown}); keep one"
                )
            if hits:
                return self._named(hits[0].relative_to(self.root).as_posix())
        return names[0], self.root / IMAGES / names[0]  # missing: inspect_images reports it

    def _index(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for f in sorted(filenames):
                    if not f.startswith(".") and is_image_name(f):
                        self._by_name.setdefault(f, []).append(Path(dirpath) / f)
        return self._by_name


def _first_annotation(task: dict[str, Any], at: str, problems: Problems) -> list[Any] | None:
    """The result list of the task's first annotation that is not cancelled, else None."""
    anns = task.get("annotations", [])
    if not isinstance(anns, list):
        problems.add(f'{at}: "annotations" must be a list; fix the file')
        return None
    for ann in anns:
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        result = ann.get("result", [])
        if not isinstance(result, list):
            problems.add(f'{at}: an annotation\'s "result" must be a list; fix the file')
            return None
        return result
    return None


def _result(res: Any, at: str, problems: Problems) -> tuple[_Result, tuple[int, int] | None] | None:
    if not isinstance(res, dict) or not isinstance(res.get("value"), dict):
        problems.add(f'{at} has no "value" object; fix the file')
        return None
    kind, value = res.get("type"), res["value"]
    if kind not in (*_SHAPES, "choices"):
        problems.add(
            f"{at}: result type {kind!r} is not supported (rectanglelabels, polygonlabels and choices are); remove it or import with --lenient"
        )
        return None
    labels = value.get(kind)
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        problems.add(f"{at}: {kind} must hold exactly one label name; fix the result")
        return None
    label = labels[0].strip()
    ow, oh = number(res.get("original_width")), number(res.get("original_height"))
    size = (int(ow), int(oh)) if ow and oh and ow > 0 and oh > 0 else None
    if kind == "choices":
        return (kind, label, (), at), size
    if kind == "rectanglelabels":
        box = [number(value.get(k)) for k in ("x", "y", "width", "height")]
        if any(v is None for v in box):
            problems.add(f"{at}: x, y, width and height must be finite numbers; fix the box")
            return None
        rotation = number(value.get("rotation", 0))
        if rotation is None or abs(rotation) > 1e-9:
            problems.add(
                f"{at}: the box is rotated by {value.get('rotation')!r} degrees; rotated boxes are not supported, straighten it or import with --lenient"
            )
            return None
        return (kind, label, tuple(float(v) for v in box if v is not None), at), size
    points = value.get("points")
    flat: list[float] = []
    if isinstance(points, list):
        for pt in points:
            xy = [number(v) for v in pt] if isinstance(pt, list) and len(pt) == 2 else [None]
            if any(v is None for v in xy):
                flat = []
                break
            flat += [float(v) for v in xy if v is not None]
    if len(flat) < 6:
        problems.add(f"{at}: points must be at least 3 [x, y] pairs of numbers; fix the polygon")
        return None
    return (kind, label, tuple(flat), at), size


def _annotation(
    kind: str, cls: int, values: tuple[float, ...], width: int, height: int, at: str
) -> Annotation:
    if kind == "choices":
        return Annotation.whole_image(cls)
    if kind == "rectanglelabels":
        x, y, w, h = values
        corners = (x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100)
        return Annotation.from_xyxy(cls, *box_from_pixels(corners, width, height, at))
    px = [v * (width if k % 2 == 0 else height) / 100 for k, v in enumerate(values)]
    if any(v < -1 or v > (width if k % 2 == 0 else height) + 1 for k, v in enumerate(px)):
        raise DatasetFormatError(
            f"{at}: the polygon lies outside the {width}x{height} image; fix it"
        )
    poly = tuple(snap(min(max(v / 100, 0.0), 1.0)) for v in values)
    xs, ys = px[0::2], px[1::2]
    x0, y0, x1, y1 = box_from_pixels((min(xs), min(ys), max(xs), max(ys)), width, height, at)
    return Annotation.from_xyxy(cls, x0, y0, x1, y1, polygons=(poly,))


# ---- writing ---------------------------------------------------------------------------


def write(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """``tasks.json`` (percent coordinates, the split in ``data.split``) and ``images/``."""
    tasks: list[dict[str, Any]] = []
    for tid, item in enumerate(data.items, start=1):
        copy_image(item.sha256, out / IMAGES / item.file_name)
        task: dict[str, Any] = {
            "id": tid,
            "data": {"image": f"{IMAGES}/{item.file_name}", "split": item.split},
            "annotations": [],
            "predictions": [],
        }
        if item.label_status != "unlabelled":
            task["annotations"].append(
                {
                    "id": tid,
                    "result": _results(data, item),
                    "was_cancelled": False,
                    "ground_truth": False,
                }
            )
        tasks.append(task)
    atomic_write_text(out / TASKS_FILE, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")


def _results(data: ExportDataset, item: ExportItem) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(kind: str, value: dict[str, Any], label: str) -> None:
        value[kind] = [label]
        out.append(
            {
                "id": f"r{len(out) + 1}",
                "type": kind,
                "from_name": "label",
                "to_name": "image",
                "original_width": item.width,
                "original_height": item.height,
                "image_rotation": 0,
                "value": value,
            }
        )

    for a in item.annotations:
        label = data.class_names[a.cls]
        if data.task == "classify":
            add("choices", {}, label)
        elif a.polygons:
            for poly in a.polygons:
                points = [[poly[k] * 100, poly[k + 1] * 100] for k in range(0, len(poly) - 1, 2)]
                add("polygonlabels", {"points": points, "closed": True}, label)
        else:
            x0, y0, _, _ = a.xyxy
            box = {"x": x0 * 100, "y": y0 * 100, "width": a.w * 100, "height": a.h * 100}
            add("rectanglelabels", {**box, "rotation": 0}, label)
    return out


FORMAT = DatasetFormat(
    key="labelstudio",
    title="Label Studio JSON",
    detect=detect,
    read=read,
    write=write,
    capabilities=FormatCapabilities(
        tasks=frozenset({"detect", "segment", "classify"}), polygons=True, unlabelled=True
    ),
)
