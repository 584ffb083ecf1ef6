"""The import's helper process (:mod:`desktop_app.core.image_prefetch`): an import with it
stores exactly what an import without it stores, every problem is still found and named by the
importer, the helper reads only regular files inside the dataset folder, and no temp file of
it outlives the import (success, failure, or a helper that dies)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from desktop_app.core import dataset_import, dataset_records, image_prefetch
from desktop_app.core.blobs import BlobBatch, BlobStore
from desktop_app.core.dataset_export import export_dataset
from desktop_app.core.dataset_records import SourceImage
from desktop_app.core.datasets import import_dataset
from desktop_app.core.errors import DatasetFormatError
from desktop_app.core.formats import coco
from desktop_app.core.image_check import check_structure
from desktop_app.core.image_prefetch import ImagePrefetch, _Helper
from desktop_app.core.models import Blob, Dataset, DatasetItem
from desktop_app.core.workspace import Workspace
from runtimes.fileio import sha256_bytes

ROOT = Path(__file__).resolve().parents[2]
W, H = 40, 30


def _image(path: Path, seed: int, ext: str = ".png") -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(ext, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def _leftovers(ws: Workspace) -> list[Path]:
    return list(ws.blobs_dir.rglob(".tmp-*")) if ws.blobs_dir.exists() else []


def _coco(root: Path, n: int, *, extra: list[dict[str, Any]] | None = None) -> Path:
    """``n`` PNGs (one a copy of another, a few JPEGs and a BMP), one box each, and
    ``extra`` image entries; the annotations in ``root/annotations.json``."""
    images = []
    for i in range(n):
        ext = ".jpg" if i % 25 == 3 else ".bmp" if i == 7 else ".png"
        name = f"i{i:03d}{ext}"
        _image(root / "images" / name, 101 if i == 11 else 100 + i, ext)  # i011 copies i001
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
    for j, entry in enumerate(extra or []):
        images.append({"id": n + j + 1, "width": W, "height": H, **entry})
    doc = {
        "images": images,
        "annotations": [
            {"id": k + 1, "image_id": img["id"], "category_id": 5, "bbox": [1, 2, 10, 10]}
            for k, img in enumerate(images)
        ],
        "categories": [{"id": 5, "name": "thing"}],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def _stored(ws: Workspace) -> tuple[list[tuple[str, str, int, int]], set[str]]:
    with ws.session() as s:
        items = [
            (i.file_name, i.image_sha256, i.width, i.height)
            for i in s.scalars(select(DatasetItem).order_by(DatasetItem.file_name))
        ]
        shas = set(s.scalars(select(Blob.sha256)))
    return items, shas


@pytest.fixture
def helper_on(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The helper starts for any number of images, and the importer lets it answer for every
    one before it takes the answers (else, this quick, it reads them all itself); returns the
    count of images the helper staged."""
    monkeypatch.setattr(image_prefetch, "PREFETCH_MIN_IMAGES", 1)
    return _count_adopted(monkeypatch)


