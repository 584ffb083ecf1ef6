"""CVAT for images 1.1 XML: ``annotations.xml`` with the images in ``images/`` or beside it.

::

    <annotations>
      <version>1.1</version>
      <meta><task><labels><label><name>cat</name></label>...</labels></task></meta>
      <image id="0" name="cat1.jpg" width="64" height="48" subset="Train">
        <box label="cat" xtl="4" ytl="6" xbr="30" ybr="40" occluded="0" z_order="0"/>
        <polygon label="cat" points="4,6;30,6;17,40"/>
        <tag label="cat"/>
      </image>
    </annotations>

Class order is the order of the ``<meta>`` labels (task or project); a label used by a
shape but missing there is a problem. A file without labels in ``<meta>`` takes the sorted
names its shapes use. ``subset`` gives the split (``Train``, ``Validation``, ``Test``;
``default`` means none). Images are found by their ``name`` under ``images/``,
``images/<subset>/`` or beside the XML.

Tasks: ``detect`` (``<box>``), ``segment`` (any ``<polygon>``: its box is the polygon's
bounds) and ``classify`` (``<tag>``, one per image; an image without a tag is unlabelled).
Shapes that share a ``group_id`` (greater than 0) and a label are one object: its box is
the group's ``<box>`` when there is one, else the bounds of its polygons; the writer groups
an object's polygons this way (with its box when that differs from their bounds).
``occluded``, ``z_order``, attributes and ``source`` are not kept (there is no such field in
the stored annotations); ``<points>``, ``<polyline>``, ``<ellipse>``, ``<mask>``,
``<cuboid>`` and ``<skeleton>`` shapes are reported as problems. Entity declarations and
external references are refused (:mod:`desktop_app.core.formats.xml_input`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

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
    exact_text,
    finite,
    safe_relative,
    snap,
    split_of,
)
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats.base import DatasetFormat, FormatCapabilities
from desktop_app.core.formats.createml import finish_scan
from desktop_app.core.formats.xml_input import parse_xml_file
from runtimes.fileio import atomic_write_bytes

ANNOTATION_FILE = "annotations.xml"
IMAGES = "images"
SUBSETS = {"train": "Train", "val": "Validation", "test": "Test"}
UNSUPPORTED = ("points", "polyline", "ellipse", "mask", "cuboid", "skeleton")
_ROOT_TAG = re.compile(rb"<([A-Za-z_][\w.-]*)")


def _root_tag(p: Path) -> str | None:
    """The first element name of an XML file, from its first 4 KiB (cheap; for detection)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    head = re.sub(rb"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", b"", head, flags=re.S)
    m = _ROOT_TAG.search(head)
    return m.group(1).decode("ascii") if m else None


def _xml_files(root: Path) -> list[Path]:
    named = root / ANNOTATION_FILE
    if named.is_file() and _root_tag(named) == "annotations":
        return [named]
    return [
        p
        for p in sorted(root.glob("*.xml"))
        if p.is_file() and not p.name.startswith(".") and _root_tag(p) == "annotations"
    ]


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".xml" and _root_tag(path) == "annotations"
    return path.is_dir() and bool(_xml_files(path))


# ---- reading ---------------------------------------------------------------------------


@dataclass
class _Object:
    label: str
    at: str
    box: tuple[float, float, float, float] | None = None  # normalised corners
    polygons: list[tuple[float, ...]] = field(default_factory=list)


