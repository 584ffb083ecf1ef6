"""``read_open_file``: every byte of an open file, with one read when its size is as stat said."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtimes.fileio import read_open_file


@pytest.mark.parametrize("size", [0, 1, 4095, 1 << 20])
def test_reads_the_whole_file(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert read_open_file(fd, os.fstat(fd).st_size) == data
    finally:
        os.close(fd)


@pytest.mark.parametrize("told", [0, 10, 999, 5000, 1 << 17])
def test_a_file_whose_size_changed_since_its_stat_is_read_to_its_end(
    tmp_path: Path, told: int
) -> None:
    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert read_open_file(fd, told) == data  # grew (told < 3000) or shrank (told > 3000)
    finally:
        os.close(fd)


def test_reads_from_where_the_file_stands(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"headbody")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        os.lseek(fd, 4, os.SEEK_SET)
        assert read_open_file(fd, 4) == b"body"
    finally:
        os.close(fd)