def _count_adopted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The importer lets a running helper answer for every image before it takes the answers;
    returns the count of images the helper staged (its temp files the import adopted)."""
    results = ImagePrefetch.results

    def after_the_helper(self: ImagePrefetch, sources: Any, own: Any) -> Any:
        with self._cond:
            while len(self._answers) < len(self._index) and not self._answered_all:
                self._cond.wait()
        return results(self, sources, own)

    monkeypatch.setattr(ImagePrefetch, "results", after_the_helper)
    adopted: list[int] = [0]
    adopt = BlobBatch.adopt

    def counting(self: BlobBatch, sha: str, tmp: str, size: int) -> None:
        adopted[0] += 1
        adopt(self, sha, tmp, size)

    monkeypatch.setattr(BlobBatch, "adopt", counting)
    return adopted


def test_import_with_the_helper_stores_what_the_import_without_it_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int]
) -> None:
    root = tmp_path / "src"
    outside = tmp_path / "outside.png"
    _image(outside, 7)
    (root / "images").mkdir(parents=True)
    os.symlink(root / "images" / "i000.png", root / "images" / "link.png")
    os.symlink(outside, root / "images" / "escape.png")
    cut = _image(root / "images" / "cut.png", 8)
    (root / "images" / "cut.png").write_bytes(cut[: len(cut) // 2])
    _coco(
        root,
        150,
        extra=[
            {"file_name": "link.png"},  # a link inside the folder: the importer reads it
            {"file_name": "escape.png"},  # a link out of it: refused
            {"file_name": "cut.png"},  # truncated
            {"file_name": "gone.png"},  # missing
        ],
    )
    with_helper = Workspace.open(tmp_path / "ws1", create=True)
    first = import_dataset(with_helper, root, "d", "coco", lenient=True)
    assert helper_on[0] >= 140  # the helper staged the PNGs and JPEGs

    monkeypatch.setattr(image_prefetch, "PREFETCH_MIN_IMAGES", 10**9)
    helper_on[0] = 0
    without = Workspace.open(tmp_path / "ws2", create=True)
    second = import_dataset(without, root, "d", "coco", lenient=True)
    assert helper_on[0] == 0

    assert first["content_hash"] == second["content_hash"]
    assert first["problems"] == second["problems"]
    assert first["images"] == second["images"] == 151  # 150 + the link inside
    joined = "\n".join(first["problems"])
    for name in ("escape.png", "cut.png", "gone.png"):
        assert name in joined
    assert _stored(with_helper) == _stored(without)
    items, shas = _stored(with_helper)
    assert len(shas) == 149  # a copy and a link share their blobs
    assert all(with_helper.blobs.verify(sha) for sha in shas)
    assert _leftovers(with_helper) == [] and _leftovers(without) == []


def test_a_strict_import_names_the_first_problem_with_the_helper(
    tmp_path: Path, helper_on: list[int]
) -> None:
    root = _coco(tmp_path / "src", 60, extra=[{"file_name": "gone.png"}])
    ws = Workspace.open(tmp_path / "ws", create=True)
    with pytest.raises(DatasetFormatError, match=r"image gone\.png is missing"):
        import_dataset(ws, root, "d", "coco")
    assert _leftovers(ws) == []
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


def test_a_failure_after_the_images_were_staged_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int]
) -> None:
    root = _coco(tmp_path / "src", 60)
    ws = Workspace.open(tmp_path / "ws", create=True)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "disk I/O error")

    monkeypatch.setattr(dataset_import, "_create_rows", fail)
    with pytest.raises(OSError, match="disk I/O"):
        import_dataset(ws, root, "d", "coco")
    assert helper_on[0] > 0
    with ws.session() as s:
        for model in (Dataset, DatasetItem, Blob):
            assert s.scalar(select(func.count()).select_from(model)) == 0
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


def test_a_parse_error_after_the_helper_started_leaves_nothing(
    tmp_path: Path, helper_on: list[int]
) -> None:
    root = _coco(tmp_path / "src", 60)
    doc = json.loads((root / "annotations.json").read_text())
    doc["annotations"][-1]["category_id"] = 99
    (root / "annotations.json").write_text(json.dumps(doc))
    ws = Workspace.open(tmp_path / "ws", create=True)
    started: list[ImagePrefetch] = []
    real_start = ImagePrefetch._start

    def start(self: ImagePrefetch, root_: str) -> bool:
        started.append(self)
        return real_start(self, root_)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImagePrefetch, "_start", start)
        with pytest.raises(DatasetFormatError, match="unknown category id 99"):
            import_dataset(ws, root, "d", "coco")
    assert started and started[0]._proc is not None
    assert started[0]._proc.poll() is not None  # the helper is gone
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []


def test_a_file_malformed_after_its_images_list_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _coco(tmp_path / "src", 60)
    ann = root / "annotations.json"
    ann.write_text(ann.read_text()[:-20] + "}")  # cut inside the categories, after the images
    monkeypatch.setattr(image_prefetch, "PREFETCH_EARLY_BYTES", 1)  # the helper starts early
    given: list[Path] = []
    announce = ImagePrefetch.announce

    def noting(self: ImagePrefetch, root_: Path, paths: Any) -> None:
        paths = list(paths)
        given.extend(paths)
        announce(self, root_, paths)

    monkeypatch.setattr(ImagePrefetch, "announce", noting)
    ws = Workspace.open(tmp_path / "ws", create=True)
    with pytest.raises(DatasetFormatError, match="is not valid JSON"):
        import_dataset(ws, root, "d", "coco")
    assert len(given) == 60  # its images list was read on its own and handed to the helper
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == []
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def test_a_helper_that_dies_leaves_the_images_to_the_importer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int]
) -> None:
    root = _coco(tmp_path / "src", 60)
    real_start = ImagePrefetch._start

    def start_and_kill(self: ImagePrefetch, root_: str) -> bool:
        ok = real_start(self, root_)
        assert self._proc is not None
        self._proc.kill()
        return ok

    monkeypatch.setattr(ImagePrefetch, "_start", start_and_kill)
    ws = Workspace.open(tmp_path / "ws", create=True)
    summary = import_dataset(ws, root, "d", "coco")
    assert summary["images"] == 60
    _, shas = _stored(ws)
    assert len(shas) == 59 and all(ws.blobs.verify(sha) for sha in shas)
    assert _leftovers(ws) == []


def test_no_helper_for_few_images_or_one_cpu(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    few = ImagePrefetch(BlobBatch(store), min_images=10)
    few.announce(tmp_path, [tmp_path / f"{i}.png" for i in range(9)])
    one_cpu = ImagePrefetch(BlobBatch(store), min_images=1, cpus=1)
    one_cpu.announce(tmp_path, [tmp_path / "a.png"])
    assert not few.running and not one_cpu.running
    few.close()
    one_cpu.close()


def test_a_large_annotation_file_starts_the_helper_before_it_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _coco(tmp_path / "src", 40)
    ann = root / "annotations.json"
    started: list[bool] = []  # was the helper running when the file's parse began?
    known: list[int] = []  # ... and how many images had it been given by then?
    parse_json = coco.parse_json

    def parse(raw: bytes, path: Path) -> Any:
        if len(raw) == ann.stat().st_size:  # the whole file (not its images list alone)
            prefetch = dataset_records._PREFETCH.get()
            started.append(prefetch is not None and prefetch.running)
            known.append(len(prefetch._paths) if prefetch is not None else 0)
        return parse_json(raw, path)

    monkeypatch.setattr(coco, "parse_json", parse)
    small = import_dataset(Workspace.open(tmp_path / "ws1", create=True), root, "d", "coco")
    assert started == [False]  # a small file: the helper waits for 1,000 images (it never came)
    monkeypatch.setattr(image_prefetch, "PREFETCH_EARLY_BYTES", ann.stat().st_size)
    started.clear()
    known.clear()
    ws = Workspace.open(tmp_path / "ws2", create=True)
    adopted = _count_adopted(monkeypatch)
    early = import_dataset(ws, root, "d", "coco")
    assert started == [True]
    assert known == [40]  # its images list, read on its own first: the helper reads them now
    assert adopted[0] == 39  # every PNG and JPEG (not the BMP), though fewer than 1,000
    assert early["content_hash"] == small["content_hash"]
    assert _leftovers(ws) == []


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        ('{"images": [{"id": 1}, {"id": 2}], "annotations": [], "categories": []}', 2),
        ('{"categories": [], "images" :\n [{"id": 1}]\n,\n"annotations":[]}', 1),  # spaced
        ('{"info": {"images": "none"}, "images": [], "annotations": []}', 0),  # a value first
        ('{"annotations": [], "images": [{"id": 1}]}', None),  # annotations first
        ('{"images": [{"id": 1}], "licenses": [], "annotations": []}', None),  # one between
        ('{"images": [{"file_name": "annotations\\": [x.png"}], "annotations": []}', 1),
        ('{"images": [{"id": 1, "annotations": [1]}], "annotations": []}', None),  # a key inside
        ('{"images": {"id": 1}, "annotations": []}', None),  # not a list
        ('{"images": [{"id": 1}]}', None),  # no annotations
    ],
)
def test_the_images_list_is_read_on_its_own_only_when_its_span_is_clear(
    doc: str, want: int | None
) -> None:
    early = coco._early_images(doc.encode(), Path("a.json"))
    assert (len(early) if early is not None else None) == want


def test_a_helper_started_early_for_a_file_that_names_no_image_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    prefetch = ImagePrefetch(BlobBatch(store))
    monkeypatch.setattr(image_prefetch, "PREFETCH_EARLY_BYTES", 10)
    prefetch.expect(tmp_path, 9)
    assert not prefetch.running
    prefetch.expect(tmp_path, 10)
    assert prefetch.running
    proc = prefetch._proc
    prefetch.close()
    assert proc is not None and proc.poll() is not None
    assert list(store.root.rglob("*")) == []


# ---- the helper's own checks ------------------------------------------------------------------


def test_the_helper_stages_only_whole_images_it_may_read(tmp_path: Path) -> None:
    root = (tmp_path / "data").resolve()
    store = tmp_path / "blobs"
    store.mkdir()
    good = _image(root / "good.png", 1)
    jpeg = _image(root / "photo.jpg", 2, ".jpg")
    _image(root / "other.bmp", 3, ".bmp")
    cut = _image(root / "cut.png", 4)
    (root / "cut.png").write_bytes(cut[:-20])
    os.symlink(root / "good.png", root / "link.png")
    outside = tmp_path / "elsewhere"
    _image(outside / "x.png", 5)
    os.symlink(outside, root / "linked-folder")
    os.mkfifo(root / "pipe.png")
    (root / "folder.png").mkdir()
    helper = _Helper(str(store), ".tmp-test-", str(root), max_pixels=10**8)

    def answer(n: int, name: str) -> bytes:
        return helper.answer(n, os.fsencode(root / name))

    assert answer(0, "good.png") == b"+0 %s %d %d %d\n" % (
        sha256_bytes(good).encode(),
        len(good),
        W,
        H,
    )
    assert (store / ".tmp-test-0").read_bytes() == good
    size = check_structure(jpeg)
    assert size is not None
    assert answer(1, "photo.jpg") == b"+1 %s %d %d %d\n" % (
        sha256_bytes(jpeg).encode(),
        len(jpeg),
        *size,
    )
    for n, name in enumerate(
        [
            "other.bmp",
            "cut.png",
            "link.png",
            "linked-folder/x.png",
            "pipe.png",
            "folder.png",
            "no.png",
        ],
        start=2,
    ):
        assert answer(n, name) == b"-%d\n" % n, name
    small = _Helper(str(store), ".tmp-test-", str(root), max_pixels=W * H - 1)
    assert small.answer(20, os.fsencode(root / "good.png")) == b"-20\n"  # over the limit
    assert sorted(p.name for p in store.iterdir()) == [".tmp-test-0", ".tmp-test-1"]
    helper.remove_temps()
    assert list(store.iterdir()) == []


def test_the_helper_skips_runs_the_importer_took() -> None:
    helper = _Helper("/nonexistent", ".tmp-x-", "/", max_pixels=1)
    helper.limit = 64
    assert helper.answer_run([(64, b"/a"), (65, b"/b")]) == []
    assert helper.answer_run([(0, b"/nonexistent/a")]) == [b"-0\n"]


def test_the_importer_takes_runs_from_the_end_while_the_helper_is_behind(tmp_path: Path) -> None:
    """Waiting for image 1, the importer reads images 2..4 itself (and tells the helper to
    stop before 2); the results still come in the sources' order."""
    prefetch = ImagePrefetch(BlobBatch(BlobStore(tmp_path / "blobs")), min_images=1)
    sources = [SourceImage(f"{i}.png", tmp_path / f"{i}.png", None, ()) for i in range(5)]
    prefetch._index = {os.fspath(src.path): i for i, src in enumerate(sources)}
    prefetch._answers = {0: b"-"}
    prefetch._proc = object()  # type: ignore[assignment]  # requests only go to the outbox
    order: list[str] = []

    def own(src: SourceImage) -> str:
        order.append(src.file_name)
        return f"own {src.file_name}"

    def helper_answers_1_after_the_limit() -> None:
        message = prefetch._outbox.get(timeout=10)
        assert message == b"l2\0"
        with prefetch._cond:
            prefetch._answers[1] = b"-"
            prefetch._cond.notify_all()

    thread = threading.Thread(target=helper_answers_1_after_the_limit)
    thread.start()
    results = list(prefetch.results(sources, own))
    thread.join()
    assert results == [f"own {i}.png" for i in range(5)]
    assert order == ["0.png", "2.png", "3.png", "4.png", "1.png"]


