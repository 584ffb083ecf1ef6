"""A package's running sha256 at each piece end, kept beside it in ``<package>.digests.json``.

A chained upload (``device_agent.uploads``) proves every piece with the sha256 of the package
from byte 0 to that piece's end, signed by the desktop. Computing them means reading and
hashing the whole package. :func:`write_digests` does it once, when the package is made
(``runtimes.package.write_package``), so that every push of it, to every device, sends the
file without hashing it. The file records the package's size and modification time: a
package changed since is hashed again while it is sent (:func:`read_digests` answers None).
Nothing installed rests on the file alone. A chained push: the agent hashes every byte it
receives and refuses a proof that does not match, and the desktop then hashes the package
itself. A sealed push (protocol 4): the file's last digest is the package's sha256 the desktop
signs, the name the agent records the package under, while every byte installed is checked
file by file against the package's manifest, whose own sha256 the desktop reads from the
package as it pushes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from runtimes.fileio import CHUNK, atomic_write_text

SUFFIX = ".digests.json"
FORMAT = 1
PIECE_SIZE = 4 << 20  # the agent checks a streamed upload in pieces of this size (or more)
MAX_PIECES = 8192  # pieces of one streamed upload (the agent's limit)
MAX_FILE_BYTES = 1 << 20  # a digests file is refused past this size (8,192 pieces: ~600 KiB)


def piece_size_for(size: int) -> int:
    """The piece size of a streamed upload of ``size`` bytes: 4 MiB, or larger (a multiple of
    1 MiB) so that the piece list stays within :data:`MAX_PIECES`."""
    smallest = -(-size // MAX_PIECES)
    return max(PIECE_SIZE, -(-smallest // (1 << 20)) << 20)


def piece_ends(start: int, size: int, piece_size: int) -> list[int]:
    """The ends of the pieces after byte ``start`` (a piece boundary): the last is ``size``."""
    return [*range(start + piece_size, size, piece_size), size]


def digests_path(package: Path) -> Path:
    return package.with_name(package.name + SUFFIX)


def hash_piece_ends(
    fh: BinaryIO,
    running: Any,
    start: int,
    end: int,
    piece_size: int,
    stop: threading.Event | None = None,
) -> Iterator[int]:
    """Extend the sha256 ``running`` with ``fh``'s bytes from ``start`` (where ``fh`` stands)
    to ``end``, read into one reused buffer; yields each piece end and ``end`` once hashed up
    to it. Stops early at the file's end or when ``stop`` is set: the caller compares the last
    offset it saw with ``end``."""
    buffer = memoryview(bytearray(CHUNK))
    at = start
    while at < end and not (stop is not None and stop.is_set()):
        piece_end = min(end, (at // piece_size + 1) * piece_size)
        got = cast(io.BufferedIOBase, fh).readinto(buffer[: min(CHUNK, piece_end - at)])
        if not got:
            return
        running.update(buffer[:got])
        at += got
        if at == piece_end:
            yield at


def prefix_digests(package: Path, piece_size: int) -> dict[int, bytes]:
    """Read ``package`` once: the sha256 of its bytes ``[0, end)`` at each piece end."""
    running = hashlib.sha256()
    with open(package, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        out = {0: running.digest()} if size == 0 else {}
        for end in hash_piece_ends(fh, running, 0, size, piece_size):
            out[end] = running.digest()
    if size not in out:
        raise OSError(f"{package} changed while it was hashed")
    return out


def write_digests(package: Path) -> Path:
    """Hash ``package`` and write its digests file (atomically); the file's path."""
    package = Path(package)
    before = os.stat(package)
    piece_size = piece_size_for(before.st_size)
    digests = prefix_digests(package, piece_size)
    after = os.stat(package)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise OSError(f"{package} changed while it was hashed")
    record = {
        "format": FORMAT,
        "size": after.st_size,
        "mtime_ns": after.st_mtime_ns,
        "piece_size": piece_size,
        "digests": [digests[end].hex() for end in piece_ends(0, after.st_size, piece_size)],
    }
    out = digests_path(package)
    atomic_write_text(out, json.dumps(record) + "\n")
    return out


def read_digests(package: Path, piece_size: int) -> dict[int, bytes] | None:
    """The digests of ``package`` at each piece end of ``piece_size`` from its digests file,
    or None when there is none, it is unreadable, or it does not describe the package as it
    is now (size, modification time, piece size)."""
    package = Path(package)
    try:
        now = os.stat(package)
        path = digests_path(package)
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    if (record.get("size"), record.get("mtime_ns"), record.get("piece_size")) != (
        now.st_size,
        now.st_mtime_ns,
        piece_size,
    ):
        return None
    ends = piece_ends(0, now.st_size, piece_size)
    listed = record.get("digests")
    if not isinstance(listed, list) or len(listed) != len(ends):
        return None
    try:
        values = [bytes.fromhex(d) for d in listed if isinstance(d, str)]
    except ValueError:
        return None
    if len(values) != len(ends) or any(len(v) != hashlib.sha256().digest_size for v in values):
        return None
    return dict(zip(ends, values, strict=True))
