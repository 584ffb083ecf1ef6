"""The in-memory records every dataset format reader produces and every writer consumes.

A reader (YOLO, COCO, VOC, ...) turns the files on disk into :class:`SourceImage` records
(image path, split, annotations normalised to 0..1); :func:`inspect_images` then reads every
image once, checks that it is whole and hashes it, checks its declared size, and returns a
:class:`ScannedDataset` that one writer (:mod:`desktop_app.core.dataset_import`) stores.
Exports go the other way: :class:`ExportDataset` holds a stored version, and each format's
writer turns it into files.

Annotations are stored in ``DatasetItem.boxes`` as ``[cls, cx, cy, w, h]`` (normalised),
optionally followed by one dict of extras: ``{"polygons": [[x, y, ...], ...],
"keypoints": [x, y, v, ...], "rle": "<COCO compressed counts>", "iscrowd": true,
"difficult": true, "truncated": true, "score": 0.87}`` (polygon and keypoint coordinates
normalised too; ``v`` is the COCO visibility 0, 1 or 2; ``rle`` is a mask at the image's
size; ``score`` marks a model's proposal awaiting review).

Tasks: ``detect`` (boxes), ``segment`` (boxes with polygons), ``pose`` (boxes with
keypoints), ``classify`` (one whole-image annotation ``[cls, 0.5, 0.5, 1, 1]`` per image).

Readers report problems through a :class:`Problems` collector: in strict mode (the
default) the first problem raises :class:`DatasetFormatError`; in lenient mode each is
recorded, the offending annotation or image is skipped, and the list ends up in
``ScannedDataset.problems`` (and, after an import, in the version's QA report).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.core import image_prefetch
from desktop_app.core.errors import DatasetFormatError, InvalidArgumentError
from desktop_app.core.image_check import ImageStructureError, check_structure
from desktop_app.core.image_prefetch import ImagePrefetch
from desktop_app.core.pacing import Pace, paced_map
from runtimes.errors import ImageDecodeError
from runtimes.fileio import read_open_file, sha256_bytes
from runtimes.image_header import image_header_size
from runtimes.preprocess import decode_image

TASKS = ("detect", "segment", "pose", "classify")
LABEL_STATUSES = ("labelled", "unlabelled", "needs_review")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
Progress = Callable[[str, int, int], None]  # stage, done, total
CopyImage = Callable[[str, Path], None]  # sha256, destination
ImageSink = Callable[[str, bytes], None]  # sha256, content: an image read and found valid
MAX_IMAGE_PIXELS_ENV = "OUTPOST_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # larger images are refused before decoding


SNAP = 1e10  # normalised box centres and sizes are kept to 10 decimal places


def snap(value: float) -> float:
    """``value`` rounded to 10 decimal places (a 1e-10 share of the image: 1e-5 pixel of a
    100,000-pixel side), as ``round(value * 1e10) / 1e10`` (halves to even), ``-0.0`` as 0.

    A box computed from pixel coordinates carries float noise (``123 / 160 - 68 / 160`` is
    ``0.34375000000000006``); snapped, the same box read back from any format that stores
    pixels (COCO, CVAT, Label Studio, Create ML) is the same number, so an export and
    re-import keeps the content hash. The vectorised COCO path does the same operations in
    numpy (``np.rint(v * 1e10) / 1e10``), with the same result bit for bit.
    """
    return round(value * SNAP) / SNAP


def exact_text(value: float) -> str:
    """``value`` as text that reads back as the same float: fixed-point with up to 10
    decimals when that is exact (every value :func:`snap` keeps, and most pixel values),
    else the shortest exact form (``repr``). For writers of text formats (YOLO, CVAT)."""
    text = f"{value:.10f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return text if float(text) == value else repr(float(value))


_BOX_FIELDS = 5  # cls, cx, cy, w, h: what Annotation.plain stores of a box without extras


@dataclass(frozen=True)
class Annotation:
    """One labelled object: a box (normalised centre and size) and what else the source said.

    Args:
        cls: Class id (0-based, contiguous).
        cx: Box centre x, 0..1 of the image width.
        cy: Box centre y, 0..1 of the image height.
        w: Box width, 0..1.
        h: Box height, 0..1.
        polygons: Outline(s) as flat ``(x0, y0, x1, y1, ...)`` tuples, normalised.
        keypoints: Flat ``(x, y, v, ...)`` triplets, x and y normalised, v the COCO
            visibility (0 not labelled, 1 occluded, 2 visible).
        rle: A COCO compressed RLE mask at the image's size (crowd regions), or None.
        iscrowd: COCO ``iscrowd=1`` (a crowd region).
        difficult: Pascal VOC ``difficult``.
        truncated: Pascal VOC ``truncated``.
        score: A model's confidence when the annotation is a pre-labelling proposal.
    """

    cls: int
    cx: float
    cy: float
    w: float
    h: float
    polygons: tuple[tuple[float, ...], ...] = ()
    keypoints: tuple[float, ...] = ()
    rle: str | None = None
    iscrowd: bool = False
    difficult: bool = False
    truncated: bool = False
    score: float | None = None

    @classmethod
    def plain(
        cls,
        class_id: int,
        cx: float,
        cy: float,
        w: float,
        h: float,
        polygons: tuple[tuple[float, ...], ...] = (),
        iscrowd: bool = False,
    ) -> Annotation:
        """A box with at most outlines and a crowd flag: equal to ``Annotation(class_id, cx,
        cy, w, h, polygons=polygons, iscrowd=iscrowd)``.

        Built without the frozen dataclass's per-field ``__setattr__`` (about 6x cheaper),
        for readers that make 100,000 boxes at once; the caller passes checked values. The
        fields left at their defaults are not stored in the instance: they read the class's
        defaults (the dataclass keeps each plain default as a class attribute), which saves
        a third of the time and of the memory of a box.
        """
        ann = object.__new__(cls)
        fields = ann.__dict__  # filled in place: a frozen dataclass refuses setattr only
        fields["cls"] = class_id
        fields["cx"] = cx
        fields["cy"] = cy
        fields["w"] = w
        fields["h"] = h
        if polygons:
            fields["polygons"] = polygons
        if iscrowd:
            fields["iscrowd"] = True
        return ann

    @classmethod
    def from_xyxy(
        cls, class_id: int, x0: float, y0: float, x1: float, y1: float, **extra: Any
    ) -> Annotation:
        """From normalised corners; the centre and size kept to :data:`SNAP` (see :func:`snap`)."""
        return cls(
            class_id,
            snap((x0 + x1) / 2),
            snap((y0 + y1) / 2),
            snap(x1 - x0),
            snap(y1 - y0),
            **extra,
        )

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """Normalised corners ``(x0, y0, x1, y1)``."""
        return (
            self.cx - self.w / 2,
            self.cy - self.h / 2,
            self.cx + self.w / 2,
            self.cy + self.h / 2,
        )

    def to_json(self) -> list[Any]:
        """The stored form: ``[cls, cx, cy, w, h]`` plus a dict of extras when there are any."""
        fields = self.__dict__
        row: list[Any] = [fields["cls"], fields["cx"], fields["cy"], fields["w"], fields["h"]]
        if len(fields) == _BOX_FIELDS:  # made by plain() with every other field at its default
            return row
        if not (
            self.keypoints
            or self.iscrowd
            or self.difficult
            or self.truncated
            or self.rle is not None
            or self.score is not None
        ):  # a plain box (most of them), or a box and its outlines
            if self.polygons:
                row.append({"polygons": [list(p) for p in self.polygons]})
            return row
        extra: dict[str, Any] = {}
        if self.polygons:
            extra["polygons"] = [list(p) for p in self.polygons]
        if self.keypoints:
            extra["keypoints"] = list(self.keypoints)
        if self.rle is not None:
            extra["rle"] = self.rle
        for key in ("iscrowd", "difficult", "truncated"):
            if getattr(self, key):
                extra[key] = True
        if self.score is not None:
            extra["score"] = self.score
        if extra:
            row.append(extra)
        return row

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> Annotation:
        """Inverse of :meth:`to_json` (also reads the plain 5-number form)."""
        if len(row) == 5:  # a plain box, most rows: no extras to read
            return cls.plain(
                int(row[0]), float(row[1]), float(row[2]), float(row[3]), float(row[4])
            )
        extra: dict[str, Any] = row[5] if len(row) > 5 and isinstance(row[5], dict) else {}
        return cls(
            int(row[0]),
            float(row[1]),
            float(row[2]),
            float(row[3]),
            float(row[4]),
            polygons=tuple(tuple(float(v) for v in p) for p in extra.get("polygons", ())),
            keypoints=tuple(float(v) for v in extra.get("keypoints", ())),
            rle=extra.get("rle"),
            iscrowd=bool(extra.get("iscrowd", False)),
            difficult=bool(extra.get("difficult", False)),
            truncated=bool(extra.get("truncated", False)),
            score=float(extra["score"]) if extra.get("score") is not None else None,
        )

    @classmethod
    def whole_image(cls, class_id: int) -> Annotation:
        """The annotation a classification image carries: its class over the whole image."""
        return cls(class_id, 0.5, 0.5, 1.0, 1.0)


class Problems:
    """Where readers report what is wrong with a source.

    Strict (the default): :meth:`add` raises :class:`DatasetFormatError` at once, so an
    import stops at the first problem. Lenient: :meth:`add` records the message and returns,
    and the reader skips the annotation or image concerned.
    """

    def __init__(self, lenient: bool = False) -> None:
        self.lenient = lenient
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        """Report one problem (a one-line message naming the file and what to do).

        Raises:
            DatasetFormatError: in strict mode, always.
        """
        if not self.lenient:
            raise DatasetFormatError(message)
        self.messages.append(message)

    def add_error(self, exc: DatasetFormatError) -> None:
        """Report a problem that was raised as an exception (re-raised in strict mode)."""
        if not self.lenient:
            raise exc
        self.messages.append(str(exc))


@dataclass(frozen=True)
class SourceImage:
    """One image as a reader found it, before its file is decoded."""

    file_name: str  # the name it is stored under, "/" separators, unique in the dataset
    path: Path
    split: str | None  # "train" | "val" | "test" when the source says, else None
    annotations: tuple[Annotation, ...]
    declared_size: tuple[int, int] | None = None  # (width, height) the annotation file states
    origin: Path | None = None  # the annotation file that declared the size (for messages)
    labelled: bool = True  # False: the source has no labels for this image (not background)


@dataclass(frozen=True)
class ScannedImage:
    """One validated image of the source: where it is, what it holds, its annotations."""

    file_name: str
    path: Path
    source_split: str | None
    sha256: str
    size: int
    width: int
    height: int
    boxes: tuple[Annotation, ...]
    labelled: bool = True


@dataclass(frozen=True)
class ScannedDataset:
    """A dataset on disk that passed every check (or, lenient, what of it was valid)."""

    root: Path
    format: str
    class_names: tuple[str, ...]
    images: tuple[ScannedImage, ...]
    has_source_split: bool
    task: str = "detect"
    problems: tuple[str, ...] = ()
    keypoint_shape: tuple[int, int] | None = None  # pose: (keypoints per object, 2 or 3)


@dataclass(frozen=True)
class ExportItem:
    """One stored image of a version, ready for a writer."""

    file_name: str
    sha256: str
    width: int
    height: int
    split: str
    annotations: tuple[Annotation, ...]
    label_status: str = "labelled"


@dataclass(frozen=True)
class ExportDataset:
    """A stored dataset version, ready for a writer."""

    name: str
    version: str
    content_hash: str
    class_names: tuple[str, ...]
    items: tuple[ExportItem, ...]
    task: str = "detect"
    keypoint_shape: tuple[int, int] | None = None

    @property
    def splits(self) -> list[str]:
        """The splits that hold images, in train, val, test order (train and val always)."""
        present = {item.split for item in self.items} | {"train", "val"}
        return [s for s in ("train", "val", "test") if s in present]


# ---- paths -----------------------------------------------------------------------------


def is_image_name(name: str) -> bool:
    """True when the file name has an image suffix (.jpg, .png, ...)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def split_of(name: str) -> str | None:
    """The split a folder or file-name part names (``train2017`` → train), else None."""
    low = name.lower()
    for word in sorted(SPLIT_NAMES, key=len, reverse=True):
        if low.startswith(word):
            return SPLIT_NAMES[word]
    return None


