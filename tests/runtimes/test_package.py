"""The package format: write, read, verify, and refuse what cannot be trusted."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from runtimes.errors import PackageError
from runtimes.package import (
    MANIFEST_NAME,
    Manifest,
    PackageReader,
    read_manifest_dir,
    write_package,
)

FIELDS = {
    "name": "shapes-yolo11n",
    "version": "exp-1",
    "created_at": "2026-01-01T00:00:00+00:00",
    "model": {
        "framework": "ultralytics",
        "task": "detect",
        "architecture": "yolo11n",
        "class_names": ["circle", "square"],
        "input": {"name": "images", "shape": [1, 3, 64, 64]},
    },
    "format": {"key": "onnx", "file": "model.onnx", "runtime": "onnxruntime"},
    "provenance": {
        "dataset": "shapes",
        "dataset_version": "v1",
        "run_id": "run-1",
        "metrics": {"mAP50": 0.5},
    },
}


@pytest.fixture
def package(tmp_path: Path) -> Path:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx but bytes to hash" * 100)
    out = tmp_path / "p.outpost.zip"
    write_package(out, FIELDS, {"model.onnx": model})
    return out


def _rewrite(src: Path, dst: Path, mutate) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        entries = {i.filename: zin.read(i) for i in zin.infolist()}
        for name, data in mutate(entries).items():
            zout.writestr(name, data)
    return dst


def test_roundtrip_and_verify(package: Path, tmp_path: Path) -> None:
    with PackageReader(package) as reader:
        reader.verify()
        m = reader.manifest
        assert m.schema_version == 1
        assert m.model.class_names == ["circle", "square"]
        assert m.model.input.height == 64 and m.model.input.width == 64
        assert set(m.files) == {"model.onnx"}
        assert m.provenance.metrics == {"mAP50": 0.5}
        dest = reader.extract(tmp_path / "x")
    assert read_manifest_dir(dest) == m
    assert (dest / "model.onnx").read_bytes() == (tmp_path / "model.onnx").read_bytes()


def test_manifest_json_is_stable(package: Path) -> None:
    with PackageReader(package) as reader:
        text = reader.manifest.to_json()
    assert Manifest.parse(text.encode()).to_json() == text


def test_wrong_sha256_is_refused(package: Path, tmp_path: Path) -> None:
    def flip(entries):
        data = bytearray(entries["model.onnx"])
        data[0] ^= 0xFF
        entries["model.onnx"] = bytes(data)
        return entries

    bad = _rewrite(package, tmp_path / "bad.zip", flip)
    with (
        PackageReader(bad) as reader,
        pytest.raises(PackageError, match="sha256 mismatch for model.onnx"),
    ):
        reader.verify()
    with PackageReader(bad) as reader, pytest.raises(PackageError, match="sha256"):
        reader.extract(tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_missing_manifest_is_refused(package: Path, tmp_path: Path) -> None:
    bad = _rewrite(
        package, tmp_path / "bad.zip", lambda e: {k: v for k, v in e.items() if k != MANIFEST_NAME}
    )
    with pytest.raises(PackageError, match="no manifest.json"):
        PackageReader(bad)


def test_unknown_schema_version_is_refused(package: Path, tmp_path: Path) -> None:
    def bump(entries):
        m = json.loads(entries[MANIFEST_NAME])
        m["schema_version"] = 99
        entries[MANIFEST_NAME] = json.dumps(m).encode()
        return entries

    with pytest.raises(PackageError, match="unknown package schema version 99"):
        PackageReader(_rewrite(package, tmp_path / "bad.zip", bump))


def test_invalid_manifest_names_the_field(package: Path, tmp_path: Path) -> None:
    def drop_classes(entries):
        m = json.loads(entries[MANIFEST_NAME])
        m["model"]["class_names"] = []
        entries[MANIFEST_NAME] = json.dumps(m).encode()
        return entries

    with pytest.raises(PackageError, match="model.class_names"):
        PackageReader(_rewrite(package, tmp_path / "bad.zip", drop_classes))


def test_unlisted_and_missing_files_are_refused(package: Path, tmp_path: Path) -> None:
    extra = _rewrite(package, tmp_path / "extra.zip", lambda e: {**e, "payload.sh": b"#!/bin/sh"})
    with pytest.raises(PackageError, match="does not list"):
        PackageReader(extra)
    missing = _rewrite(
        package,
        tmp_path / "missing.zip",
        lambda e: {k: v for k, v in e.items() if k != "model.onnx"},
    )
    with pytest.raises(PackageError, match="missing model.onnx"):
        PackageReader(missing)


@pytest.mark.parametrize("name", ["../evil.onnx", "/abs.onnx", "a/../../b", "C:/x"])
def test_path_traversal_is_refused(package: Path, tmp_path: Path, name: str) -> None:
    bad = _rewrite(package, tmp_path / "bad.zip", lambda e: {**e, name: b"x"})
    with pytest.raises(PackageError, match="outside the package"):
        PackageReader(bad)


def test_symlink_entry_is_refused(package: Path, tmp_path: Path) -> None:
    bad = tmp_path / "link.zip"
    with zipfile.ZipFile(package) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zout.writestr(link, "/etc/passwd")
    with pytest.raises(PackageError, match="is a link"):
        PackageReader(bad)


def test_size_limit(package: Path) -> None:
    with pytest.raises(PackageError, match="limit"):
        PackageReader(package, max_total_bytes=10)


def test_not_a_zip(tmp_path: Path) -> None:
    junk = tmp_path / "junk.outpost.zip"
    junk.write_bytes(b"hello")
    with pytest.raises(PackageError, match="not a package zip"):
        PackageReader(junk)
    with pytest.raises(PackageError, match="not a package zip"):
        PackageReader(b"also not a zip")
