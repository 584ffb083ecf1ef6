"""Zip archives of datasets: safe extraction for import, atomic writing for export."""

from __future__ import annotations

import contextlib
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from desktop_app.core.dataset_records import safe_relative
from desktop_app.core.errors import DatasetFormatError
from runtimes.fileio import atomic_writer

MAX_UNPACKED_BYTES = 64 << 30
MAX_RATIO = 200  # a member that inflates more than this is treated as a zip bomb


def is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip"


@contextlib.contextmanager
def opened_source(path: Path) -> Iterator[Path]:
    """Yield ``path``, or for a ``.zip`` a temp folder holding its checked contents.

    A zip whose single top-level folder holds everything yields that folder.

    Raises:
        DatasetFormatError: the zip is corrupt, or a member escapes, links, or inflates too much.
    """
    p = Path(path).expanduser()
    if not is_zip(p):
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="outpost-import-"))
    try:
        _extract(p, tmp)
        entries = [e for e in tmp.iterdir() if not e.name.startswith((".", "__MACOSX"))]
        yield entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(src: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(src) as zf:
            total = 0
            for info in zf.infolist():
                where = f"{src}: {info.filename}"
                name = safe_relative(info.filename, where)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DatasetFormatError(f"{where} is a symbolic link; zip the file itself")
                total += info.file_size
                if total > MAX_UNPACKED_BYTES or (
                    info.file_size > (1 << 20) and info.file_size > MAX_RATIO * info.compress_size
                ):
                    raise DatasetFormatError(
                        f"{where} inflates too much (possible zip bomb); unpack it yourself if you trust it"
                    )
                target = dest / name
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DatasetFormatError(f"{src} is not a readable zip ({exc}); re-create it") from None


def write_zip(folder: Path, out: Path) -> None:
    """Zip ``folder``'s contents to ``out`` via a temp name in the same folder, fsynced, renamed."""
    with atomic_writer(out) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
