from __future__ import annotations

from pathlib import Path

import pytest

from desktop_app.core import pacing
from desktop_app.core.blobs import BlobStore, StoredBlob, register_blob, register_blobs
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


def _files(tmp_path: Path, contents: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(contents):
        p = tmp_path / "src" / f"f{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    return paths


def _temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*")) if root.exists() else []


def test_ingest_files_matches_ingest_file_in_order(tmp_path: Path) -> None:
    contents = [f"image {i}".encode() for i in range(40)]
    paths = _files(tmp_path, contents)
    store = BlobStore(tmp_path / "blobs")
    created: list[str] = []
    seen: list[tuple[int, int]] = []
    results = store.ingest_files(
        paths, workers=4, created=created, progress=lambda d, t: seen.append((d, t))
    )
    assert [r.sha256 for r in results] == [sha256_bytes(c) for c in contents]
    assert [r.size for r in results] == [len(c) for c in contents]
    assert all(r.created for r in results)
    assert sorted(created) == sorted(sha256_bytes(c) for c in contents)
    assert seen == [(i, 40) for i in range(1, 41)]
    assert all(store.verify(r.sha256) for r in results)
    assert _temp_files(store.root) == []
    again = store.ingest_files(paths)
    assert [r.sha256 for r in again] == [r.sha256 for r in results]
    assert not any(r.created for r in again)
    assert store.ingest_files([]) == []


def test_ingest_files_stores_duplicate_content_once(tmp_path: Path) -> None:
    paths = _files(tmp_path, [b"same", b"other", b"same"])
    store = BlobStore(tmp_path / "blobs")
    results = store.ingest_files(paths, workers=1)
    assert [r.created for r in results] == [True, True, False]
    assert results[0].sha256 == results[2].sha256
    assert sorted(store.iter_shas()) == sorted({results[0].sha256, results[1].sha256})


def test_known_sha_of_a_stored_blob_skips_reading_the_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = store.put_bytes(b"already here")
    gone = tmp_path / "no-such-file.png"  # never opened: the blob is known to be stored
    one = store.ingest_file(gone, expected=sha)
    assert one == StoredBlob(sha, len(b"already here"), created=False)
    many = store.ingest_files([gone, gone], expected=[sha, sha])
    assert many == [one, one]


def test_known_sha_that_does_not_match_stores_the_real_content(tmp_path: Path) -> None:
    (src,) = _files(tmp_path, [b"changed content"])
    store = BlobStore(tmp_path / "blobs")
    wrong = sha256_bytes(b"what was hashed before")
    (stored,) = store.ingest_files([src], expected=[wrong])
    assert stored.sha256 == sha256_bytes(b"changed content") and stored.created
    assert store.verify(stored.sha256) and not store.exists(wrong)
    if wrong[:2] != stored.sha256[:2]:
        assert not (store.root / wrong[:2]).exists()  # no empty shard folder left behind
    assert _temp_files(store.root) == []
    single = store.ingest_file(src, expected=wrong)
    assert single.sha256 == stored.sha256 and not single.created


def test_ingest_files_refuses_bad_expected_before_writing(tmp_path: Path) -> None:
    paths = _files(tmp_path, [b"a", b"b"])
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(InvalidArgumentError):
        store.ingest_files(paths, expected=[sha256_bytes(b"a")])
    with pytest.raises(InvalidArgumentError):
        store.ingest_files(paths, expected=[sha256_bytes(b"a"), "../../etc/passwd"])
    assert not store.root.exists()


def test_ingest_files_failure_reports_what_it_created(tmp_path: Path) -> None:
    paths = _files(tmp_path, [f"ok {i}".encode() for i in range(20)])
    paths.insert(10, tmp_path / "src" / "missing.bin")
    store = BlobStore(tmp_path / "blobs")
    created: list[str] = []
    with pytest.raises(FileNotFoundError):
        store.ingest_files(paths, workers=2, created=created)
    assert set(created) == set(store.iter_shas())  # every stored blob is reported
    assert _temp_files(store.root) == []
    for sha in created:
        store.delete(sha)
    assert list(store.iter_shas()) == []


def test_register_blobs_rows_are_complete_and_visible_in_the_session(ws: Workspace) -> None:
    shas = {sha256_bytes(bytes([i])): i + 1 for i in range(30)}
    with ws.session() as s:
        assert register_blobs(s, shas) == 30
        first = next(iter(shas))
        row = s.get(Blob, first)
        assert row is not None and row.size == shas[first] and row.created_at is not None
        assert register_blobs(s, shas) == 0  # the same transaction sees its own rows
    with ws.session() as s:
        assert s.query(Blob).count() == 30


def test_register_blobs_stores_the_timestamp_as_the_orm_does(ws: Workspace) -> None:
    from sqlalchemy import text

    with ws.session() as s:
        register_blobs(s, {"a" * 64: 1})
        register_blob(s, "b" * 64, 2)  # through the ORM
    with ws.session() as s:
        stored = dict(s.execute(text("SELECT sha256, created_at FROM blobs")).all())
        bulk, orm = stored["a" * 64], stored["b" * 64]
        assert len(bulk) == len(orm) and bulk[:4] == orm[:4]  # the same text form
        a, b = s.get(Blob, "a" * 64), s.get(Blob, "b" * 64)
        assert a is not None and b is not None
        assert (
            type(a.created_at) is type(b.created_at) and a.created_at.tzinfo == b.created_at.tzinfo
        )
        assert abs((b.created_at - a.created_at).total_seconds()) < 60


def test_pace_fans_out_once_files_go_slowly() -> None:

    pace = pacing.Pace(adaptive=True)
    for _ in range(10):  # a fast disk: each window well under the threshold
        pace.add(pacing.PACE_WINDOW, pacing.PACE_WINDOW * pacing.SLOW_FILE_S / 10)
    assert not pace.fan_out
    pace.add(pacing.PACE_WINDOW // 2, 0.0)  # half a window is not judged yet
    assert not pace.fan_out
    pace.add(pacing.PACE_WINDOW // 2, pacing.PACE_WINDOW * pacing.SLOW_FILE_S * 2)
    assert pace.fan_out
    pace.add(pacing.PACE_WINDOW, 0.0)  # a fast window after that does not go back
    assert pace.fan_out
    fixed = pacing.Pace(adaptive=False)  # a worker count given by the caller is kept
    fixed.add(pacing.PACE_WINDOW, 10.0)
    assert not fixed.fan_out


def _threads_used(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import threading

    from desktop_app.core import blobs

    names: list[str] = []
    stage_run = blobs._Stager.stage_run

    def recording(self: blobs._Stager, run: list[tuple[str, str | None]]) -> list[blobs._Staged]:
        names.append(threading.current_thread().name)
        return stage_run(self, run)

    monkeypatch.setattr(blobs._Stager, "stage_run", recording)
    monkeypatch.setattr(pacing, "PACE_WINDOW", 4)
    return names


@pytest.mark.parametrize("slow", [False, True])
def test_ingest_files_copies_in_this_thread_until_the_disk_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    import threading

    names = _threads_used(monkeypatch)
    # every file "slow" (any time is over 0 s) or none (no file takes an hour)
    monkeypatch.setattr(pacing, "SLOW_FILE_S", 0.0 if slow else 3600.0)
    contents = [f"image {i}".encode() for i in range(300)]
    paths = _files(tmp_path, contents)
    store = BlobStore(tmp_path / "blobs")
    seen: list[tuple[int, int]] = []
    results = store.ingest_files(paths, progress=lambda d, t: seen.append((d, t)))
    assert [r.sha256 for r in results] == [sha256_bytes(c) for c in contents]
    assert all(r.created and store.verify(r.sha256) for r in results)
    assert seen == [(i, 300) for i in range(1, 301)]
    assert _temp_files(store.root) == []
    here = threading.current_thread().name
    assert names[0] == here  # the first run always goes in the calling thread
    if slow:  # measured slow after the first window: the rest went to the pool
        assert all(name.startswith("blobs") for name in names[1:]) and len(names) > 1
    else:
        assert set(names) == {here}


@pytest.mark.parametrize("slow", [False, True])
def test_ingest_files_failure_in_either_mode_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:

    _threads_used(monkeypatch)
    monkeypatch.setattr(pacing, "SLOW_FILE_S", 0.0 if slow else 3600.0)
    paths = _files(tmp_path, [f"ok {i}".encode() for i in range(200)])
    paths.insert(150, tmp_path / "src" / "missing.bin")
    store = BlobStore(tmp_path / "blobs")
    created: list[str] = []
    with pytest.raises(FileNotFoundError):
        store.ingest_files(paths, created=created)
    assert created == [] and list(store.iter_shas()) == []  # nothing was renamed yet
    assert _temp_files(store.root) == []
    assert [p.name for p in store.root.iterdir()] == []  # no shard folder left either


@pytest.mark.parametrize("slow", [False, True])
def test_a_cancel_from_the_progress_callback_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    """The desktop cancels an import by raising from its progress callback: in either mode
    the temp files go, and no blob is left under its name."""

    _threads_used(monkeypatch)
    monkeypatch.setattr(pacing, "SLOW_FILE_S", 0.0 if slow else 3600.0)
    paths = _files(tmp_path, [f"img {i}".encode() for i in range(200)])
    store = BlobStore(tmp_path / "blobs")

    class Cancelled(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done == 120:
            raise Cancelled

    created: list[str] = []
    with pytest.raises(Cancelled):
        store.ingest_files(paths, progress=progress, created=created)
    assert created == [] and list(store.iter_shas()) == []
    assert _temp_files(store.root) == []


# ---- BlobBatch: staged from bytes already read, stored together -----------------------------


def test_batch_stores_what_is_kept_and_drops_the_rest(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from desktop_app.core.blobs import BlobBatch

    store = BlobStore(tmp_path / "blobs")
    old = store.put_bytes(b"stored before")
    contents = [f"image {i}".encode() for i in range(300)] + [b"stored before"]
    batch = BlobBatch(store)
    with ThreadPoolExecutor(4) as pool:  # from several threads, each content twice
        list(pool.map(lambda d: batch.add(sha256_bytes(d), d), contents + contents))
    keep = [sha256_bytes(d) for d in contents[::2]] + [old]
    created: list[str] = []
    sizes = batch.commit(keep, created)
    assert sizes == {sha256_bytes(d): len(d) for d in contents[::2]} | {old: 13}
    assert sorted(created) == sorted(set(keep) - {old})  # the stored one was not written again
    assert sorted(store.iter_shas()) == sorted(set(keep))
    assert all(store.verify(sha) for sha in keep)
    assert _temp_files(store.root) == []
    batch.discard()  # after a commit: nothing left to drop, the blobs stay
    assert sorted(store.iter_shas()) == sorted(set(keep))


def test_batch_discard_and_an_unstaged_sha_leave_nothing(tmp_path: Path) -> None:
    from desktop_app.core.blobs import BlobBatch

    store = BlobStore(tmp_path / "blobs")
    batch = BlobBatch(store)
    for i in range(50):
        data = f"img {i}".encode()
        batch.add(sha256_bytes(data), data)
    assert len(_temp_files(store.root)) == 50
    with pytest.raises(InvalidArgumentError, match="not staged"):
        batch.commit([sha256_bytes(b"never added")], [])
    assert _temp_files(store.root) == [] and list(store.iter_shas()) == []
    assert list(store.root.iterdir()) == []  # no empty shard folder either
    again = BlobBatch(store)
    again.add(sha256_bytes(b"x"), b"x")
    again.discard()
    assert _temp_files(store.root) == [] and list(store.root.iterdir()) == []


@pytest.mark.parametrize("slow", [False, True])
def test_batch_failure_while_renaming_reports_what_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    from desktop_app.core import blobs

    monkeypatch.setattr(pacing, "PACE_WINDOW", 4)
    monkeypatch.setattr(pacing, "SLOW_FILE_S", 0.0 if slow else 3600.0)
    monkeypatch.setattr(blobs, "PACE_RUN", 8)
    real = blobs._Stager.commit
    calls = {"n": 0}

    def commit_then_fail(self: blobs._Stager, st: blobs._Staged) -> StoredBlob:
        calls["n"] += 1
        if calls["n"] == 150:
            raise OSError(28, "No space left on device")
        return real(self, st)

    monkeypatch.setattr(blobs._Stager, "commit", commit_then_fail)
    store = BlobStore(tmp_path / "blobs")
    batch = blobs.BlobBatch(store)
    contents = [f"image {i}".encode() for i in range(200)]
    for d in contents:
        batch.add(sha256_bytes(d), d)
    created: list[str] = []
    with pytest.raises(OSError, match="No space left"):
        batch.commit([sha256_bytes(d) for d in contents], created)
    assert sorted(created) == sorted(store.iter_shas())  # every blob in place is reported
    assert 0 < len(created) < 200 and len(set(created)) == len(created)
    assert _temp_files(store.root) == []