def test_the_frozen_app_runs_the_helper() -> None:
    """``Outpost -m desktop_app.core.image_prefetch`` in the frozen app: the same helper."""
    done = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-c",
            "import sys; from desktop_app.frozen_entry import main; "
            "sys.exit(main(['-m', 'desktop_app.core.image_prefetch']))",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# ---- the blobs stored by the helper -----------------------------------------------------------


def test_the_helper_stores_the_blobs_while_the_rows_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int]
) -> None:
    root = _coco(tmp_path / "src", 80)
    asked: list[int] = []
    rename = ImagePrefetch.rename

    def recording(self: ImagePrefetch, moves: list[tuple[str, str]]) -> Any:
        asked.append(len(moves))
        return rename(self, moves)

    monkeypatch.setattr(ImagePrefetch, "rename", recording)
    ws = Workspace.open(tmp_path / "ws", create=True)
    summary = import_dataset(ws, root, "d", "coco")
    assert asked == [79]  # 80 images, one a copy
    _, shas = _stored(ws)
    assert len(shas) == 79 and all(ws.blobs.verify(sha) for sha in shas)
    assert _leftovers(ws) == []
    again = Workspace.open(tmp_path / "ws2", create=True)
    monkeypatch.setattr(image_prefetch, "PREFETCH_MIN_IMAGES", 10**9)
    assert import_dataset(again, root, "d", "coco")["content_hash"] == summary["content_hash"]


