"""When a loop over many small files should leave the calling thread for a thread pool.

On a fast file system (a local SSD, tmpfs) reading, hashing and writing a small image is
CPU-bound work of tens of microseconds, where more threads only contend for the GIL and the
folders' locks; on a slow one (a network share, a busy disk) each file waits hundreds of
microseconds or more, and threads overlap those waits. :class:`Pace` measures the time per
file in windows of :data:`PACE_WINDOW` files and says when to fan out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

# Past this average time per file, the rest of the files fan out to threads.
SLOW_FILE_S = 150e-6
PACE_WINDOW = 128  # files per measurement


class Pace:
    """Decides, from the measured time per file, when a loop fans out to threads.

    Once the files of the last window took more than :data:`SLOW_FILE_S` each on average,
    ``fan_out`` is set (and stays set). Not ``adaptive`` (the caller fixed a thread count),
    it never is.
    """

    def __init__(self, adaptive: bool) -> None:
        self.adaptive = adaptive
        self.fan_out = False
        self._files = 0
        self._seconds = 0.0

    def add(self, files: int, seconds: float) -> None:
        """Record that ``files`` files took ``seconds``."""
        self._files += files
        self._seconds += seconds
        if self._files >= PACE_WINDOW:
            if self.adaptive and self._seconds / self._files > SLOW_FILE_S:
                self.fan_out = True
            self._files, self._seconds = 0, 0.0


def paced_map(
    fn: Callable[[list[_T]], list[_R]], runs: Sequence[list[_T]], pool: Executor, pace: Pace
) -> Iterator[_R]:
    """``fn`` over ``runs`` of files, the results in order: in the calling thread while the
    files go fast (timed by ``pace``), the remaining runs in ``pool`` once they go slowly
    (from the first run when ``pace`` is not adaptive)."""
    k = 0
    while k < len(runs) and pace.adaptive and not pace.fan_out:
        started = time.perf_counter()
        part = fn(runs[k])
        pace.add(len(part), time.perf_counter() - started)
        yield from part
        k += 1
    for part in pool.map(fn, runs[k:]):
        yield from part
