"""Pascal VOC XML: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``.

Boxes are 1-based pixel coordinates with inclusive ends (``xmin=1, xmax=W`` covers the
whole width), so a box spans ``[xmin - 1, xmax)`` in 0-based pixels; a box that sticks out
by up to one pixel (0-based tools) is clipped. ``difficult`` and ``truncated`` are kept.
Class order comes from ``labels.txt`` (or ``classes.txt``) when present, else the sorted
names found. Images in ``JPEGImages/`` without an XML file are background images. Entity
declarations (billion laughs) and external references are refused
(:mod:`desktop_app.core.formats.xml_input`). Lenient reads skip a bad object or XML file (and its image) and list it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
from defusedxml import DefusedXmlException

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
    boxes_from_pixels,
    inspect_images,
    is_image_name,
    safe_relative,
)
from desktop_app.core.dataset_yolo import names_from_txt
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities
from desktop_app.core.formats.xml_input import parse_xml_file
from runtimes.fileio import atomic_write_text

ANNOTATIONS, IMAGES, SETS = "Annotations", "JPEGImages", "ImageSets/Main"
NAME_FILES = ("labels.txt", "classes.txt")
SPLITS = ("train", "val", "test")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / ANNOTATIONS).is_dir()


def read(
    path: Path, progress: Progress | None = None, problems: Problems | None = None
) -> ScannedDataset:
    """Validate a VOC folder and its images completely.

    Raises:
        DatasetFormatError: not a VOC dataset, or (strict) on the first problem, naming the
            file and what is wrong.
    """
    report = problems if problems is not None else Problems()
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetFormatError(f"not a VOC dataset: {root} is not a folder; check the path")
    root = root.resolve()
    ann_dir, img_dir = root / ANNOTATIONS, root / IMAGES
    if not ann_dir.is_dir():
        raise DatasetFormatError(
            f"not a VOC dataset: {root} has no {ANNOTATIONS}/ folder (expected Annotations/*.xml and JPEGImages/)"
        )
    parsed: list[_Parsed] = []
    skipped: set[str] = set()  # image stems whose XML was skipped: not background images
    image_runs = ImageRuns(root)  # read by the import's helper while the rest is parsed
    for p in _walk(ann_dir, lambda n: n.lower().endswith(".xml")):
        try:
            parsed.append(_parse(p, img_dir))
        except DatasetFormatError as exc:
            report.add_error(exc)
            skipped.add(p.relative_to(ann_dir).with_suffix("").as_posix())
            continue
        image_runs.add(parsed[-1][2])  # the image it describes
    image_runs.flush()
    names = _class_names(root, parsed)
    class_of = {n: i for i, n in enumerate(names)}
    splits = _read_sets(root)
    sources: list[SourceImage] = []
    labelled: set[Path] = set()
    valid = _all_valid(parsed, class_of)  # the common case: every box checked at once
    for k, (xml_path, file_name, image, size, objects) in enumerate(parsed):
        if valid is not None:
            anns = valid[k]
        else:
            anns = _annotations(xml_path, size, objects, class_of, root, report)
        stem = xml_path.relative_to(ann_dir).with_suffix("").as_posix()
        labelled.add(image)
        sources.append(SourceImage(file_name, image, splits.get(stem), tuple(anns), size, xml_path))
    if img_dir.is_dir():
        for image in _walk(img_dir, is_image_name):
            rel = image.relative_to(img_dir).as_posix()
            if image not in labelled and Path(rel).with_suffix("").as_posix() not in skipped:
                split = splits.get(str(Path(rel).with_suffix("").as_posix()))
                sources.append(SourceImage(rel, image, split, ()))
    if not sources:
        raise DatasetFormatError(f"not a VOC dataset: {ann_dir} holds no .xml files; add them")
    sources.sort(key=lambda s: s.file_name)
    return inspect_images(root, "voc", names, sources, bool(splits), progress, problems=report)


def _annotations(
    xml_path: Path,
    size: tuple[int, int],
    objects: list[_Object],
    class_of: dict[str, int],
    root: Path,
    report: Problems,
) -> list[Annotation]:
    """One file's annotations, object by object: each problem is reported and its object
    skipped."""
    anns = []
    for i, (name, corners, difficult, truncated) in enumerate(objects, start=1):
        at = f"{xml_path}: object {i}"
        if isinstance(corners, DatasetFormatError):
            report.add_error(corners)
            continue
        if name not in class_of:
            report.add(
                f"{at}: class {name!r} is not in {root / NAME_FILES[0]}; add it or fix the name"
            )
            continue
        try:
            x0, y0, x1, y1 = box_from_pixels(corners, size[0], size[1], at)
        except DatasetFormatError as exc:
            report.add_error(exc)
            continue
        anns.append(
            Annotation.from_xyxy(
                class_of[name], x0, y0, x1, y1, difficult=difficult, truncated=truncated
            )
        )
    return anns


def _all_valid(parsed: list[_Parsed], class_of: dict[str, int]) -> list[list[Annotation]] | None:
    """Each file's annotations when every object of every file is valid (a known class, a
    box inside its image), checked and normalised in one pass over all the boxes
    (:func:`boxes_from_pixels`: the same numbers as object by object); None as soon as one
    is not (the caller then names each problem, in order)."""
    classes: list[int] = []
    corners: list[tuple[float, float, float, float]] = []
    sizes: list[tuple[int, int]] = []
    flags: list[tuple[bool, bool]] = []
    for _, _, _, size, objects in parsed:
        for name, box, difficult, truncated in objects:
            if isinstance(box, DatasetFormatError) or name not in class_of:
                return None
            classes.append(class_of[name])
            corners.append(box)
            sizes.append(size)
            flags.append((difficult, truncated))
    cx: list[float] = []
    cy: list[float] = []
    bw: list[float] = []
    bh: list[float] = []
    if corners:
        xyxy = np.array(corners, dtype=np.float64)
        wh = np.array(sizes, dtype=np.float64)
        ok, cx, cy, bw, bh = boxes_from_pixels(
            xyxy[:, 0], xyxy[:, 1], xyxy[:, 2], xyxy[:, 3], wh[:, 0], wh[:, 1]
        )
        if not ok.all():
            return None
    out: list[list[Annotation]] = []
    k = 0
    for _, _, _, _, objects in parsed:
        anns = []
        for j in range(k, k + len(objects)):
            difficult, truncated = flags[j]
            anns.append(
                Annotation(
                    classes[j], cx[j], cy[j], bw[j], bh[j], difficult=difficult, truncated=truncated
                )
                if difficult or truncated
                else Annotation.plain(classes[j], cx[j], cy[j], bw[j], bh[j])
            )
        out.append(anns)
        k += len(objects)
    return out


def _walk(folder: Path, keep: Callable[[str], bool]) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(
            Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and keep(f)
        )
    return sorted(out)


# An object: name, pixel corners (or the problem with its box), difficult, truncated.
_Object = tuple[str, "tuple[float, float, float, float] | DatasetFormatError", bool, bool]
_Parsed = tuple[Path, str, Path, tuple[int, int], list[_Object]]


def _parse(p: Path, img_dir: Path) -> _Parsed:
    """One XML file; a bad file raises, a bad object's box is returned as its problem."""
    try:
        root = parse_xml_file(p)
    except ET.ParseError as exc:
        raise DatasetFormatError(f"{p} is not valid XML ({exc}); fix the file") from None
    except DefusedXmlException as exc:
        raise DatasetFormatError(
            f"{p} declares entities or refers to external files ({type(exc).__name__}), which are refused; remove them"
        ) from None
    except OSError as exc:
        raise DatasetFormatError(f"{p} cannot be read ({exc.strerror}); check the file") from None
    if root.tag != "annotation":
        raise DatasetFormatError(
            f"{p}: the root element is <{root.tag}>, expected <annotation>; fix the file"
        )
    raw = (root.findtext("filename") or "").strip()
    file_name = safe_relative(raw, str(p)) if raw else _guess_image(p, img_dir)
    width = _int(root.findtext("size/width"), p, "size/width")
    height = _int(root.findtext("size/height"), p, "size/height")
    if width <= 0 or height <= 0:
        raise DatasetFormatError(f"{p}: <size> width and height must be positive; fix them")
    objects: list[_Object] = []
    for i, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        corners: tuple[float, float, float, float] | DatasetFormatError
        try:
            if not name:
                raise DatasetFormatError(f"{p}: object {i} has no <name>; name it")
            box = obj.find("bndbox")
            if box is None:
                raise DatasetFormatError(f"{p}: object {i} ({name}) has no <bndbox>; add it")
            xmin, ymin, xmax, ymax = (
                _num(box.findtext(k), p, f"object {i} {k}")
                for k in ("xmin", "ymin", "xmax", "ymax")
            )
            corners = (xmin - 1, ymin - 1, xmax, ymax)
        except DatasetFormatError as exc:
            corners = exc
        objects.append(
            (name, corners, _flag(obj.findtext("difficult")), _flag(obj.findtext("truncated")))
        )
    return p, file_name, img_dir / file_name, (width, height), objects


