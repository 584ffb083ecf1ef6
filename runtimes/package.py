"""Package format v1 (``*.outpost.zip``): manifest schema, writer and verifying reader.

A package is a zip holding ``manifest.json`` and the files it lists, each with its sha256
and size. The reader refuses anything it cannot verify: an unknown schema version, a file
whose digest differs, an entry outside the package root, a link, or sizes beyond limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import lzma
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from runtimes.errors import PackageError
from runtimes.fileio import CHUNK, atomic_writer, fsync_dir, sha256_bytes
from runtimes.package_digests import write_digests

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PACKAGE_SUFFIX = ".outpost.zip"
MAX_TOTAL_BYTES = 8 << 30  # 8 GiB uncompressed
MAX_ENTRIES = 10_000
MAX_MANIFEST_BYTES = 4 << 20
MAX_RATIO = 200  # uncompressed / compressed, per entry


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Model):
    name: str
    shape: list[int] = Field(min_length=4, max_length=4)
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @property
    def height(self) -> int:
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[3] if self.layout == "NCHW" else self.shape[2]


class Preprocessing(_Model):
    # ``letterbox`` (detect, segment, pose); ``center_crop`` (classify: shortest side to the
    # input size, then the centre crop, like Ultralytics' classification transforms).
    resize: Literal["letterbox", "center_crop"] = "letterbox"
    pad_value: int = 114
    scale: float = 1 / 255.0
    color: Literal["RGB", "BGR"] = "RGB"
    # Optional (timm classifiers), written only when set so older readers still load the
    # packages that do not use them: ``(x * scale - mean) / std`` per channel, in the
    # tensor's channel order; ``interpolation: pil_bilinear`` resizes as Pillow's bilinear
    # filter does (the images a timm run trained on), ``linear`` (the default) as OpenCV's.
    mean: list[float] | None = Field(None, min_length=1, max_length=4)
    std: list[float] | None = Field(None, min_length=1, max_length=4)
    interpolation: Literal["linear", "pil_bilinear"] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("mean", "std", "interpolation"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class MaskSpec(_Model):
    """Where a segmentation model's mask prototypes are: output ``output`` as ``(1, channels, h, w)``."""

    output: int = Field(1, ge=0)
    channels: int = Field(32, ge=1)
    layout: Literal["NCHW"] = "NCHW"
    threshold: float = 0.5  # on the mask upsampled to the original image


class Postprocessing(_Model):
    kind: Literal["yolo_detect", "yolo_segment", "yolo_pose", "classify"] = "yolo_detect"
    nms_included: bool = False
    # ``class_probs``: a classifier's ``(1, C)`` probabilities.
    output_layout: Literal["xywh_classes", "xyxy_score_class", "class_probs"] = "xywh_classes"
    box_units: Literal["pixels", "normalized"] = "pixels"
    conf_threshold: float = Field(0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.7, ge=0.0, le=1.0)
    max_det: int = Field(300, ge=1)
    agnostic_nms: bool = False
    # Task-specific, optional (a package without them is a detection package):
    kpt_shape: list[int] | None = Field(None, min_length=2, max_length=2)  # pose: (keypoints, 2|3)
    mask: MaskSpec | None = None  # segment: the prototype output
    top_k: int = Field(5, ge=1)  # classify: classes reported per image


class ModelSpec(_Model):
    framework: str
    task: Literal["detect", "segment", "classify", "pose"] = "detect"
    architecture: str
    class_names: list[str] = Field(min_length=1)
    input: InputSpec
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    postprocessing: Postprocessing = Field(default_factory=Postprocessing)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"


class FormatSpec(_Model):
    key: str
    file: str
    runtime: str
    details: dict[str, Any] = Field(default_factory=dict)


class Provenance(_Model):
    dataset: str | None = None
    dataset_version: str | None = None
    dataset_hash: str | None = None
    run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    tools: dict[str, str] = Field(default_factory=dict)