def read(
    path: Path, progress: Progress | None = None, problems: Problems | None = None
) -> ScannedDataset:
    """Validate a CVAT for images 1.1 XML file and its images completely.

    Raises:
        DatasetFormatError: on the first problem (strict), or a file that is not CVAT XML
            at all; the message names the file and what is wrong.
    """
    problems = problems if problems is not None else Problems()
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetFormatError(f"not a CVAT dataset: {path} does not exist; check the path")
    path = path.resolve()
    if path.is_file():
        xml_path, root = path, path.parent
    else:
        root = path
        found = _xml_files(root)
        if not found:
            raise DatasetFormatError(
                f"not a CVAT dataset: {root} has no {ANNOTATION_FILE} (CVAT for images 1.1); check the path or --format"
            )
        xml_path = found[0]
    doc = _parse(xml_path)
    names = _meta_labels(doc)
    known = set(names)
    elements = doc.findall("image")
    shapes = [s for img in elements for s in img if s.tag in ("box", "polygon")]
    tags = [s for img in elements for s in img if s.tag == "tag"]
    task = (
        "classify"
        if tags and not shapes
        else "segment"
        if any(s.tag == "polygon" for s in shapes)
        else "detect"
    )
    used = sorted({str(s.get("label", "")).strip() for s in (*shapes, *tags)} - {""})
    if not names:
        names = tuple(used)
        known = set(names)
    class_of = {n: i for i, n in enumerate(names)}
    sources: list[SourceImage] = []
    image_runs = ImageRuns(root)  # read by the import's helper while the rest is parsed
    for i, el in enumerate(elements):
        src = _image(root, xml_path, i, el, task, known, class_of, problems)
        if src is not None:
            sources.append(src)
            image_runs.add(src.path)
    image_runs.flush()
    if not sources and not elements:
        raise DatasetFormatError(f"{xml_path} lists no <image> elements; add them")
    sources.sort(key=lambda s: s.file_name)
    has_split = any(s.split for s in sources)
    return finish_scan(root, "cvat", names, sources, has_split, progress, problems, task=task)


def _parse(p: Path) -> ET.Element:
    try:
        root: ET.Element = parse_xml_file(p)
    except DefusedXmlException as exc:
        raise DatasetFormatError(
            f"{p} declares XML entities or external references ({type(exc).__name__}), which are refused; remove the DOCTYPE"
        ) from None
    except ET.ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise DatasetFormatError(
            f"{p} is not valid XML (line {line} column {column + 1}: {_reason(exc)}); fix the file"
        ) from None
    except OSError as exc:
        raise DatasetFormatError(f"{p} cannot be read ({exc.strerror}); check the file") from None
    if root.tag != "annotations":
        raise DatasetFormatError(
            f"{p}: the root element is <{root.tag}>, expected <annotations> (CVAT for images 1.1); fix the file or --format"
        )
    version = (root.findtext("version") or "1.1").strip()
    if not version.startswith("1."):
        raise DatasetFormatError(
            f"{p}: CVAT XML version {version!r} is not supported; export as CVAT for images 1.1"
        )
    if root.find("track") is not None:
        raise DatasetFormatError(
            f"{p} is CVAT for video (it has <track> elements); export as CVAT for images 1.1"
        )
    return root


def _reason(exc: ET.ParseError) -> str:
    return str(exc).split(":")[0]


def _meta_labels(doc: ET.Element) -> tuple[str, ...]:
    meta = doc.find("meta")
    if meta is None:
        return ()
    out: dict[str, None] = {}
    for label in meta.iter("label"):
        name = (label.findtext("name") or "").strip()
        if name and not (label.findtext("parent") or "").strip():
            out[name] = None
    return tuple(out)