def _guess_image(xml_path: Path, img_dir: Path) -> str:
    for p in sorted(img_dir.glob(f"{xml_path.stem}.*")):
        if is_image_name(p.name):
            return p.name
    raise DatasetFormatError(
        f"{xml_path} has no <filename> and no image {xml_path.stem}.jpg in {img_dir}; add one"
    )


def _int(text: str | None, p: Path, what: str) -> int:
    value = _num(text, p, what)
    if not value.is_integer():
        raise DatasetFormatError(f"{p}: <{what}> must be a whole number; fix it")
    return int(value)


def _num(text: str | None, p: Path, what: str) -> float:
    if text is None or not text.strip():
        raise DatasetFormatError(f"{p}: <{what}> is missing; add it")
    try:
        return float(text.strip())
    except ValueError:
        raise DatasetFormatError(
            f"{p}: <{what}> is {text.strip()!r}, not a number; fix it"
        ) from None


def _flag(text: str | None) -> bool:
    return (text or "0").strip().lower() in ("1", "true", "yes")


def _class_names(root: Path, parsed: list[_Parsed]) -> tuple[str, ...]:
    for name in NAME_FILES:
        if (root / name).is_file():
            return names_from_txt(root / name)
    found = sorted(
        {obj[0] for *_, objects in parsed for obj in objects if isinstance(obj[1], tuple)}
    )
    if not found:
        raise DatasetFormatError(
            f"no class names: {root} has no labels.txt and its XML files hold no objects; add labels.txt"
        )
    return tuple(found)