class FileEntry(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class SelfTestDetection(_Model):
    """One detection the model gave on the self-test input at export time."""

    class_id: int = Field(ge=0)
    score: float = Field(ge=0.0, le=1.0)
    xyxy: list[float] = Field(min_length=4, max_length=4)


class SelfTestTolerance(_Model):
    """How far a device's answer may drift from the export-time one and still pass."""

    iou: float = Field(0.9, gt=0.0, le=1.0)
    score: float = Field(0.05, ge=0.0, le=1.0)


class SelfTest(_Model):
    """A sample input (a file listed in ``files``) and the detections expected on it.

    Optional in schema v1: packages without it still read; an agent installs them with a
    warning instead of checking the model's answers before switching to it. What a task
    gives beyond boxes (a classifier's classes, masks, keypoints) is in the listed file
    :data:`SELF_TEST_OUTPUTS` (:class:`SelfTestOutputs`), which agents before it ignore.
    """

    input: str = Field(min_length=1)
    expected: list[SelfTestDetection]
    tolerance: SelfTestTolerance = Field(default_factory=SelfTestTolerance)


SELF_TEST_OUTPUTS = "selftest/outputs.json"
SELF_TEST_TASK_DETECTIONS = 20  # the most detections whose mask or keypoints are recorded


class SelfTestClass(_Model):
    """One of the classes a classifier ranked highest on the self-test input at export time."""

    class_id: int = Field(ge=0)
    score: float = Field(ge=0.0, le=1.0)


class SelfTestMask(_Model):
    """A detection's mask on the self-test input: COCO uncompressed RLE (column-major)."""

    size: list[int] = Field(min_length=2, max_length=2)
    counts: list[int] = Field(max_length=1 << 16)

    @model_validator(mode="after")
    def _covers_the_image(self) -> SelfTestMask:
        height, width = self.size
        if min(self.size) < 0 or height * width > 1 << 26:
            raise ValueError(f"a mask of {height} x {width} pixels")
        if any(c < 0 for c in self.counts) or sum(self.counts) != height * width:
            raise ValueError(f"the mask's counts do not cover its {height} x {width} pixels")
        return self


class SelfTestOutputs(_Model):
    """``selftest/outputs.json``: what the model gave on the self-test input beyond boxes.

    ``classes``: a classifier's ``top_k`` most probable classes, most probable first.
    ``masks`` / ``keypoints``: per detection of ``self_test.expected`` (same order), its mask
    or its ``[[x, y, visibility], ...]`` keypoints, None past the first
    :data:`SELF_TEST_TASK_DETECTIONS`.
    """

    classes: list[SelfTestClass] | None = Field(None, max_length=1000)
    masks: list[SelfTestMask | None] | None = Field(None, max_length=10_000)
    keypoints: (
        list[list[Annotated[list[float], Field(min_length=2, max_length=3)]] | None] | None
    ) = Field(None, max_length=10_000)


class Manifest(_Model):
    schema_version: int
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=64)
    created_at: str
    model: ModelSpec
    format: FormatSpec
    provenance: Provenance = Field(default_factory=Provenance)
    files: dict[str, FileEntry]
    self_test: SelfTest | None = None
    # More formats of the same model in the same package (same input, output layout and
    # classes); ``format`` stays the primary one. Optional: a single-format package writes
    # no ``alternates`` key, exactly as before, so older readers still load it.
    alternates: list[FormatSpec] = Field(default_factory=list)

    def all_formats(self) -> list[FormatSpec]:
        """The primary format first, then the alternates."""
        return [self.format, *self.alternates]

    def format_for(self, key: str) -> FormatSpec:
        """The format with this key (``onnx``, ``openvino``, ...); PackageError if absent."""
        for spec in self.all_formats():
            if spec.key == key:
                return spec
        have = ", ".join(s.key for s in self.all_formats())
        raise PackageError(f"package {self.name} holds no {key} model (it has: {have})")

    def to_json(self) -> str:
        # A package without a self-test or alternates writes no such key, exactly as before.
        exclude = {k for k in ("self_test", "alternates") if not getattr(self, k)} or None
        data = self.model_dump(mode="json", exclude=exclude)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(
                f"manifest.json is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); rebuild the package"
            ) from None
        if not isinstance(data, dict):
            raise PackageError("manifest.json must be a JSON object; rebuild the package")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PackageError(
                f"unknown package schema version {version!r} (this build reads {SCHEMA_VERSION}); "
                "update Outpost or re-export the model"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PackageError(
                f"manifest.json is invalid at {_first_error(exc)}; re-export the model"
            ) from None


def read_self_test_outputs(raw: bytes) -> SelfTestOutputs:
    """Parse a package's ``selftest/outputs.json``; PackageError with the first problem."""
    try:
        return SelfTestOutputs.model_validate_json(raw)
    except ValidationError as exc:
        raise PackageError(
            f"{SELF_TEST_OUTPUTS} is malformed ({_first_error(exc)}); re-export the package"
        ) from None


def _first_error(exc: ValidationError) -> str:
    """``where: what`` of a validation's first error, on one line."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the top"
    return " ".join(f"{where}: {first['msg']}".split())


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_member_name(name: str) -> PurePosixPath:
    """``name`` as a path inside the package, or PackageError when it could point outside it
    or is not written the one way it is read (``./x``, ``a//b``: another name for ``x`` and
    ``a/b``, which could replace a checked file on extraction)."""
    path = PurePosixPath(name)
    written = name[:-1] if name.endswith("/") else name  # a folder's entry ends with "/"
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or path.is_absolute()
        or any(part in ("..", "") for part in path.parts)
        or ":" in path.parts[0]
    ):
        raise PackageError(f"package entry {name!r} points outside the package; refusing it")
    if any(part in ("", ".") for part in written.split("/")):
        raise PackageError(
            f"package entry {name!r} is another spelling of {path.as_posix()!r}; refusing it"
        )
    return path


# The compressions a package's entries may use (zipfile reads these with the standard library).
READABLE_COMPRESSIONS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


def _check_readable(info: zipfile.ZipInfo) -> None:
    """PackageError for an entry zipfile would refuse to read: encrypted, or compressed with a
    method other than :data:`READABLE_COMPRESSIONS`."""
    if info.flag_bits & 0x1:
        raise PackageError(
            f"package entry {info.filename!r} is encrypted; Outpost packages are not (export "
            "the model again)"
        )
    if info.compress_type not in READABLE_COMPRESSIONS:
        raise PackageError(
            f"package entry {info.filename!r} uses compression method {info.compress_type}, "
            "which Outpost does not read (stored, deflate, bzip2 or lzma); export the model again"
        )


def write_package(
    out_path: Path,
    manifest_fields: dict[str, Any],
    files: dict[str, Path],
) -> Manifest:
    """Write a package zip from a manifest (without ``files``) and the files to embed.

    Digests are computed here, so a manifest can never disagree with its files.
    """
    entries: dict[str, FileEntry] = {}
    for arcname, src in files.items():
        _check_member_name(arcname)
        data = Path(src).read_bytes()
        entries[arcname] = FileEntry(sha256=sha256_bytes(data), size=len(data))
    manifest = Manifest.model_validate(
        {**manifest_fields, "schema_version": SCHEMA_VERSION, "files": entries}
    )
    with atomic_writer(Path(out_path)) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST_NAME, manifest.to_json())
        for arcname, src in files.items():
            zf.write(src, arcname)
    try:  # so that pushing it does not hash it again (runtimes.package_digests)
        write_digests(Path(out_path))
    except OSError as exc:
        log.warning("%s: no digests file (%s); a push hashes the package on the way", out_path, exc)
    return manifest


@contextlib.contextmanager
def _member_damage(name: str) -> Iterator[None]:
    """Reading member ``name``: a damaged entry (its header, its compressed bytes or its
    CRC-32; zipfile's own errors) is a :class:`PackageError` with one line."""
    try:
        yield
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        RuntimeError,  # encrypted: "password required" (refused before, by _check_readable)
        NotImplementedError,  # a compression this Python cannot read (likewise)
        lzma.LZMAError,
    ) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise PackageError(
            f"{name} is damaged in the package ({why}): it is corrupt or altered; deploy it again"
        ) from None


def package_is_sound(path: Path) -> bool:
    """Whether the package at ``path`` opens and every file matches its manifest's sha256."""
    try:
        with PackageReader(path) as reader:
            reader.verify()
    except PackageError:
        return False
    return True


def manifest_digest(path: Path) -> bytes | None:
    """The sha256 of a package's ``manifest.json`` (raw), which a sealed upload signs; None
    when the file is no zip or has no manifest (the agent refuses it with its reason)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return hashlib.sha256(_manifest_bytes(zf)).digest()
    except (PackageError, zipfile.BadZipFile, OSError, RuntimeError, ValueError):
        return None


def _manifest_bytes(zf: zipfile.ZipFile) -> bytes:
    """The raw ``manifest.json`` of a package zip (PackageError when missing, too large or
    damaged)."""
    try:
        info = zf.getinfo(MANIFEST_NAME)
    except KeyError:
        raise PackageError("package has no manifest.json; it is not an Outpost package") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise PackageError("manifest.json is larger than 4 MiB; refusing the package")
    _check_readable(info)
    with _member_damage(MANIFEST_NAME):
        return zf.read(info)


class PackageReader:
    """Opens a package zip (path or bytes) and verifies it before anything is used."""

    def __init__(self, source: Path | bytes, *, max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise PackageError(f"not a package zip ({exc}); export the model again") from None
        self.max_total_bytes = max_total_bytes
        raw = _manifest_bytes(self._zip)
        self.manifest_sha256 = sha256_bytes(raw)  # what a sealed upload's seal names
        self.manifest = Manifest.parse(raw)
        self._check_entries()

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> PackageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_entries(self) -> None:
        infos = self._zip.infolist()
        if len(infos) > MAX_ENTRIES:
            raise PackageError(
                f"package has {len(infos)} entries (limit {MAX_ENTRIES}); refusing it"
            )
        total = 0
        names = set()  # the files
        seen = set()  # every entry's name, a folder's without its "/"
        for info in infos:
            _check_member_name(info.filename)
            _check_readable(info)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise PackageError(f"package entry {info.filename!r} is a link; refusing it")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise PackageError(
                    f"package entry {info.filename!r} is not a regular file; refusing it"
                )
            name = info.filename.rstrip("/")  # a folder "x/" and a file "x" are one name
            if name in seen:  # a second entry aliasing the first one's name
                raise PackageError(
                    f"package entry {info.filename!r} appears twice; refusing the package"
                )
            seen.add(name)
            if info.is_dir():
                continue
            total += info.file_size
            if (
                info.compress_size
                and info.file_size / info.compress_size > MAX_RATIO
                and info.file_size > 1 << 20
            ):
                raise PackageError(
                    f"package entry {info.filename!r} expands suspiciously; refusing it"
                )
            names.add(info.filename)
        if total > self.max_total_bytes:
            raise PackageError(
                f"package expands to {total} bytes (limit {self.max_total_bytes}); refusing it"
            )
        for name in names:  # a file "x" beside "x/y": x cannot be both a file and a folder
            for parent in PurePosixPath(name).parents:
                if str(parent) in names:
                    raise PackageError(
                        f"package entry {name!r} lies under {str(parent)!r}, which is a file; "
                        "refusing the package"
                    )
        listed = set(self.manifest.files)
        missing = sorted(listed - names)
        if missing:
            raise PackageError(
                f"package is missing {missing[0]} listed in its manifest; re-export it"
            )
        extra = sorted(names - listed - {MANIFEST_NAME})
        if extra:
            raise PackageError(
                f"package holds {extra[0]} which its manifest does not list; refusing it"
            )
        for spec in self.manifest.all_formats():
            if spec.file not in listed and not any(n.startswith(spec.file + "/") for n in listed):
                raise PackageError(f"model file {spec.file} is not listed in the manifest")
        self_test = self.manifest.self_test
        if self_test is not None and self_test.input not in listed:
            raise PackageError(
                f"self-test input {self_test.input} is not listed in the manifest; re-export it"
            )
        for name, entry in self.manifest.files.items():
            if self._zip.getinfo(name).file_size != entry.size:
                raise PackageError(
                    f"{name} has the wrong size for its manifest entry; re-export it"
                )

    def verify(self) -> None:
        """Check every listed file against its sha256 (streamed, no extraction)."""
        for name, entry in self.manifest.files.items():
            digest = hashlib.sha256()
            with _member_damage(name), self._zip.open(name) as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
                raise PackageError(f"sha256 mismatch for {name}: the package is corrupt or altered")

    def extract(self, dest: Path) -> Path:
        """Verify, then extract into a new folder ``dest`` via a temp folder and a rename."""
        dest = Path(dest)
        if dest.exists():
            raise PackageError(f"{dest} already exists; refusing to overwrite it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            written = 0
            for name in [MANIFEST_NAME, *self.manifest.files]:
                target = tmp.joinpath(*PurePosixPath(name).parts)
                if not target.resolve().is_relative_to(tmp.resolve()):
                    raise PackageError(f"package entry {name!r} points outside the package")
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with _member_damage(name), self._zip.open(name) as src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > self.max_total_bytes:
                            raise PackageError("package expands beyond its size limit; refusing it")
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                entry = self.manifest.files.get(name)
                if entry is not None and digest.hexdigest() != entry.sha256:
                    raise PackageError(
                        f"sha256 mismatch for {name}: the package is corrupt or altered"
                    )
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest


def extract_zip_safely(
    archive: Path, dest: Path, *, max_total_bytes: int = MAX_TOTAL_BYTES
) -> Path:
    """Extract a zip found inside a package (e.g. a CoreML ``.mlpackage`` shipped as one) into
    a new folder ``dest``: names checked (no absolute paths, ``..`` or drive letters), links,
    special files, duplicate names, too many entries and suspicious expansion refused, the
    size limit enforced while writing; via a temp folder and a rename, so nothing is left
    half-written.
    """
    dest = Path(dest)
    if dest.exists():
        raise PackageError(f"{dest} already exists; refusing to overwrite it")
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise PackageError(f"{archive.name} has {len(infos)} entries (limit {MAX_ENTRIES})")
        seen: set[str] = set()
        for info in infos:
            _check_member_name(info.filename.rstrip("/") or info.filename)
            mode = stat.S_IFMT(info.external_attr >> 16)
            if mode not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise PackageError(f"{archive.name}: {info.filename!r} is a link or special file")
            if info.filename in seen:
                raise PackageError(f"{archive.name}: {info.filename!r} appears twice")
            seen.add(info.filename)
            if (
                info.compress_size
                and info.file_size / info.compress_size > MAX_RATIO
                and info.file_size > 1 << 20
            ):
                raise PackageError(f"{archive.name}: {info.filename!r} expands suspiciously")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            written = 0
            for info in infos:
                target = tmp.joinpath(*PurePosixPath(info.filename).parts)
                if not target.resolve().is_relative_to(tmp.resolve()):
                    raise PackageError(f"{archive.name}: {info.filename!r} points outside")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > max_total_bytes:
                            raise PackageError(
                                f"{archive.name} expands beyond {max_total_bytes} bytes"
                            )
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def read_manifest_dir(folder: Path) -> Manifest:
    """Read the manifest of an extracted package folder."""
    path = Path(folder) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PackageError(
            f"{folder} has no manifest.json; it is not an extracted package"
        ) from None
    return Manifest.parse(raw)
