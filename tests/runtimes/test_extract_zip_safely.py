"""Zips inside packages (a CoreML .mlpackage shipped as one) are extracted with every check."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from runtimes.backends.coreml import unpack_mlpackage
from runtimes.errors import PackageError, RuntimeUnavailableError
from runtimes.package import extract_zip_safely


def _zip(path: Path, entries: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_a_good_zip_is_extracted(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "m.zip",
        {"model.mlpackage/Manifest.json": b"{}", "model.mlpackage/Data/w.bin": b"x" * 10},
    )
    out = extract_zip_safely(archive, tmp_path / "out")
    assert (out / "model.mlpackage" / "Data" / "w.bin").read_bytes() == b"x" * 10


@pytest.mark.parametrize(
    ("entries", "link", "message"),
    [
        ({"../evil": b"x"}, None, "outside"),
        ({"/abs": b"x"}, None, "outside"),
        ({"ok": b"x"}, "model.mlpackage/link", "link or special"),
    ],
)
def test_hostile_zips_are_refused_and_leave_nothing(
    tmp_path: Path, entries: dict[str, bytes], link: str | None, message: str
) -> None:
    archive = _zip(tmp_path / "m.zip", entries, link)
    with pytest.raises(PackageError, match=message):
        extract_zip_safely(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]


def test_size_limit_is_enforced_while_writing(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "m.zip", {"a": b"x" * 1000})
    with pytest.raises(PackageError, match="expands beyond"):
        extract_zip_safely(archive, tmp_path / "out", max_total_bytes=100)
    assert not (tmp_path / "out").exists()


def test_coreml_unpacking_refuses_a_hostile_mlpackage_zip(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "model.mlpackage.zip", {"../../escape": b"x"})
    with pytest.raises(RuntimeUnavailableError, match="export the model again"):
        unpack_mlpackage(archive)
    assert not (tmp_path / "model.mlpackage").exists()
    (tmp_path / "good").mkdir()
    good = _zip(tmp_path / "good" / "model.mlpackage.zip", {"model.mlpackage/Manifest.json": b"{}"})
    assert unpack_mlpackage(good) == tmp_path / "good" / "model.mlpackage"
    assert (tmp_path / "good" / "model.mlpackage" / "Manifest.json").read_bytes() == b"{}"
