"""Crash-safe file writes: temp name in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def syncfs(folder: str | bytes | os.PathLike[str]) -> bool:
    """Flush every dirty page of the file system holding ``folder`` (Linux ``syncfs``).

    Returns False where the call does not exist or fails; the caller then fsyncs file by
    file instead.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        return bool(libc.syncfs(fd) == 0)
    except AttributeError:
        return False
    finally:
        os.close(fd)


def read_open_file(fd: int, size: int) -> bytes:
    """Every byte of the open file ``fd``, read from where it stands; ``size`` is its length
    from ``fstat``. One ``read`` when the file still has that length (asking for a byte more
    tells its end), instead of the ``fstat``, ``lseek`` and two reads of ``FileIO.readall``.
    """
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    parts = [data]  # it grew or shrank since, or a short read: read on to its end
    while chunk := os.read(fd, max(size, 1 << 16)):
        parts.append(chunk)
    return b"".join(parts)


def fsync_file(path: str | bytes | os.PathLike[str]) -> None:
    """Flush one file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | bytes | os.PathLike[str]) -> None:
    """Flush a directory entry so a rename inside it survives a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, *, sync: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only once it is complete and synced.

    ``sync=False`` keeps the replacement atomic but leaves it to the kernel's writeback: for
    records that describe data which is not fsynced either (a process killed meanwhile finds
    both in the page cache; after a machine crash neither is trusted).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if sync:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, sync: bool = True) -> None:
    with atomic_writer(path, sync=sync) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str, *, sync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), sync=sync)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