def _image(
    root: Path,
    xml_path: Path,
    index: int,
    el: ET.Element,
    task: str,
    known: set[str],
    class_of: dict[str, int],
    problems: Problems,
) -> SourceImage | None:
    at = f"{xml_path}: image {index}"
    raw = el.get("name")
    if not raw:
        problems.add(f"{at} has no name attribute; add it")
        return None
    try:
        name = safe_relative(raw, at)
    except DatasetFormatError as exc:
        problems.add_error(exc)
        return None
    at = f"{xml_path}: image {name}"
    size = _size(el, at, problems)
    if size is None:
        return None
    subset = (el.get("subset") or "").strip()
    split = split_of(subset) if subset else None
    objects: list[_Object] = []
    groups: dict[tuple[str, str], _Object] = {}
    tags: list[str] = []
    for j, shape in enumerate(el):
        where = f"{at} {shape.tag} {j}"
        if shape.tag in UNSUPPORTED:
            problems.add(
                f"{where}: <{shape.tag}> shapes are not supported (boxes, polygons and tags are); remove it or import with --lenient"
            )
            continue
        if shape.tag not in ("box", "polygon", "tag"):
            continue
        label = (shape.get("label") or "").strip()
        if label not in known:
            problems.add(
                f"{where}: label {label!r} is not among the <meta> labels; add it there or fix the shape"
            )
            continue
        if shape.tag == "tag":
            if task == "classify":
                tags.append(label)
            else:
                problems.add(
                    f"{where}: an image tag in a file with shapes cannot be kept; remove the tag or the shapes"
                )
            continue
        try:
            obj = _shape(shape, label, size, where)
        except DatasetFormatError as exc:
            problems.add_error(exc)
            continue
        group = (shape.get("group_id") or "0").strip()
        if group not in ("", "0"):
            held = groups.get((group, label))
            if held is not None:
                if obj.box is not None and held.box is not None:
                    problems.add(f"{where}: group {group} has two boxes; keep one")
                    continue
                held.box = held.box or obj.box
                held.polygons.extend(obj.polygons)
                continue
            groups[(group, label)] = obj
        objects.append(obj)
    path = _locate(root, xml_path.parent, name, subset)
    if task == "classify":
        if len(tags) > 1:
            problems.add(f"{at} has {len(tags)} tags ({', '.join(tags)}); keep one per image")
        anns = (Annotation.whole_image(class_of[tags[0]]),) if tags else ()
        return SourceImage(name, path, split, anns, size, xml_path, labelled=bool(tags))
    anns_list = []
    for obj in objects:
        try:
            anns_list.append(_annotation(obj, class_of[obj.label], size))
        except DatasetFormatError as exc:
            problems.add_error(exc)
    return SourceImage(name, path, split, tuple(anns_list), size, xml_path)


def _size(el: ET.Element, at: str, problems: Problems) -> tuple[int, int] | None:
    try:
        w, h = int(el.get("width", "")), int(el.get("height", ""))
    except ValueError:
        problems.add(f"{at}: width and height must be whole numbers; fix them")
        return None
    if w <= 0 or h <= 0:
        problems.add(f"{at}: width and height must be positive; fix them")
        return None
    return w, h


def _float(value: str | None, what: str, where: str) -> float:
    try:
        v = float((value or "").strip())
    except ValueError:
        v = float("nan")
    if not finite((v,)):
        raise DatasetFormatError(f"{where}: {what} is {value!r}, not a finite number; fix it")
    return v


def _shape(shape: ET.Element, label: str, size: tuple[int, int], where: str) -> _Object:
    w, h = size
    if shape.tag == "box":
        corners = [_float(shape.get(k), k, where) for k in ("xtl", "ytl", "xbr", "ybr")]
        return _Object(label, where, box=box_from_pixels(corners, w, h, where))
    pts: list[float] = []
    for pair in (shape.get("points") or "").split(";"):
        xy = pair.split(",")
        if len(xy) != 2:
            raise DatasetFormatError(
                f"{where}: points must be 'x,y;x,y;...', found {pair!r}; fix the polygon"
            )
        pts += [_float(xy[0], "x", where), _float(xy[1], "y", where)]
    if len(pts) < 6:
        raise DatasetFormatError(f"{where}: a polygon needs at least 3 points; fix or remove it")
    if any(v < -1 or v > (w if k % 2 == 0 else h) + 1 for k, v in enumerate(pts)):
        raise DatasetFormatError(f"{where}: the polygon lies outside the {w}x{h} image; fix it")
    poly = tuple(snap(min(max(v / (w if k % 2 == 0 else h), 0.0), 1.0)) for k, v in enumerate(pts))
    return _Object(label, where, polygons=[poly])


def _annotation(obj: _Object, cls: int, size: tuple[int, int]) -> Annotation:
    if obj.box is not None:
        x0, y0, x1, y1 = obj.box
    else:
        xs = [v for p in obj.polygons for v in p[0::2]]
        ys = [v for p in obj.polygons for v in p[1::2]]
        w, h = size
        corners = (min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)
        x0, y0, x1, y1 = box_from_pixels(corners, w, h, obj.at)
    return Annotation.from_xyxy(cls, x0, y0, x1, y1, polygons=tuple(obj.polygons))