def safe_relative(name: str, where: str) -> str:
    """Check a file name taken from an annotation file and return it with "/" separators.

    Raises:
        DatasetFormatError: the name is empty, absolute, or climbs out with ``..``.
    """
    clean = name.replace("\\", "/").strip()
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if not parts or clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or ".." in parts:
        raise DatasetFormatError(
            f"{where}: file name {name!r} escapes the dataset folder; use a path inside it"
        )
    return "/".join(parts)


def check_inside(
    root: Path,
    path: Path,
    where: str,
    parents: dict[str, str] | None = None,
    *,
    not_a_link: bool = False,
) -> None:
    """Refuse a file that is (or links to) something outside ``root``.

    Args:
        root: The dataset folder (resolved).
        path: The file.
        where: What to name in the message.
        parents: A cache of resolved folders (by the folder's path as given), for callers
            that check many files of few folders (a link itself is always resolved in full).
            Paths are compared as strings here: 10,000 images cost no ``pathlib`` objects.
        not_a_link: The caller knows ``path`` is a plain file (the import's helper process
            opened it without following links): with ``parents``, no ``lstat`` is made.

    Raises:
        DatasetFormatError: the resolved path is outside the dataset folder.
    """
    p = os.fspath(path)
    if parents is None or (not not_a_link and os.path.islink(p)):
        resolved = os.fspath(Path(p).resolve())
    else:
        head, tail = os.path.split(p)
        resolved = os.path.join(_resolved_folder(head, parents), tail)
    if not _within(root, resolved):
        shown = Path(resolved)
        kind = "is a link to" if path.is_symlink() or shown != path.absolute() else "is"
        raise DatasetFormatError(
            f"{where}: {path} {kind} {shown}, outside the dataset folder {root}; copy the file in"
        )