def _read_sets(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for split in SPLITS:
        p = root / SETS / f"{split}.txt"
        if not p.is_file():
            continue
        try:
            lines = p.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetFormatError(
                f"{p} cannot be read ({type(exc).__name__}); save it as UTF-8 text"
            ) from None
        for line in lines:
            stem = line.split()[0] if line.strip() else ""
            if stem:
                out.setdefault(stem, split)
    return out


# ---- writing ---------------------------------------------------------------------------


def write(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """The VOC folder, ``labels.txt`` with the class order, and one set file per split."""
    stems: dict[str, str] = {}
    sets: dict[str, list[str]] = {s: [] for s in data.splits}
    for item in data.items:
        stem = str(Path(item.file_name).with_suffix("").as_posix())
        if stem in stems:
            raise DatasetFormatError(
                f"{item.file_name} and {stems[stem]} would share {ANNOTATIONS}/{stem}.xml; VOC needs unique names without suffix"
            )
        stems[stem] = item.file_name
        copy_image(item.sha256, out / IMAGES / item.file_name)
        xml = out / ANNOTATIONS / f"{stem}.xml"  # inside the export's temp folder: no fsync
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_bytes(to_xml(item, data.class_names))
        sets[item.split].append(stem)
    for split, members in sets.items():
        atomic_write_text(out / SETS / f"{split}.txt", "".join(f"{m}\n" for m in members))
    atomic_write_text(out / NAME_FILES[0], "".join(f"{n}\n" for n in data.class_names))


def to_xml(item: ExportItem, class_names: tuple[str, ...]) -> bytes:
    """One image's VOC XML (pixel corners rounded to whole pixels, 1-based)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = IMAGES
    ET.SubElement(root, "filename").text = item.file_name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(item.width)
    ET.SubElement(size, "height").text = str(item.height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for a in item.annotations:
        x0, y0, x1, y1 = a.xyxy
        xmin = min(max(round(x0 * item.width), 0), item.width - 1) + 1
        ymin = min(max(round(y0 * item.height), 0), item.height - 1) + 1
        xmax = max(min(round(x1 * item.width), item.width), xmin)
        ymax = max(min(round(y1 * item.height), item.height), ymin)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[a.cls]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(a.truncated))
        ET.SubElement(obj, "difficult").text = str(int(a.difficult))
        box = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, k).text = str(v)
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


FORMAT = DatasetFormat(
    key="voc",
    title="Pascal VOC XML",
    detect=detect,
    read=read,
    write=write,
    capabilities=FormatCapabilities(difficult=True, truncated=True),
)