def _locate(root: Path, xml_dir: Path, name: str, subset: str) -> Path:
    dirs = [root / IMAGES, xml_dir / IMAGES, root, xml_dir]
    if subset:
        dirs.insert(1, root / IMAGES / subset)
    for d in dirs:
        p = d / name
        if p.is_file() or p.is_symlink():
            return p
    return dirs[0] / name  # missing: inspect_images reports it


# ---- writing ---------------------------------------------------------------------------


def write(data: ExportDataset, out: Path, copy_image: CopyImage) -> None:
    """``annotations.xml`` (labels in class order, subsets from splits) and ``images/``."""
    for item in data.items:
        copy_image(item.sha256, out / IMAGES / item.file_name)
    atomic_write_bytes(out / ANNOTATION_FILE, to_xml(data))


def to_xml(data: ExportDataset) -> bytes:
    """The CVAT for images 1.1 document of a version."""
    doc = ET.Element("annotations")
    ET.SubElement(doc, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(doc, "meta"), "task")
    ET.SubElement(task, "name").text = f"{data.name} {data.version}"
    ET.SubElement(task, "size").text = str(len(data.items))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name in data.class_names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "any"
        ET.SubElement(label, "attributes")
    group = 0
    for index, item in enumerate(data.items):
        image = ET.SubElement(
            doc,
            "image",
            {
                "id": str(index),
                "name": item.file_name,
                "subset": SUBSETS.get(item.split, item.split),
                "width": str(item.width),
                "height": str(item.height),
            },
        )
        for a in item.annotations:
            name = data.class_names[a.cls]
            if data.task == "classify":
                ET.SubElement(image, "tag", {"label": name, "source": "manual"})
                continue
            if not a.polygons:
                ET.SubElement(image, "box", _box_attrs(a, name, item, "0"))
                continue
            with_box = not _box_implied(a, item.width, item.height)
            gid = "0"
            if with_box or len(a.polygons) > 1:
                group += 1
                gid = str(group)
            for poly in a.polygons:
                points = ";".join(
                    f"{_px(poly[k] * item.width)},{_px(poly[k + 1] * item.height)}"
                    for k in range(0, len(poly) - 1, 2)
                )
                attrs = {"label": name, "source": "manual", "occluded": "0", "points": points}
                attrs["z_order"] = "0"
                if gid != "0":
                    attrs["group_id"] = gid
                ET.SubElement(image, "polygon", attrs)
            if with_box:
                ET.SubElement(image, "box", _box_attrs(a, name, item, gid))
    ET.indent(doc)
    out: bytes = ET.tostring(doc, encoding="utf-8", xml_declaration=True)
    return out + b"\n"


def _box_attrs(a: Annotation, name: str, item: ExportItem, gid: str) -> dict[str, str]:
    x0, y0, x1, y1 = a.xyxy
    attrs = {
        "label": name,
        "source": "manual",
        "occluded": "0",
        "xtl": _px(x0 * item.width),
        "ytl": _px(y0 * item.height),
        "xbr": _px(x1 * item.width),
        "ybr": _px(y1 * item.height),
        "z_order": "0",
    }
    if gid != "0":
        attrs["group_id"] = gid
    return attrs


def _box_implied(a: Annotation, width: int, height: int) -> bool:
    """True when the reader, given only the outlines, derives exactly ``a``'s box (so the
    writer leaves the box out); its outlines' points are written exactly (:func:`_px`)."""
    xs = [v for p in a.polygons for v in p[0::2]]
    ys = [v for p in a.polygons for v in p[1::2]]
    corners = (min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height)
    try:
        derived = Annotation.from_xyxy(a.cls, *box_from_pixels(corners, width, height, ""))
    except DatasetFormatError:
        return False
    return (derived.cx, derived.cy, derived.w, derived.h) == (a.cx, a.cy, a.w, a.h)


def _px(v: float) -> str:
    """A pixel coordinate, as text that reads back as the same float."""
    return exact_text(v)


FORMAT = DatasetFormat(
    key="cvat",
    title="CVAT for images 1.1 XML",
    detect=detect,
    read=read,
    write=write,
    capabilities=FormatCapabilities(
        tasks=frozenset({"detect", "segment", "classify"}), polygons=True
    ),
)