def _resolved_folder(head: str, parents: dict[str, str]) -> str:
    """Folder ``head`` resolved (links followed), once per folder (``parents`` caches it)."""
    folder = parents.get(head)
    if folder is None:
        folder = parents[head] = os.fspath(Path(head).resolve())
    return folder


def _within(root: Path, resolved: str) -> bool:
    """Whether the resolved path ``resolved`` is ``root`` or lies under it."""
    base = os.path.normcase(os.fspath(root))
    inside = os.path.normcase(resolved)
    return inside == base or inside.startswith(base.rstrip(os.sep) + os.sep)


def finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


# ---- images ----------------------------------------------------------------------------

_IMAGE_SINK: ContextVar[ImageSink | None] = ContextVar("outpost_image_sink", default=None)
_PREFETCH: ContextVar[ImagePrefetch | None] = ContextVar("outpost_prefetch", default=None)


@contextlib.contextmanager
def prefetching(prefetch: ImagePrefetch) -> Iterator[None]:
    """Within this block, images the readers announce (:func:`announce_images`) are read by
    ``prefetch``'s helper process while the annotations are parsed, and :func:`inspect_images`
    takes what it staged (see :mod:`desktop_app.core.image_prefetch`)."""
    token = _PREFETCH.set(prefetch)
    try:
        yield
    finally:
        _PREFETCH.reset(token)