def test_a_blob_the_helper_cannot_store_fails_the_import_and_leaves_nothing(
    tmp_path: Path, helper_on: list[int]
) -> None:
    root = _coco(tmp_path / "src", 40)
    ws = Workspace.open(tmp_path / "ws", create=True)
    ws.blobs_dir.mkdir(parents=True, exist_ok=True)
    sha = sha256_bytes((root / "images" / "i020.png").read_bytes())
    blocker = ws.blobs_dir / sha[:2]
    blocker.write_bytes(b"not a folder")  # the blob's shard folder cannot be made
    with pytest.raises(OSError):
        import_dataset(ws, root, "d", "coco")
    with ws.session() as s:
        for model in (Dataset, DatasetItem, Blob):
            assert s.scalar(select(func.count()).select_from(model)) == 0
    assert [p for p in ws.blobs_dir.rglob("*") if p.is_file()] == [blocker]


def test_a_helper_that_dies_before_storing_the_blobs_leaves_them_to_the_importer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int]
) -> None:
    root = _coco(tmp_path / "src", 40)
    rename = ImagePrefetch.rename

    def kill_first(self: ImagePrefetch, moves: list[tuple[str, str]]) -> Any:
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait()
        return rename(self, moves)

    monkeypatch.setattr(ImagePrefetch, "rename", kill_first)
    ws = Workspace.open(tmp_path / "ws", create=True)
    assert import_dataset(ws, root, "d", "coco")["images"] == 40
    _, shas = _stored(ws)
    assert len(shas) == 39 and all(ws.blobs.verify(sha) for sha in shas)
    assert _leftovers(ws) == []


