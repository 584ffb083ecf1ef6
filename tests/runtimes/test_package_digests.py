"""A package's digests file: written with the package, trusted only while it describes it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from runtimes.package_digests import (
    MAX_PIECES,
    PIECE_SIZE,
    digests_path,
    piece_size_for,
    prefix_digests,
    read_digests,
    write_digests,
)
from tests.fakes import make_package


def _expected(data: bytes, piece: int) -> dict[int, bytes]:
    ends = [*range(piece, len(data), piece), len(data)]
    return {end: hashlib.sha256(data[:end]).digest() for end in ends}


def test_write_package_leaves_the_digests_of_every_piece_end(tmp_path: Path) -> None:
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    data = package.read_bytes()
    record = json.loads(digests_path(package).read_text())
    assert record["size"] == len(data) and record["piece_size"] == PIECE_SIZE
    assert read_digests(package, PIECE_SIZE) == _expected(data, PIECE_SIZE)
    assert sorted(p.name for p in package.parent.iterdir()) == [
        package.name,
        package.name + ".digests.json",
    ]


@pytest.mark.parametrize("size", [1, 4096, 4096 * 3, 4096 * 3 + 1])
def test_prefix_digests_at_piece_ends(tmp_path: Path, size: int) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(size))
    assert prefix_digests(path, 4096) == _expected(path.read_bytes(), 4096)


def test_piece_size_grows_to_stay_within_the_piece_limit() -> None:
    assert piece_size_for(10) == PIECE_SIZE
    assert -(-(40 << 30) // piece_size_for(40 << 30)) <= MAX_PIECES


def _tamper(package: Path, **fields: object) -> None:
    path = digests_path(package)
    record = json.loads(path.read_text())
    record.update(fields)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "change",
    [
        "package rewritten",
        "package grew",
        "no file",
        "not json",
        "wrong format",
        "a digest missing",
        "not hex",
        "short digest",
        "too big",
    ],
)
def test_a_digests_file_that_does_not_describe_the_package_is_ignored(
    tmp_path: Path, change: str
) -> None:
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    stat = package.stat()
    listed = json.loads(digests_path(package).read_text())["digests"]
    if change == "package rewritten":  # same size, another time
        os.utime(package, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "package grew":
        with open(package, "ab") as fh:
            fh.write(b"x")
        os.utime(package, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif change == "no file":
        digests_path(package).unlink()
    elif change == "not json":
        digests_path(package).write_text("{")
    elif change == "wrong format":
        _tamper(package, format=99)
    elif change == "a digest missing":
        _tamper(package, digests=listed[:-1] if len(listed) > 1 else [])
    elif change == "not hex":
        _tamper(package, digests=["zz" * 32] * len(listed))
    elif change == "short digest":
        _tamper(package, digests=["ab" * 16] * len(listed))
    else:
        digests_path(package).write_text(" " * (2 << 20))
    assert read_digests(package, PIECE_SIZE) is None
    assert read_digests(make_package(tmp_path / "other.outpost.zip"), 1 << 20) is None  # piece


def test_write_digests_refuses_a_package_that_changes_while_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "p.outpost.zip"
    package.write_bytes(b"abc")
    import runtimes.package_digests as module

    real = module.prefix_digests

    def changing(path: Path, piece: int) -> dict[int, bytes]:
        out = real(path, piece)
        with open(path, "ab") as fh:
            fh.write(b"more")
        return out

    monkeypatch.setattr(module, "prefix_digests", changing)
    with pytest.raises(OSError, match="changed while it was hashed"):
        write_digests(package)
    assert not digests_path(package).exists()
