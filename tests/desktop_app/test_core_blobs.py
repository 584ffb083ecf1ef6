from __future__ import annotations

from pathlib import Path

import pytest

from desktop_app.core.blobs import BlobStore, register_blob, register_blobs
from desktop_app.core.errors import BlobIntegrityError, InvalidArgumentError
from desktop_app.core.models import Blob
from desktop_app.core.workspace import Workspace
from runtimes.fileio import sha256_bytes


def test_put_bytes_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = store.put_bytes(b"hello")
    assert sha == sha256_bytes(b"hello")
    assert store.path(sha) == tmp_path / "blobs" / sha[:2] / sha
    assert store.exists(sha) and store.verify(sha)
    again = store.ingest_bytes(b"hello")
    assert again.sha256 == sha and not again.created


def test_put_file_copies_and_leaves_no_temp_files(tmp_path: Path) -> None:
    src = tmp_path / "img.bin"
    src.write_bytes(b"x" * 3_000_000)
    store = BlobStore(tmp_path / "blobs")
    first = store.ingest_file(src)
    second = store.ingest_file(src)
    assert first.created and not second.created and first.sha256 == second.sha256
    assert first.size == 3_000_000
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert files == [store.path(first.sha256)]


def test_verify_detects_tampering_and_copy_refuses_it(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = store.put_bytes(b"original")
    store.path(sha).write_bytes(b"tampered")
    assert not store.verify(sha)
    with pytest.raises(BlobIntegrityError):
        store.copy_to(sha, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_bad_sha_and_delete(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(InvalidArgumentError):
        store.path("../../etc/passwd")
    sha = store.put_bytes(b"gone soon")
    store.delete(sha)
    assert not store.exists(sha)
    assert not (tmp_path / "blobs" / sha[:2]).exists()


def test_register_helpers_add_rows_once(ws: Workspace) -> None:
    a, b = ws.blobs.put_bytes(b"a"), ws.blobs.put_bytes(b"b")
    with ws.session() as s:
        register_blob(s, a, 1)
        register_blob(s, a, 1)
    with ws.session() as s:
        assert register_blobs(s, {a: 1, b: 1}) == 1
    with ws.session() as s:
        assert s.get(Blob, b) is not None
