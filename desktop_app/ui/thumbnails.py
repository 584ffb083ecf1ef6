"""Lazy thumbnails: made on a thread pool, cached on disk under the workspace and in memory.

A thumbnail is the stored image scaled to fit ``size`` × ``size``, saved as JPEG at
``<workspace>/cache/thumbs/<sha256>_<size>.jpg`` (written under a temp name and renamed, so
a half-written file is never read). The loader decodes with ``QImageReader`` and a scaled
size, which JPEG decodes at a fraction of the full cost; it works on ``QImage`` only (safe
off the UI thread) and turns images into pixmaps on the UI thread.

Requests are served newest first and the queue is capped, so scrolling quickly through a
large grid only makes the thumbnails that are still on screen.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage, QImageReader, QPixmap

THUMB_DIR = Path("cache") / "thumbs"
DEFAULT_SIZE = 128
MEMORY_ITEMS = 3000  # pixmaps kept in memory
QUEUE_CAP = 512  # pending requests kept (newest win)
NICE = 10  # scheduling niceness of the thumbnail threads (Linux)


def thumbnail_path(workspace_root: Path, sha256: str, size: int) -> Path:
    """Where the thumbnail of an image (by content hash) at ``size`` pixels is cached."""
    return workspace_root / THUMB_DIR / f"{sha256}_{size}.jpg"


def make_thumbnail(source: Path, dest: Path, size: int) -> QImage:
    """Decode ``source`` scaled to fit ``size`` × ``size``, save it at ``dest``, return it.

    A cached ``dest`` is read instead when it exists. Thread-safe (QImage only).

    Raises:
        OSError: the image cannot be read or the thumbnail cannot be written.
    """
    if dest.is_file():
        cached = QImage(str(dest))
        if not cached.isNull():
            return cached
    reader = QImageReader(str(source))
    reader.setAutoTransform(True)
    full = reader.size()
    if full.isValid() and (full.width() > size or full.height() > size):
        reader.setScaledSize(full.scaled(QSize(size, size), Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        raise OSError(f"cannot read image {source.name}: {reader.errorString()}")
    if image.width() > size or image.height() > size:
        image = image.scaled(
            size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if not image.save(str(tmp), "JPG", 85):  # type: ignore[call-overload]
            raise OSError(f"cannot write thumbnail {dest}")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return image


def _lower_thread_priority() -> None:
    """Make the calling thread yield the CPU to the UI thread (Linux: a per-thread nice).

    Thumbnails are background work: on a busy machine (a training job on every core) the
    window should stay smooth and the thumbnails come a little later.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), NICE))


class _Signals(QObject):
    ready = Signal(str, QImage)
    failed = Signal(str, str)


class _Drain(QRunnable):
    """Takes the newest pending request until none is left."""

    def __init__(self, loader: ThumbnailLoader) -> None:
        super().__init__()
        self.loader = loader

    def run(self) -> None:
        _lower_thread_priority()
        while True:
            job = self.loader._next()
            if job is None:
                return
            sha, source = job
            try:
                image = make_thumbnail(
                    source,
                    thumbnail_path(self.loader.root, sha, self.loader.size),
                    self.loader.size,
                )
            except Exception as exc:  # noqa: BLE001 - a bad image must not stop the queue
                self.loader._emit(failed=(sha, str(exc) or type(exc).__name__))
            else:
                self.loader._emit(ready=(sha, image))


class ThumbnailLoader(QObject):
    """Makes thumbnails off the UI thread and keeps the recent ones as pixmaps.

    Signals:
        ready(str): the thumbnail of this sha256 is now available from :meth:`pixmap`.
        failed(str, str): it could not be made (sha256, one-line reason).
    """

    ready = Signal(str)
    failed = Signal(str, str)

    def __init__(
        self,
        workspace_root: Path,
        size: int = DEFAULT_SIZE,
        threads: int = 1,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.root = workspace_root
        self.size = size
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max(1, threads))
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, Path] = OrderedDict()
        self._in_flight: set[str] = set()
        self._workers = 0
        self._pixmaps: OrderedDict[str, QPixmap] = OrderedDict()
        self._bad: dict[str, str] = {}
        self._signals = _Signals()
        self._signals.ready.connect(self._on_ready)
        self._signals.failed.connect(self._on_failed)
        self.made = 0
        self._closed = False

    def pixmap(self, sha256: str) -> QPixmap | None:
        """The thumbnail when it is in memory, else None (see :meth:`request`)."""
        pm = self._pixmaps.get(sha256)
        if pm is not None:
            self._pixmaps.move_to_end(sha256)
        return pm

    def error(self, sha256: str) -> str | None:
        """Why this image has no thumbnail, when making it failed."""
        return self._bad.get(sha256)

    def request(self, sha256: str, source: Path) -> None:
        """Make (or read from the disk cache) the thumbnail of ``source`` in the background."""
        if sha256 in self._pixmaps or sha256 in self._bad:
            return
        with self._lock:
            if sha256 in self._in_flight:
                return
            self._pending[sha256] = source
            self._pending.move_to_end(sha256)
            while len(self._pending) > QUEUE_CAP:
                self._pending.popitem(last=False)
            start = self._workers < self.pool.maxThreadCount()
            if start:
                self._workers += 1
        if start:
            self.pool.start(_Drain(self))

    def pending(self) -> int:
        """Requests not finished yet."""
        with self._lock:
            return len(self._pending) + len(self._in_flight)

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until every request is made (tests and benchmarks)."""
        return bool(self.pool.waitForDone(msecs))

    def clear(self) -> None:
        """Drop queued requests and the in-memory pixmaps (a workspace change)."""
        with self._lock:
            self._pending.clear()
        self._pixmaps.clear()
        self._bad.clear()

    def shutdown(self, msecs: int = 10_000) -> None:
        """Drop queued requests and wait for the ones being made (closing the window)."""
        with self._lock:
            self._pending.clear()
            self._closed = True
        self.pool.waitForDone(msecs)

    def _emit(
        self, ready: tuple[str, QImage] | None = None, failed: tuple[str, str] | None = None
    ) -> None:
        if self._closed:
            return
        try:
            if ready is not None:
                self._signals.ready.emit(*ready)
            elif failed is not None:
                self._signals.failed.emit(*failed)
        except RuntimeError:  # the loader went away while this thumbnail was being made
            return

    def _next(self) -> tuple[str, Path] | None:
        with self._lock:
            if not self._pending:
                self._workers -= 1
                return None
            sha, source = self._pending.popitem(last=True)
            self._in_flight.add(sha)
            return sha, source

    def _on_ready(self, sha: str, image: QImage) -> None:
        with self._lock:
            self._in_flight.discard(sha)
        self._pixmaps[sha] = QPixmap.fromImage(image)
        while len(self._pixmaps) > MEMORY_ITEMS:
            self._pixmaps.popitem(last=False)
        self.made += 1
        self.ready.emit(sha)

    def _on_failed(self, sha: str, reason: str) -> None:
        with self._lock:
            self._in_flight.discard(sha)
        self._bad[sha] = reason
        self.failed.emit(sha, reason)
