"""Export: a wizard (run, formats, precision with the INT8 calibration note), the format
capability matrix, and every export with its parity results, versions and default.

The wizard queues an export job (``desktop_app.core.export_jobs.submit_export``): the export
runs in a child process under the job queue (never in the Studio's own process, so a crash
in native export code cannot take the window down), shows in the jobs panel and validates
each package against the PyTorch model. The page follows the job (formats done of all) and
reloads its exports when the job ends.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from desktop_app.core import studio_ops
from desktop_app.core.export_jobs import export_progress, submit_export
from desktop_app.core.exports import delete_export, list_exports, set_default_export
from desktop_app.core.jobs import ACTIVE, JobInfo, JobManager, get_job
from desktop_app.core.training import list_runs
from desktop_app.ui.context import StudioContext, error_text

FOLLOW_MS = 500
CAPABILITY_COLUMNS = ("format", "runtime", "precisions", "tasks", "frameworks", "here")
EXPORT_COLUMNS = (
    "export",
    "run",
    "format",
    "precision",
    "status",
    "default",
    "parity",
    "accuracy",
    "p50 ms",
)
INT8_NOTE = (
    "INT8 is calibrated on up to 300 training images of the run's dataset version, then "
    "checked against the PyTorch model on its validation images; an export whose accuracy "
    "drops beyond the INT8 tolerance is kept but marked failed_validation (not deployable)."
)


def _parity_text(validation: dict[str, Any] | None) -> str:
    if not validation:
        return ""
    if "matched" in validation and "reference_detections" in validation:
        total = max(
            int(validation.get("reference_detections") or 0),
            int(validation.get("export_detections") or 0),
        )
        box = validation.get("max_box_deviation_px")
        box_text = f", box {float(box):.2f} px" if isinstance(box, (int, float)) else ""
        return f"{validation['matched']}/{total} matched{box_text}"
    if "passed" in validation:
        return "passed" if validation["passed"] else "failed"
    return ""


class FormatsPage(QWizardPage):
    """Step 1: the run and the formats (unavailable ones say what to install)."""

    def __init__(
        self, runs: list[dict[str, Any]], capabilities: list[dict[str, Any]], run_id: str | None
    ) -> None:
        super().__init__()
        self.setTitle("Run and formats")
        self.setSubTitle("Pick a completed run and one or more formats.")
        self.run_box = QComboBox()
        for run in runs:
            self.run_box.addItem(
                f"{run['id']}  {run['model']}  {run.get('dataset') or ''}", run["id"]
            )
        if run_id is not None:
            index = self.run_box.findData(run_id)
            if index >= 0:
                self.run_box.setCurrentIndex(index)
        self.format_list = QListWidget()
        self.capabilities = {c["key"]: c for c in capabilities}
        for cap in capabilities:
            item = QListWidgetItem(f"{cap['title']} ({cap['key']}) — {cap['runtime']}")
            item.setData(Qt.ItemDataRole.UserRole, cap["key"])
            if cap["available"]:
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(
                    Qt.CheckState.Checked if cap["key"] == "onnx" else Qt.CheckState.Unchecked
                )
            else:
                item.setFlags(Qt.ItemFlag.NoItemFlags)
                item.setText(
                    f"{item.text()} — needs {', '.join(cap['missing'])} "
                    f"(pip install 'outpost[{cap['extra']}]')"
                )
            item.setToolTip(str(cap.get("notes", "")))
            self.format_list.addItem(item)
        self.format_list.itemChanged.connect(lambda _i: self.completeChanged.emit())
        self.run_box.currentIndexChanged.connect(lambda _i: self.completeChanged.emit())
        layout = QFormLayout(self)
        layout.addRow("Run", self.run_box)
        layout.addRow("Formats", self.format_list)

    def formats(self) -> list[str]:
        """The checked formats' keys."""
        out = []
        for row in range(self.format_list.count()):
            item = self.format_list.item(row)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(str(item.data(Qt.ItemDataRole.UserRole)))
        return out

    def set_formats(self, keys: list[str]) -> None:
        """Check exactly these formats (those available here)."""
        for row in range(self.format_list.count()):
            item = self.format_list.item(row)
            if item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
                key = item.data(Qt.ItemDataRole.UserRole)
                item.setCheckState(
                    Qt.CheckState.Checked if key in keys else Qt.CheckState.Unchecked
                )

    def run_id(self) -> str | None:
        """The chosen run's id."""
        data = self.run_box.currentData()
        return str(data) if data else None

    def isComplete(self) -> bool:  # noqa: N802 - Qt API
        return self.run_id() is not None and bool(self.formats())