def expect_images(root: Path, annotation_file: Path) -> bool:
    """A reader is about to parse ``annotation_file`` (the images it names are in the dataset
    folder ``root``): inside :func:`prefetching`, a large one starts the helper process now
    (see :meth:`ImagePrefetch.expect`). True when the helper runs: images announced now are
    read while the file is parsed."""
    prefetch = _PREFETCH.get()
    if prefetch is None:
        return False
    try:
        size = os.stat(annotation_file).st_size
    except OSError:
        return False  # the reader names the problem
    prefetch.expect(root, size)
    return prefetch.running


def announce_images(root: Path, paths: Iterable[Path]) -> None:
    """A reader knows these image files of the dataset folder ``root`` before it parses the
    annotations: inside :func:`prefetching`, a helper process starts reading them."""
    prefetch = _PREFETCH.get()
    if prefetch is not None:
        prefetch.announce(root, paths)


class ImageRuns:
    """Announces a reader's image files a run at a time as it finds them (see
    :func:`announce_images`): the helper starts on the first run, not after the last file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._found: list[Path] = []

    def add(self, path: Path) -> None:
        self._found.append(path)
        if len(self._found) >= image_prefetch.PREFETCH_MIN_IMAGES:
            self.flush()

    def extend(self, paths: Sequence[Path]) -> None:
        """:meth:`add` each of ``paths``, a run at a time."""
        self.flush()
        step = image_prefetch.PREFETCH_MIN_IMAGES
        for start in range(0, len(paths), step):
            announce_images(self.root, paths[start : start + step])

    def flush(self) -> None:
        """Announce what was found since the last run."""
        if self._found:
            announce_images(self.root, self._found)
            self._found = []


@contextlib.contextmanager
def handing_images_to(sink: ImageSink) -> Iterator[None]:
    """Within this block, :func:`inspect_images` hands each valid image it reads to ``sink``.

    ``sink(sha256, content)`` is called once per valid image, possibly from worker threads
    and before the image's later checks (a declared size) pass, so the sink keeps what it
    gets provisionally: an import stages each image into the blob store from the bytes it
    has just checked, instead of reading every file a second time, and stores only the
    images the finished read accepted.
    """
    token = _IMAGE_SINK.set(sink)
    try:
        yield
    finally:
        _IMAGE_SINK.reset(token)


def inspect_images(
    root: Path,
    fmt: str,
    class_names: Sequence[str],
    sources: Sequence[SourceImage],
    has_source_split: bool,
    progress: Progress | None = None,
    workers: int | None = None,
    *,
    problems: Problems | None = None,
    task: str = "detect",
    keypoint_shape: tuple[int, int] | None = None,
) -> ScannedDataset:
    """Read every image once, check and hash it, in a stable order.

    Also checks that each image stays inside ``root`` (links included), that file names are
    unique and valid UTF-8, that the image is not a decompression bomb (its header's width x
    height is read first and refused above :func:`max_image_pixels`), that it is whole (a
    PNG's chunk checksums, a JPEG's segments and end marker; other formats are decoded), and
    that a size the annotation file declares matches the file.

    The images are read in the calling thread while that goes fast (a local disk: threads
    would only contend for the GIL), and in ``workers`` threads once files take longer
    (:mod:`desktop_app.core.pacing`: a network share, a slow disk, large images whose
    hashing and decoding release the GIL). Inside :func:`handing_images_to`, each valid
    image's content is also handed to that sink as it is read.

    Args:
        root: The dataset folder (resolved); every image must be inside it.
        fmt: The format key the records came from.
        class_names: The class names, in class-id order.
        sources: The images the reader found, with their annotations.
        has_source_split: True when the source assigns splits.
        progress: Called as ``progress("validate", done, total)``.
        workers: Threads that read images, used from the first image (default: the
            calling thread, then up to 8 threads once files go slowly).
        problems: Where problems go; None (strict) raises on the first one. Lenient: each
            problem is recorded and its image skipped; the reader's earlier messages are kept.
        task: The dataset's task (``detect``, ``segment``, ``pose`` or ``classify``).
        keypoint_shape: Pose datasets: (keypoints per object, 2 or 3).

    Returns:
        The valid images; ``problems`` holds every message of the collector.

    Raises:
        DatasetFormatError: strict mode, on the first problem, naming the file and what is wrong.
        InvalidArgumentError: ``OUTPOST_MAX_IMAGE_PIXELS`` is set to something not a number.
    """
    report = problems if problems is not None else Problems()
    limit = max_image_pixels()
    sink = _IMAGE_SINK.get()
    seen: dict[str, Path] = {}
    parents: dict[str, str] = {}
    accepted: list[SourceImage] = []
    prefetch = _PREFETCH.get()
    opened = prefetch.opened() if prefetch is not None else frozenset()
    at_once = _all_sources_ok(root, sources, opened, parents)  # the common case
    if at_once:
        accepted = list(sources)
    for src in () if at_once else sources:
        try:
            _check_source(root, src, seen, parents, opened)
        except DatasetFormatError as exc:
            report.add_error(exc)
            continue
        seen[src.file_name] = src.path
        accepted.append(src)
    total = len(accepted)
    out: list[ScannedImage] = []
    count = workers or min(8, os.cpu_count() or 1)
    # runs of images per task: thousands of small images cost a few hundred hand-offs
    size = max(1, min(64, -(-total // (4 * count))))
    runs = [accepted[k : k + size] for k in range(0, total, size)]
    if prefetch is not None:
        # what the reader did not announce as it went (a format that knows its images only
        # now, or an image folder with nothing else to parse): the helper reads beside this
        # thread, each taking runs from its own end of the list
        prefetch.announce(root, [src.path for src in accepted])
        prefetch.finish()  # every image is known now
        if not prefetch.running:
            prefetch = None
    pace = Pace(adaptive=workers is None and count > 1)

    def inspect_one(src: SourceImage) -> tuple[str, int, int, int] | DatasetFormatError:
        return _inspect_or_error(src, limit, sink)

    def inspect_run(run: list[SourceImage]) -> list[tuple[str, int, int, int] | DatasetFormatError]:
        return [_inspect_or_error(s, limit, sink) for s in run]

    pool = ThreadPoolExecutor(max_workers=count)
    try:
        results = (  # the helper reads (and paces itself); this thread reads the rest
            prefetch.results(accepted, inspect_one)
            if prefetch is not None
            else paced_map(inspect_run, runs, pool, pace)
        )
        for i, (src, info) in enumerate(zip(accepted, results, strict=True), start=1):
            if progress is not None:
                progress("validate", i, total)
            if isinstance(info, DatasetFormatError):
                report.add_error(info)
                continue
            sha, size, w, h = info
            if src.declared_size is not None and src.declared_size != (w, h):
                dw, dh = src.declared_size
                report.add(
                    f"{src.origin or src.path}: declares {src.file_name} as {dw}x{dh} but the image is {w}x{h}; fix the size"
                )
                continue
            out.append(
                ScannedImage(
                    src.file_name,
                    src.path,
                    src.split,
                    sha,
                    size,
                    w,
                    h,
                    src.annotations,
                    labelled=src.labelled,
                )
            )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return ScannedDataset(
        root,
        fmt,
        tuple(class_names),
        tuple(out),
        has_source_split,
        task=task,
        problems=tuple(report.messages),
        keypoint_shape=keypoint_shape,
    )


def _all_sources_ok(
    root: Path,
    sources: Sequence[SourceImage],
    opened: Collection[str],
    parents: dict[str, str],
) -> bool:
    """True when every one of ``sources`` passes :func:`_check_source`, checked at once: the
    names unique and valid UTF-8, no file a link (the helper process opened it as a plain
    file, or ``lstat`` says so), each in a folder that resolves inside ``root`` (each folder
    resolved once). False when any might not: the caller checks them one by one and names
    each."""
    if not sources:
        return False
    names = [src.file_name for src in sources]
    if len(set(names)) != len(names):
        return False
    try:
        "\0".join(names).encode("utf-8")
    except UnicodeEncodeError:
        return False
    paths = [os.fspath(src.path) for src in sources]
    if any(p not in opened and os.path.islink(p) for p in paths):
        return False
    return all(
        _within(root, _resolved_folder(head, parents))
        for head in {os.path.dirname(p) for p in paths}
    )


def _check_source(
    root: Path,
    src: SourceImage,
    seen: dict[str, Path],
    parents: dict[str, str],
    opened: Collection[str] = frozenset(),
) -> None:
    """The checks that need no file content: a UTF-8 name, inside ``root``, not a duplicate.

    ``opened``: paths the import's helper process opened as plain files (no link to test).
    """
    try:
        src.file_name.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetFormatError(
            f"{os.fsencode(src.path).decode('utf-8', 'backslashreplace')}: the file name is not valid UTF-8; rename the file"
        ) from None
    where = str(src.origin or src.path)
    check_inside(root, src.path, where, parents, not_a_link=os.fspath(src.path) in opened)
    if src.file_name in seen:
        raise DatasetFormatError(
            f"{src.path} and {seen[src.file_name]} are both named {src.file_name!r}; rename one"
        )


def max_image_pixels() -> int:
    """The largest image (width x height) an import decodes: ``OUTPOST_MAX_IMAGE_PIXELS``,
    else :data:`DEFAULT_MAX_IMAGE_PIXELS` (100 megapixels).

    Raises:
        InvalidArgumentError: the variable is set but is not a positive whole number.
    """
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise InvalidArgumentError(
            f"{MAX_IMAGE_PIXELS_ENV}={raw!r} is not a positive whole number of pixels; unset it or use e.g. 100000000"
        )
    return value


def _inspect_or_error(
    src: SourceImage, max_pixels: int, sink: ImageSink | None
) -> tuple[str, int, int, int] | DatasetFormatError:
    try:
        return _inspect_image(src, max_pixels=max_pixels, sink=sink)
    except DatasetFormatError as exc:
        return exc


def _inspect_image(
    src: SourceImage, *, max_pixels: int | None = None, sink: ImageSink | None = None
) -> tuple[str, int, int, int]:
    """Read one image once: check it, hash it, hand it to ``sink``; ``(sha256, size, w, h)``.

    A PNG or JPEG is checked by its structure (:func:`check_structure`: every PNG chunk's
    CRC, a JPEG's segments and end marker); any other file is decoded. ``outpost dataset qa
    --deep`` decodes every stored image (:mod:`desktop_app.core.dataset_qa`).
    """
    p = src.path
    try:
        data = _read_image_file(p)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        where = f"{src.origin}: " if src.origin else ""
        raise DatasetFormatError(
            f"{where}image {src.file_name} is missing (expected {p}); add the file or remove its entry"
        ) from None
    except OSError as exc:
        raise DatasetFormatError(
            f"{p} cannot be read ({exc.strerror}); check its permissions"
        ) from None
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        size = check_structure(data)  # decodes nothing: the pixel limit is checked after it
    except ImageStructureError as exc:
        if exc.truncated:
            raise DatasetFormatError(
                f"{p} is a truncated {exc.kind} ({exc.reason}); re-export or remove it"
            ) from None
        raise DatasetFormatError(
            f"{p} is not a readable image (a damaged {exc.kind}: {exc.reason}); remove or replace it"
        ) from None
    if size is not None:
        _refuse_bomb(p, size, limit)
    else:  # not a PNG or JPEG this check vouches for: decode it, when its header allows
        _check_pixels(p, data, limit)
        try:
            img = decode_image(data, max_pixels=limit)
        except ImageDecodeError as exc:
            raise DatasetFormatError(
                f"{p} is not a readable image ({exc}); remove or replace it"
            ) from None
        size = (int(img.shape[1]), int(img.shape[0]))
    sha = sha256_bytes(data)
    if sink is not None:
        sink(sha, data)
    return sha, len(data), size[0], size[1]


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a named pipe: no wait for a writer that never comes
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_NOT_FILES = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"))


def _read_image_file(p: Path) -> bytes:
    """The bytes of the image file ``p``: one ``open``, ``fstat`` and ``read`` (see
    :func:`runtimes.fileio.read_open_file`).

    Raises:
        IsADirectoryError: ``p`` is a folder.
        DatasetFormatError: ``p`` is a named pipe, a socket or a device.
        OSError: it cannot be opened or read.
    """
    fd = os.open(p, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(p))
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _NOT_FILES if test(st.st_mode)), "device")
            raise DatasetFormatError(
                f"{p} is a {kind}, not an image file; replace it with the image or remove its entry"
            )
        return read_open_file(fd, st.st_size)
    finally:
        os.close(fd)


def _check_pixels(p: Path, data: bytes, max_pixels: int) -> None:
    """Refuse an image whose header claims more than ``max_pixels``, before decoding it."""
    size = image_header_size(data)
    if size is None:
        return  # not a header we know: the decoder's own checks apply
    _refuse_bomb(p, size, max_pixels)


def _refuse_bomb(p: Path, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise DatasetFormatError(
            f"{p} is {w}×{h} pixels, over the {max_pixels / 1e6:g}-megapixel limit (a decompression bomb?); "
            f"shrink the image, or raise the limit with {MAX_IMAGE_PIXELS_ENV}"
        )


def snapped(values: np.ndarray) -> list[float]:
    """:func:`snap` of every value (the same float operations, so the same numbers)."""
    out: list[float] = (np.rint(values * SNAP) / SNAP + 0.0).tolist()
    return out


def boxes_from_pixels(
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
) -> tuple[np.ndarray, list[float], list[float], list[float], list[float]]:
    """:func:`box_from_pixels` and :meth:`Annotation.from_xyxy` for many boxes at once (pixel
    corners and image sizes as float64 arrays), with the same float operations in the same
    order, so the same numbers: ``(ok, cx, cy, w, h)``, ``ok`` False where
    :func:`box_from_pixels` would refuse the box (its caller then names the problem)."""
    w, h = widths, heights
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (
            np.isfinite(x0)
            & np.isfinite(y0)
            & np.isfinite(x1)
            & np.isfinite(y1)
            & (x1 > x0)
            & (y1 > y0)
            & (x0 >= -1.0)
            & (y0 >= -1.0)
            & (x1 <= w + 1.0)
            & (y1 <= h + 1.0)
        )
        # box_from_pixels: clip to the image, normalise; Annotation.from_xyxy: centre, size
        nx0, nx1 = np.maximum(x0, 0.0) / w, np.minimum(x1, w) / w
        ny0, ny1 = np.maximum(y0, 0.0) / h, np.minimum(y1, h) / h
        cx, cy = snapped((nx0 + nx1) / 2), snapped((ny0 + ny1) / 2)
        bw, bh = snapped(nx1 - nx0), snapped(ny1 - ny0)
    return ok, cx, cy, bw, bh


def box_from_pixels(
    corners: Sequence[float], width: int, height: int, where: str, slack: float = 1.0
) -> tuple[float, float, float, float]:
    """Normalised ``(x0, y0, x1, y1)`` from pixel corners, checked against the image size.

    A box may stick out of the image by up to ``slack`` pixels (rounding in labelling tools);
    it is clipped to the image. Anything further out is an error.

    Raises:
        DatasetFormatError: the box is not finite, has no area, or lies outside the image.
    """
    x0, y0, x1, y1 = (float(v) for v in corners)
    shown = f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}]"
    if not finite((x0, y0, x1, y1)):
        raise DatasetFormatError(f"{where}: box {shown} is not finite; fix the box")
    if x1 <= x0 or y1 <= y0:
        raise DatasetFormatError(
            f"{where}: box {shown} has zero or negative width or height; fix or remove it"
        )
    if x0 < -slack or y0 < -slack or x1 > width + slack or y1 > height + slack:
        raise DatasetFormatError(
            f"{where}: box {shown} lies outside the {width}x{height} image; fix the box"
        )
    x0, x1 = max(x0, 0.0), min(x1, float(width))
    y0, y1 = max(y0, 0.0), min(y1, float(height))
    return x0 / width, y0 / height, x1 / width, y1 / height