@pytest.mark.parametrize("by_folder", [True, False], ids=["folder-descriptors", "paths"])
def test_the_helper_renames_what_is_new_and_drops_what_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_folder: bool
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    if by_folder and not image_prefetch._DIR_FDS:
        pytest.skip("this system renames by whole paths only")
    monkeypatch.setattr(image_prefetch, "_DIR_FDS", by_folder)
    store = tmp_path / "blobs"
    (store / "aa").mkdir(parents=True)
    shas = ["aa" + "1" * 62, "bb" + "2" * 62, "aa" + "3" * 62]
    (store / "aa" / shas[2]).write_bytes(b"stored before")
    for i in range(3):
        (store / f".tmp-t-{i}").write_bytes(b"x%d" % i)
    helper = _Helper(str(store), ".tmp-t-", str(tmp_path), max_pixels=1)
    moves = [b".tmp-t-%d\t%s" % (i, sha.encode()) for i, sha in enumerate(shas)]
    with ThreadPoolExecutor(2) as pool:
        lines = helper.commit(moves, pool)
    assert lines == [b"M " + os.fsencode(store / "bb") + b"\n", b"R 110\n"]
    assert (store / "aa" / shas[0]).read_bytes() == b"x0"
    assert (store / "bb" / shas[1]).read_bytes() == b"x1"
    assert (store / "aa" / shas[2]).read_bytes() == b"stored before"
    assert not list(store.glob(".tmp-*"))
    (store / ".tmp-t-9").write_bytes(b"y")
    (store / "cc").write_bytes(b"in the way")
    with ThreadPoolExecutor(2) as pool:
        failed = helper.commit([b".tmp-t-9\tcc" + b"4" * 62], pool)
    assert failed[-1] == b"R e\n" and failed[0].startswith(b"! ")
    (store / ".tmp-t-8").write_bytes(b"z")
    (store / "aa" / ("aa" + "5" * 62)).mkdir()  # a folder where the blob goes
    with ThreadPoolExecutor(2) as pool:
        failed = helper.commit([b".tmp-t-8\taa" + b"5" * 62], pool)
    assert failed[-1] == b"R e\n" and (store / ".tmp-t-8").read_bytes() == b"z"


