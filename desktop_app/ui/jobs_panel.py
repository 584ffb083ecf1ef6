"""The jobs panel: every job with its status, progress (epoch i/N), ETA and a cancel button.

A timer polls ``desktop_app.core.jobs`` off the UI thread. Jobs run as child processes: by
default a background ``outpost jobs work`` worker starts and follows them (started here when
a job is queued and no worker runs), so closing the window never stops a training run. A
panel given a :class:`~desktop_app.core.jobs.JobManager` leads the workspace's jobs itself
instead, stepping it on each poll (tests use this with their own job kinds).
"""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QSize, QTimer, Signal
from PySide6.QtWidgets import (
    QDockWidget,
    QHeaderView,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from desktop_app.core import jobs
from desktop_app.core.jobs import ACTIVE, JobInfo, JobManager
from desktop_app.ui.context import StudioContext

POLL_MS = 1000
DEFAULT_ROWS = 5  # the dock's default height shows about this many jobs
COLUMNS = ["Job", "Kind", "Status", "Progress", "ETA", "Started", ""]


def format_eta(seconds: Any) -> str:
    """``eta_s`` as ``1h 02m``, ``3m 05s`` or ``42s``; empty when unknown."""
    if seconds is None:
        return ""
    s = max(0, int(round(float(seconds))))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def progress_of(job: JobInfo) -> tuple[int, int, str]:
    """(done, total, text) for a job's progress bar; total 0 when it is not known."""
    p = job.progress or {}
    if job.kind == "export" and int(p.get("formats_total") or 0) > 0:
        done, total = int(p.get("formats_done") or 0), int(p["formats_total"])
        return done, total, f"{done}/{total} formats"
    epochs = int(p.get("epochs") or 0)
    epoch = int(p.get("epoch") or 0)
    if epochs > 0:
        return epoch, epochs, f"epoch {epoch}/{epochs}"
    if job.status == "completed":
        return 1, 1, "done"
    return 0, 0, job.status


class JobsPanel(QDockWidget):
    """A dock listing every job of the workspace (newest first).

    Signals:
        refreshed(list): the jobs shown after a poll (``JobInfo`` objects).
    """

    refreshed = Signal(list)

    def __init__(
        self,
        ctx: StudioContext,
        parent: QWidget | None = None,
        *,
        manager: JobManager | None = None,
        poll_ms: int = POLL_MS,
    ) -> None:
        super().__init__("Jobs", parent)
        self.setObjectName("jobs_panel")
        self.ctx = ctx
        self.manager = manager
        self._lock = threading.Lock()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.setWidget(self.table)
        self.jobs: list[JobInfo] = []
        self._polling = False
        self.timer = QTimer(self)
        self.timer.setInterval(poll_ms)
        self.timer.timeout.connect(self.poll)
        self.timer.start()
        ctx.changed.connect(lambda topic: self.poll() if topic in ("jobs", "runs") else None)

    # ---- size --------------------------------------------------------------------------

    def default_height(self, rows: int = DEFAULT_ROWS) -> int:
        """Pixels for the title bar, the table header and ``rows`` job rows."""
        table = self.table
        title = self.style().pixelMetric(self.style().PixelMetric.PM_TitleBarHeight, None, self)
        title = max(title, self.fontMetrics().height() + 8)
        header = table.horizontalHeader().sizeHint().height()
        frame = 2 * table.frameWidth() + 4
        return title + header + rows * table.verticalHeader().defaultSectionSize() + frame

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        """About :data:`DEFAULT_ROWS` rows high: the areas above keep the rest."""
        return QSize(super().sizeHint().width(), self.default_height())

    # ---- polling -----------------------------------------------------------------------

    def poll(self) -> None:
        """Read the jobs (and step the manager, when this panel leads) off the UI thread."""
        if self._polling:
            return
        self._polling = True
        self.ctx.run(self._read, on_done=self._show, on_error=self._poll_failed)

    def _read(self) -> list[JobInfo]:
        ws = self.ctx.workspace
        with self._lock:
            if self.manager is not None:
                self.manager.step()
            found = jobs.list_jobs(ws)
            if self.manager is None and any(j.status == "queued" for j in found):
                jobs.spawn_worker(ws)
        return found

    def _poll_failed(self, exc: BaseException) -> None:
        self._polling = False
        self.setWindowTitle(f"Jobs — cannot read jobs: {exc}")

    def _show(self, found: list[JobInfo]) -> None:
        self._polling = False
        before = {j.id: j.status for j in self.jobs}
        self.jobs = list(reversed(found))
        active = sum(j.status in ACTIVE for j in self.jobs)
        self.setWindowTitle(f"Jobs ({active} active)" if active else "Jobs")
        self.table.setRowCount(len(self.jobs))
        for row, job in enumerate(self.jobs):
            self._fill_row(row, job)
        if any(before.get(j.id) not in (None, j.status) for j in self.jobs):
            self.ctx.changed.emit("runs")
        self.refreshed.emit(self.jobs)

    def _fill_row(self, row: int, job: JobInfo) -> None:
        def cell(col: int, text: str) -> None:
            item = QTableWidgetItem(text)
            if col == 2 and job.error:
                item.setToolTip(job.error)
            self.table.setItem(row, col, item)

        cell(0, job.id)
        cell(1, job.kind)
        cell(
            2,
            job.status + (" (cancelling)" if job.cancel_requested and job.status in ACTIVE else ""),
        )
        done, total, text = progress_of(job)
        bar = QProgressBar()
        bar.setRange(0, total if total > 0 else (0 if job.status == "running" else 1))
        bar.setValue(done if total > 0 else 0)
        bar.setFormat(text)
        bar.setTextVisible(True)
        self.table.setCellWidget(row, 3, bar)
        eta = job.progress.get("eta_s") if job.status == "running" else None
        cell(4, format_eta(eta))
        cell(5, (job.started_at or "")[:19].replace("T", " "))
        if job.status in ACTIVE:
            button = QPushButton("Cancel")
            button.setToolTip(f"Cancel {job.id}")
            button.clicked.connect(lambda _checked=False, jid=job.id: self.cancel(jid))
            self.table.setCellWidget(row, 6, button)
        else:
            self.table.removeCellWidget(row, 6)
            cell(6, "")

    # ---- cancel ------------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """Cancel a job (off the UI thread): a queued one at once, a running one by signal."""
        for row, job in enumerate(self.jobs):
            if job.id == job_id:
                widget = self.table.cellWidget(row, 6)
                if widget is not None:
                    widget.setEnabled(False)
        self.ctx.run(self._cancel, job_id, on_done=lambda _j: self.poll())

    def _cancel(self, job_id: str) -> JobInfo:
        with self._lock:
            if self.manager is not None:
                return self.manager.cancel(job_id)
            with JobManager(self.ctx.workspace) as manager:
                return manager.cancel(job_id)

    def row_of(self, job_id: str) -> int:
        """The table row of a job, or -1."""
        return next((i for i, j in enumerate(self.jobs) if j.id == job_id), -1)

    def stop(self) -> None:
        """Stop polling; a leading manager hands running jobs to a background worker."""
        self.timer.stop()
        if self.manager is not None:
            with self._lock:
                self.manager.close()
                if any(j.status in ACTIVE for j in jobs.list_jobs(self.ctx.workspace)):
                    jobs.spawn_worker(self.ctx.workspace)