class PrecisionPage(QWizardPage):
    """Step 2: the precision every chosen format offers, the input size, the INT8 note."""

    def __init__(self, formats_page: FormatsPage) -> None:
        super().__init__()
        self.formats_page = formats_page
        self.setTitle("Precision")
        self.precision_box = QComboBox()
        self.imgsz_box = QSpinBox()
        self.imgsz_box.setRange(0, 4096)
        self.imgsz_box.setSingleStep(32)
        self.imgsz_box.setSpecialValueText("as trained")
        self.note = QLabel()
        self.note.setWordWrap(True)
        layout = QFormLayout(self)
        layout.addRow("Precision", self.precision_box)
        layout.addRow("Input size", self.imgsz_box)
        layout.addRow(self.note)
        self.precision_box.currentTextChanged.connect(self._note)

    def initializePage(self) -> None:  # noqa: N802 - Qt API
        caps = self.formats_page.capabilities
        chosen = self.formats_page.formats()
        shared: list[str] = []
        for precision in ("fp32", "fp16", "int8"):
            if all(precision in caps[key]["precisions"] for key in chosen):
                shared.append(precision)
        self.precision_box.clear()
        self.precision_box.addItems(shared or ["fp32"])
        self._note(self.precision_box.currentText())

    def _note(self, precision: str) -> None:
        if precision == "int8":
            self.note.setText(INT8_NOTE)
        elif precision == "fp16":
            self.note.setText("FP16 halves the weights; parity is checked with FP16 tolerances.")
        else:
            self.note.setText("FP32: the export must match the PyTorch model within tolerance.")

    def precision(self) -> str:
        """The chosen precision."""
        return self.precision_box.currentText() or "fp32"

    def imgsz(self) -> int | None:
        """The input size, or None for the run's training size."""
        return self.imgsz_box.value() or None


