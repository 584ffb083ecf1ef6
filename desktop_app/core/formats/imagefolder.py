"""Image classification folders: one folder per class, optionally inside split folders.

Accepted layouts (the torchvision ``ImageFolder`` and Ultralytics classification layouts)::

    <class>/*.jpg                          (flat; Outpost splits it)
    {train,val,test}/<class>/*.jpg         (``valid``/``validation`` too; the split is kept)

Class names are the folder names, sorted (class ids in that order); a class folder may be
empty. Images may sit in sub-folders of a class folder; an image's stored name is its path
inside the class folder, so names must be unique across classes and splits. Each image gets
one whole-image annotation of its folder's class (task ``classify``).

The same reader serves ``--format yolo`` on this layout (:mod:`desktop_app.core.formats.yolo`),
where a ``data.yaml`` ``names:`` list, when present, gives the class order instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from desktop_app.core.dataset_records import (
    SPLIT_NAMES,
    Annotation,
    CopyImage,
    ExportDataset,
    Problems,
    Progress,
    ScannedDataset,
    SourceImage,
    inspect_images,
    is_image_name,
)
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities

EXPECTED = "expected <class>/*.jpg or {train,val,test}/<class>/*.jpg"
_OTHER_LAYOUTS = ("images", "labels", "Annotations", "JPEGImages")


def detect(path: Path) -> bool:
    """True for a folder of class folders (or split folders of class folders) with images."""
    return path.is_dir() and looks_like_class_folders(path)


def looks_like_class_folders(root: Path) -> bool:
    """A cheap look at names: split or class folders holding images, nothing else at the top."""
    if any((root / name).exists() for name in _OTHER_LAYOUTS):
        return False
    children = _visible(root)
    if any(
        p.is_file() and (is_image_name(p.name) or p.suffix.lower() in (".json", ".xml"))
        for p in children
    ):
        return False
    split_dirs = [p for p in children if p.is_dir() and p.name.lower() in SPLIT_NAMES]
    for top in split_dirs or [root]:
        members = _visible(top)
        if any(p.is_file() and is_image_name(p.name) for p in members):
            return False
        if any(p.is_dir() and _holds_image(p) for p in members):
            return True
    return False


def read(
    path: Path, progress: Progress | None = None, problems: Problems | None = None
) -> ScannedDataset:
    """Validate a class-folder dataset and its images (class names sorted)."""
    return scan_class_folders(path, "imagefolder", progress, problems)


def scan_class_folders(
    path: Path,
    fmt: str,
    progress: Progress | None = None,
    problems: Problems | None = None,
    class_names: tuple[str, ...] | None = None,
) -> ScannedDataset:
    """Read ``<class>/`` or ``<split>/<class>/`` folders as a classification dataset.

    Args:
        path: The dataset folder.
        fmt: The format key recorded in the result ("imagefolder" or "yolo").
        progress: Called as ``progress("validate", done, total)`` while images are decoded.
        problems: Lenient collector (bad images are listed and skipped); None is strict.
        class_names: The class order when the source states one (every class folder must be
            in it); None sorts the folder names.

    Raises:
        DatasetFormatError: not a class-folder dataset, or (strict) the first problem.
    """
    report = problems if problems is not None else Problems()
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetFormatError(
            f"not a classification dataset: {root} is not a folder ({EXPECTED}); check the path"
        )
    root = root.resolve()
    tops = _split_folders(root)
    folders: list[tuple[Path, str | None, Path]] = []  # (class folder, split, split folder)
    for top, split in tops:
        for p in _visible(top):
            if p.is_dir():
                folders.append((p, split, top))
            elif is_image_name(p.name):
                report.add(
                    f"{p} is not inside a class folder; move it into {top}/<class>/ or remove it"
                )
    found = sorted({p.name for p, _, _ in folders})
    if class_names is None:
        class_names = tuple(found)
    else:
        extra = [n for n in found if n not in class_names]
        if extra:
            raise DatasetFormatError(
                f"{root}: class folder {extra[0]!r} is not among the class names of its data.yaml or classes.txt; add the name or remove the folder"
            )
    if not class_names:
        raise DatasetFormatError(
            f"not a classification dataset: {root} has no class folders ({EXPECTED})"
        )
    class_of = {n: i for i, n in enumerate(class_names)}
    sources: list[SourceImage] = []
    seen: dict[str, Path] = {}
    for folder, split, _ in folders:
        for image in _image_files(folder):
            name = image.relative_to(folder).as_posix()
            if name in seen:
                report.add(
                    f"{image} and {seen[name]} have the same name inside their class folders; rename one"
                )
                continue
            seen[name] = image
            ann = Annotation.whole_image(class_of[folder.name])
            sources.append(SourceImage(name, image, split, (ann,)))
    if not sources:
        raise DatasetFormatError(
            f"not a classification dataset: the class folders of {root} hold no images (.jpg, .png, ...); add images"
        )
    has_split = any(split is not None for _, split in tops)
    return inspect_images(
        root, fmt, class_names, sources, has_split, progress, problems=report, task="classify"
    )


def _split_folders(root: Path) -> list[tuple[Path, str | None]]:
    children = _visible(root)
    splits = [p for p in children if p.is_dir() and p.name.lower() in SPLIT_NAMES]
    if not splits:
        return [(root, None)]
    stray = [p for p in children if p.is_dir() and p not in splits]
    if stray:
        raise DatasetFormatError(
            f"{stray[0]} sits beside {splits[0].name}/; move its class folders into a split folder (train, val, test)"
        )
    return [(p, SPLIT_NAMES[p.name.lower()]) for p in splits]


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _holds_image(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(e.is_file() and is_image_name(e.name) for e in it)


def _image_files(folder: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(
            Path(dirpath) / f
            for f in sorted(filenames)
            if is_image_name(f) and not f.startswith(".")
        )
    return sorted(out)


# ---- writing ---------------------------------------------------------------------------


def write(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """``{split}/<class>/<file_name>``; an image without a class cannot be placed and is left out."""
    write_class_folders(data, out, copy_image)


def write_class_folders(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """One folder per split and class (empty ones too, so every class survives a re-read).

    Raises:
        DatasetFormatError: a class name cannot be a folder name.
    """
    for name in data.class_names:
        if name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise DatasetFormatError(
                f"class name {name!r} cannot be a folder name in a classification layout; rename the class"
            )
    for split in data.splits:
        for name in data.class_names:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    for item in data.items:
        if item.annotations and item.label_status != "unlabelled":
            cls = data.class_names[item.annotations[0].cls]
            copy_image(item.sha256, out / item.split / cls / item.file_name)


FORMAT = DatasetFormat(
    key="imagefolder",
    title="Image folders per class (classification)",
    detect=detect,
    read=read,
    write=write,
    capabilities=FormatCapabilities(tasks=frozenset({"classify"})),
)