def _same_with_and_without_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int], root: Path, fmt: str
) -> int:
    """Import ``root`` with the helper, then without it: the same content hash, problems,
    items and blobs, and no temp file left; returns how many images the helper staged."""
    ws = Workspace.open(tmp_path / "with", create=True)
    first = import_dataset(ws, root, "d", fmt)
    staged = helper_on[0]
    monkeypatch.setattr(image_prefetch, "PREFETCH_MIN_IMAGES", 10**9)
    other = Workspace.open(tmp_path / "without", create=True)
    second = import_dataset(other, root, "d", fmt)
    assert helper_on[0] == staged  # the helper did not start
    assert first["content_hash"] == second["content_hash"]
    assert first["problems"] == second["problems"]
    assert _stored(ws) == _stored(other)
    assert _leftovers(ws) == []
    return staged


def test_a_yolo_folder_imports_the_same_with_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int]
) -> None:
    root = tmp_path / "yolo"
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(70):
        _image(root / "images" / "train" / f"y{i:03d}.png", 300 + i)
        (root / "labels" / "train" / f"y{i:03d}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text("names: [a, b]\n")
    assert _same_with_and_without_the_helper(tmp_path, monkeypatch, helper_on, root, "yolo") == 70


@pytest.mark.parametrize("fmt", ["voc", "cvat", "labelstudio", "createml"])
def test_every_format_imports_the_same_with_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int], fmt: str
) -> None:
    """A reader that announces its images as it parses (VOC, CVAT, Label Studio, Create ML)
    stores what an import without the helper does."""
    base = Workspace.open(tmp_path / "ws0", create=True)
    import_dataset(base, _coco(tmp_path / "src", 60), "d", "coco")
    export_dataset(base, "d", fmt, tmp_path / fmt)
    helper_on[0] = 0
    staged = _same_with_and_without_the_helper(
        tmp_path, monkeypatch, helper_on, tmp_path / fmt, fmt
    )
    assert staged >= 55  # every PNG and JPEG the export wrote (the BMP is the importer's)


def test_an_image_folder_is_read_by_the_helper_and_the_importer_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_on: list[int]
) -> None:
    """No reader announces an image folder's files: the helper gets them when the images
    are inspected, and reads them beside the importer."""
    root = tmp_path / "classes"
    for i in range(50):
        _image(root / ("cat" if i % 3 else "dog") / f"c{i:03d}.png", 500 + i)
    staged = _same_with_and_without_the_helper(
        tmp_path, monkeypatch, helper_on, root, "imagefolder"
    )
    assert staged == 50


def test_paths_the_helper_staged_skip_the_importers_link_test(tmp_path: Path) -> None:
    """Only images the helper staged (opened as plain files, not following links) are
    spared the importer's lstat; a link it answered ``-`` for is still resolved in full."""
    from desktop_app.core.dataset_records import check_inside

    prefetch = ImagePrefetch(BlobBatch(BlobStore(tmp_path / "blobs")), min_images=1)
    prefetch._paths = ["/d/a.png", "/d/link.png", "/d/c.png"]
    prefetch._answers = {0: b"+x 1 1 1", 1: b"-"}
    assert prefetch.opened() == frozenset({"/d/a.png"})

    root = (tmp_path / "data").resolve()
    root.mkdir()
    outside = tmp_path / "x.png"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "link.png")
    with pytest.raises(DatasetFormatError, match="outside the dataset folder"):
        check_inside(root, root / "link.png", "here", {})
    check_inside(root, root / "link.png", "here", {}, not_a_link=True)  # the caller's word