class ExportWizard(QWizard):
    """Run → formats → precision; ``request()`` is what to export when it is accepted."""

    def __init__(
        self,
        runs: list[dict[str, Any]],
        capabilities: list[dict[str, Any]],
        run_id: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export a run")
        self.formats_page = FormatsPage(runs, capabilities, run_id)
        self.precision_page = PrecisionPage(self.formats_page)
        self.addPage(self.formats_page)
        self.addPage(self.precision_page)

    def request(self) -> dict[str, Any]:
        """``{"run", "formats", "precision", "imgsz"}`` as chosen."""
        return {
            "run": self.formats_page.run_id(),
            "formats": self.formats_page.formats(),
            "precision": self.precision_page.precision(),
            "imgsz": self.precision_page.imgsz(),
        }


def _load(ctx: StudioContext) -> dict[str, Any]:
    return {
        "capabilities": studio_ops.export_capabilities(),
        "exports": list_exports(ctx.workspace),
        "runs": [r for r in list_runs(ctx.workspace) if r["status"] == "completed"],
    }


def _submit(ctx: StudioContext, request: dict[str, Any], manager: JobManager | None) -> JobInfo:
    """Queue the export job; a background worker runs it unless a manager leads here."""
    job = submit_export(
        ctx.workspace,
        request["run"],
        request["formats"],
        imgsz=request["imgsz"],
        precision=request["precision"],
    )
    if manager is None:
        studio_ops.ensure_worker(ctx.workspace)
    return job


def _follow(ctx: StudioContext, job_id: str, manager: JobManager | None) -> JobInfo:
    if manager is not None:
        manager.step()
    return get_job(ctx.workspace, job_id)


def job_text(job: JobInfo) -> str:
    """The status line of an export job: queued, ``1/2 formats``, or how it ended."""
    run = job.spec.get("run_id", "")
    formats = ", ".join(str(f) for f in job.spec.get("formats") or [])
    if job.status == "queued":
        return f"export job {job.id} queued: {run} to {formats}"
    done, total = export_progress(job)
    if job.status == "running":
        now = job.progress.get("format")
        where = f", now {now}" if now else ""
        return f"exporting {run} to {formats}: {done}/{total or '?'} formats{where} ({job.id})"
    states = ", ".join(
        f"{f.get('format')}: {f.get('status')}" for f in job.progress.get("formats") or []
    )
    if job.status == "completed":
        return f"export finished — {states}"
    return f"export {job.status}: {job.error or states}"


class ExportPage(QWidget):
    """Exports and the capability matrix."""

    title = "Export"
    topics = ("runs", "exports")

    def __init__(
        self,
        ctx: StudioContext,
        parent: QWidget | None = None,
        *,
        manager: JobManager | None = None,
        follow_ms: int = FOLLOW_MS,
    ) -> None:
        """``manager``: step this job manager while following a job (tests); by default a
        background worker runs export jobs, as the jobs panel's."""
        super().__init__(parent)
        self.ctx = ctx
        self.manager = manager
        self.capabilities: list[dict[str, Any]] = []
        self.exports: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.wizard: ExportWizard | None = None
        self.last_results: list[dict[str, Any]] | None = None
        self.exporting = False
        self.job: JobInfo | None = None
        self._following = False
        self.follow_timer = QTimer(self)
        self.follow_timer.setInterval(follow_ms)
        self.follow_timer.timeout.connect(self._follow_job)

        self.new_button = QPushButton("Export…")
        self.default_button = QPushButton("Set default")
        self.delete_button = QPushButton("Delete")
        self.refresh_button = QPushButton("Refresh")
        self.status_label = QLabel()
        bar = QHBoxLayout()
        for button in (
            self.new_button,
            self.default_button,
            self.delete_button,
            self.refresh_button,
        ):
            bar.addWidget(button)
        bar.addStretch(1)
        bar.addWidget(self.status_label)

        self.exports_table = self._table(EXPORT_COLUMNS)
        self.exports_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.parity_table = self._table(("check", "value"))
        self.capability_table = self._table(CAPABILITY_COLUMNS)
        lower = QSplitter(Qt.Orientation.Horizontal)
        parity_box = QWidget()
        parity_layout = QVBoxLayout(parity_box)
        parity_layout.addWidget(QLabel("Parity and accuracy of the selected export"))
        parity_layout.addWidget(self.parity_table)
        caps_box = QWidget()
        caps_layout = QVBoxLayout(caps_box)
        caps_layout.addWidget(QLabel("Capability matrix"))
        caps_layout.addWidget(self.capability_table)
        lower.addWidget(parity_box)
        lower.addWidget(caps_box)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.exports_table)
        split.addWidget(lower)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(split, 1)

        self.new_button.clicked.connect(self.open_wizard)
        self.default_button.clicked.connect(self.make_default)
        self.delete_button.clicked.connect(self.delete_selected)
        self.refresh_button.clicked.connect(self.refresh)
        self.exports_table.itemSelectionChanged.connect(self._selection_changed)
        ctx.changed.connect(self._on_changed)
        self._selection_changed()

    @staticmethod
    def _table(columns: tuple[str, ...]) -> QTableWidget:
        table = QTableWidget(0, len(columns))
        table.setHorizontalHeaderLabels(list(columns))
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        table.horizontalHeader().setStretchLastSection(True)
        return table

    def _on_changed(self, topic: str) -> None:
        if topic in self.topics:
            self.refresh()

    def refresh(self) -> None:
        """Reload the capability matrix, the exports and the completed runs."""
        self.ctx.run(_load, self.ctx, on_done=self._show)

    def _show(self, data: dict[str, Any]) -> None:
        self.capabilities = data["capabilities"]
        self.runs = data["runs"]
        selected = self.selected_export()
        self.exports = list(reversed(data["exports"]))
        self.capability_table.setRowCount(len(self.capabilities))
        for row, cap in enumerate(self.capabilities):
            here = "yes" if cap["available"] else f"needs {', '.join(cap['missing'])}"
            cells = (
                cap["title"],
                cap["runtime"],
                ", ".join(cap["precisions"]),
                ", ".join(cap["tasks"]),
                ", ".join(cap["frameworks"]),
                here,
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(str(cap.get("notes", "")))
                self.capability_table.setItem(row, col, item)
        self.exports_table.blockSignals(True)
        self.exports_table.setRowCount(len(self.exports))
        for row, e in enumerate(self.exports):
            acc = e.get("accuracy") or {}
            lat = e.get("latency") or {}
            row_cells: tuple[str, ...] = (
                e["id"],
                e["run_id"],
                e["format"],
                e["precision"],
                e["status"],
                "★" if e["default"] else "",
                _parity_text(e.get("validation")),
                f"{acc['export']:.3f} ({acc.get('metric')})" if "export" in acc else "",
                f"{lat['p50_ms']:.2f}" if isinstance(lat.get("p50_ms"), (int, float)) else "",
            )
            for col, text in enumerate(row_cells):
                self.exports_table.setItem(row, col, QTableWidgetItem(str(text)))
            if selected is not None and e["id"] == selected["id"]:
                self.exports_table.selectRow(row)
        self.exports_table.blockSignals(False)
        self.new_button.setEnabled(bool(self.runs) and not self.exporting)
        self._selection_changed()

    def selected_export(self) -> dict[str, Any] | None:
        """The selected export's row, or None."""
        rows = {i.row() for i in self.exports_table.selectedIndexes()}
        if not rows:
            return None
        row = min(rows)
        return self.exports[row] if row < len(self.exports) else None

    def select_export(self, export_id: str) -> None:
        """Select an export's row."""
        for row, e in enumerate(self.exports):
            if e["id"] == export_id:
                self.exports_table.selectRow(row)

    def _selection_changed(self) -> None:
        e = self.selected_export()
        self.default_button.setEnabled(e is not None and e["status"] == "completed")
        self.delete_button.setEnabled(e is not None)
        rows: list[tuple[str, str]] = []
        if e is not None:
            rows.append(("status", str(e["status"])))
            if e.get("error"):
                rows.append(("error", str(e["error"])))
            for key, value in (e.get("validation") or {}).items():
                if key == "accuracy" and isinstance(value, dict):
                    for k, v in value.items():
                        rows.append((f"accuracy.{k}", str(v)))
                else:
                    rows.append((str(key), str(value)))
            for key, value in (e.get("latency") or {}).items():
                rows.append((f"latency.{key}", str(value)))
            rows.append(("package", str(e.get("package") or "")))
        self.parity_table.setRowCount(len(rows))
        for r, (k, v) in enumerate(rows):
            self.parity_table.setItem(r, 0, QTableWidgetItem(k))
            self.parity_table.setItem(r, 1, QTableWidgetItem(v))

    # --- actions -----------------------------------------------------------------------------

    def open_wizard(self, run_id: str | None = None) -> ExportWizard:
        """Show the export wizard (for ``run_id`` when given)."""
        wizard = ExportWizard(self.runs, self.capabilities, run_id or None, self)
        wizard.accepted.connect(lambda: self.start_export(wizard.request()))
        self.wizard = wizard
        wizard.open()
        return wizard

    def start_export(self, request: dict[str, Any]) -> None:
        """Queue the export job (checked first: a refused export shows a dialog); the page
        follows it and reloads the exports when it ends."""
        if not request.get("run") or not request.get("formats"):
            return
        self.exporting = True
        self.new_button.setEnabled(False)
        self.status_label.setText(
            f"queueing the export of {request['run']} to {', '.join(request['formats'])} "
            f"({request['precision']}) …"
        )

        def queued(job: JobInfo) -> None:
            self.job = job
            self.status_label.setText(job_text(job))
            self.ctx.changed.emit("jobs")
            self.follow_timer.start()

        def failed(exc: BaseException) -> None:
            self.exporting = False
            self.new_button.setEnabled(bool(self.runs))
            self.status_label.setText(error_text(exc))
            self.ctx.show_error(exc, self)

        self.ctx.run(_submit, self.ctx, request, self.manager, on_done=queued, on_error=failed)

    def _follow_job(self) -> None:
        if self.job is None or self._following:
            return
        self._following = True
        self.ctx.run(
            _follow,
            self.ctx,
            self.job.id,
            self.manager,
            on_done=self._job_state,
            on_error=self._follow_failed,
        )

    def _follow_failed(self, exc: BaseException) -> None:
        self._following = False
        self.status_label.setText(f"cannot follow the export job: {error_text(exc)}")

    def _job_state(self, job: JobInfo) -> None:
        self._following = False
        self.job = job
        self.status_label.setText(job_text(job))
        if job.status in ACTIVE:
            return
        self.follow_timer.stop()
        self.exporting = False
        self.last_results = list(job.progress.get("exports") or job.progress.get("formats") or [])
        self.ctx.changed.emit("exports")
        self.refresh()

    def make_default(self) -> None:
        """Make the selected export its run's default."""
        e = self.selected_export()
        if e is None:
            return
        self.ctx.run(
            set_default_export,
            self.ctx.workspace,
            e["id"],
            on_done=lambda _r: self.ctx.changed.emit("exports"),
        )

    def delete_selected(self, *, confirm: bool = True) -> None:
        """Delete the selected export (asking first; a deployed one needs a second yes)."""
        e = self.selected_export()
        if e is None:
            return
        if confirm:
            answer = QMessageBox.question(
                self, "Delete export", f"Delete export {e['id']} ({e['format']}) and its package?"
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.ctx.run(
            delete_export,
            self.ctx.workspace,
            e["id"],
            on_done=lambda _r: self.ctx.changed.emit("exports"),
        )
