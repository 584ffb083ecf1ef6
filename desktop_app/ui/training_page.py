"""Training: the new-run dialog (generated from the trainer's schema), the queue, live
per-epoch charts, the job's log, cancel and resume.

Runs are queued with ``desktop_app.core.training.submit_training`` and trained by a job
child process that a background ``outpost jobs work`` worker starts; the page only polls
the workspace (off the UI thread) for progress, metrics and log lines.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core import studio_ops
from desktop_app.core.jobs import JobManager, job_logs
from desktop_app.core.training import TrainOptions, list_runs, resume_run, submit_training
from desktop_app.ui.charts import LineChart
from desktop_app.ui.context import StudioContext, error_text
from desktop_app.ui.text import clean_log, metric_text, read_log_tail

POLL_MS = 1000
ACTIVE = ("queued", "running")
QUEUE_COLUMNS = ("run", "status", "model", "dataset", "epoch", "ETA", "primary metric")


def primary_metric_text(run: dict[str, Any]) -> str:
    """A run's headline metric as ``mAP50-95(B) 0.1234`` (empty when it has none yet).

    Core stores it as ``{"key", "value"}`` (from the trainer's validation event); while a
    run trains, the job's progress carries the latest one; a detection run without one
    shows its final mAP50-95.
    """
    for primary in (run.get("primary_metric"), (run.get("progress") or {}).get("primary_metric")):
        text = metric_text(primary)
        if text:
            return text
    fallback = run.get("mAP50-95")  # a detection run without a validation event
    if run.get("task") == "detect" and isinstance(fallback, int | float):
        return f"mAP50-95(B) {float(fallback):.4f}"
    return ""


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class OptionInput(QWidget):
    """One schema field as an input: a line edit, check box or drop-down."""

    def __init__(self, spec: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.name = str(spec["name"])
        self.kind = str(spec["type"])
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.editor: QLineEdit | QCheckBox | QComboBox
        if self.kind == "bool":
            self.editor = QCheckBox()
        elif self.kind == "select":
            self.editor = QComboBox()
            self.editor.addItems([str(c) for c in spec.get("choices", [])])
        else:
            self.editor = QLineEdit()
            low, high = spec.get("minimum"), spec.get("maximum")
            if low is not None or high is not None:
                self.editor.setPlaceholderText(f"{_fmt_value(low)} … {_fmt_value(high)}")
        self.editor.setToolTip(str(spec.get("description", "")))
        layout.addWidget(self.editor, 1)
        self.set_value(spec.get("default"))

    def set_value(self, value: Any) -> None:
        """Show ``value`` (a default or a preset's)."""
        if isinstance(self.editor, QCheckBox):
            self.editor.setChecked(bool(value))
        elif isinstance(self.editor, QComboBox):
            index = self.editor.findText(_fmt_value(value))
            if index >= 0:
                self.editor.setCurrentIndex(index)
        else:
            self.editor.setText(_fmt_value(value))

    def raw_value(self) -> Any:
        """What the person entered, before the schema checks it."""
        if isinstance(self.editor, QCheckBox):
            return self.editor.isChecked()
        if isinstance(self.editor, QComboBox):
            return self.editor.currentText()
        text = self.editor.text().strip()
        if text == "" and self.spec.get("nullable"):
            return None
        return text

    def mark_error(self, message: str | None) -> None:
        """Outline the input in red with the message as its tooltip (None clears)."""
        self.editor.setStyleSheet("border: 1px solid #d62728;" if message else "")
        self.editor.setToolTip(message or str(self.spec.get("description", "")))


class NewRunDialog(QDialog):
    """A new training run: dataset and version, framework and model, preset, and every
    option of the trainer's schema (grouped in tabs; advanced ones behind a check box).

    Args:
        ctx: The Studio context.
        frameworks: ``studio_ops.trainer_frameworks()``.
        schemas: framework key → its schema JSON.
        models: framework key → task → trainable architectures (frameworks missing here
            are listed in the background when chosen).
        datasets: ``studio_ops.dataset_choices()``.
    """

    def __init__(
        self,
        ctx: StudioContext,
        frameworks: list[dict[str, Any]],
        schemas: dict[str, dict[str, Any]],
        models: dict[str, dict[str, list[str]]],
        datasets: list[dict[str, Any]],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("New training run")
        self.ctx = ctx
        self.schemas = schemas
        self.models = models
        self.datasets = {d["name"]: d for d in datasets}
        self.frameworks = {fw["key"]: fw for fw in frameworks}
        self._listing: set[str] = set()
        self.inputs: dict[str, OptionInput] = {}
        self.options: TrainOptions | None = None

        form = QFormLayout()
        self.dataset_box = QComboBox()
        self.dataset_box.addItems(list(self.datasets))
        self.version_box = QComboBox()
        self.framework_box = QComboBox()
        for fw in frameworks:
            self.framework_box.addItem(f"{fw['title']} ({fw['key']})", fw["key"])
        self.model_box = QComboBox()
        self.model_box.setEditable(True)
        self.preset_box = QComboBox()
        self.device_edit = QLineEdit("auto")
        self.device_edit.setToolTip("auto, cpu, or a GPU index such as 0")
        self.experiment_edit = QLineEdit()
        self.experiment_edit.setPlaceholderText("optional: group this run with others")
        self.advanced_box = QCheckBox("Show advanced options")
        form.addRow("Dataset", self.dataset_box)
        form.addRow("Version", self.version_box)
        form.addRow("Framework", self.framework_box)
        form.addRow("Model", self.model_box)
        form.addRow("Preset", self.preset_box)
        form.addRow("Device", self.device_edit)
        form.addRow("Experiment", self.experiment_edit)
        self.tabs = QTabWidget()
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #d62728;")
        self.error_label.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Queue run")
        self.buttons.accepted.connect(self.try_accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced_box)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)

        self.dataset_box.currentTextChanged.connect(self._dataset_changed)
        self.framework_box.currentIndexChanged.connect(self._framework_changed)
        self.preset_box.currentTextChanged.connect(self._apply_preset)
        self.advanced_box.toggled.connect(self._show_advanced)
        self._dataset_changed(self.dataset_box.currentText())
        self._framework_changed()
        self.resize(560, 640)

    # --- building the form from the schema ----------------------------------------------

    @property
    def framework(self) -> str:
        """The chosen trainer's key."""
        return str(self.framework_box.currentData() or "ultralytics")

    def _task(self) -> str | None:
        ds = self.datasets.get(self.dataset_box.currentText())
        return str(ds["task"]) if ds else None

    def _dataset_changed(self, name: str) -> None:
        self.version_box.clear()
        ds = self.datasets.get(name)
        if ds:
            self.version_box.addItems(ds["versions"])
        self._fill_models()

    def models_loaded(self, framework: str) -> bool:
        """Whether a framework's model list is here (it is listed in the background)."""
        return framework in self.models

    def _list_models(self, framework: str) -> None:
        if framework in self.models or framework in self._listing:
            return
        self._listing.add(framework)
        self.model_box.setPlaceholderText("listing models …")

        def done(by_task: dict[str, list[str]]) -> None:
            self._listing.discard(framework)
            self.models[framework] = by_task
            if framework == self.framework:
                self._fill_models()

        def failed(exc: BaseException) -> None:
            self._listing.discard(framework)
            self.error_label.setText(error_text(exc))

        tasks = list(self.frameworks.get(framework, {}).get("tasks", []))
        self.ctx.run(_framework_models, framework, tasks, on_done=done, on_error=failed)

    def _fill_models(self) -> None:
        current = self.model_box.currentText()
        self.model_box.clear()
        self._list_models(self.framework)
        task = self._task() or "detect"
        names = self.models.get(self.framework, {}).get(task, [])
        self.model_box.addItems(names)
        preferred = [n for n in (current, "yolo11n.yaml") if n in names]
        if preferred:
            self.model_box.setCurrentText(preferred[0])

    def _framework_changed(self) -> None:
        schema = self.schemas[self.framework]
        self.tabs.clear()
        self.inputs.clear()
        groups: dict[str, QFormLayout] = {}
        for group in schema.get("groups", []):
            page = QWidget()
            groups[group] = QFormLayout(page)
            self.tabs.addTab(page, group.capitalize())
        for spec in schema["fields"]:
            group = str(spec.get("group", "basics"))
            if group not in groups:
                page = QWidget()
                groups[group] = QFormLayout(page)
                self.tabs.addTab(page, group.capitalize())
            widget = OptionInput(spec)
            label = QLabel(str(spec["name"]))
            label.setToolTip(str(spec.get("description", "")))
            groups[group].addRow(label, widget)
            self.inputs[widget.name] = widget
        for index in range(self.tabs.count() - 1, -1, -1):
            tab = self.tabs.widget(index)
            layout = tab.layout() if tab is not None else None
            if isinstance(layout, QFormLayout) and layout.rowCount() == 0:
                self.tabs.removeTab(index)
        self.preset_box.blockSignals(True)
        self.preset_box.clear()
        self.preset_box.addItem("(none)")
        self.preset_box.addItems(list(schema.get("presets", {})))
        self.preset_box.blockSignals(False)
        self._fill_models()
        self._show_advanced(self.advanced_box.isChecked())

    def _show_advanced(self, shown: bool) -> None:
        for index in range(self.tabs.count()):
            tab = self.tabs.widget(index)
            layout = tab.layout() if tab is not None else None
            if not isinstance(layout, QFormLayout):
                continue
            for row in range(layout.rowCount()):
                field = layout.itemAt(row, QFormLayout.ItemRole.FieldRole)
                widget = field.widget() if field is not None else None
                if isinstance(widget, OptionInput) and widget.spec.get("advanced"):
                    layout.setRowVisible(row, shown)

    def visible_options(self) -> set[str]:
        """The options whose rows are shown (advanced ones only with the check box)."""
        shown: set[str] = set()
        for index in range(self.tabs.count()):
            tab = self.tabs.widget(index)
            layout = tab.layout() if tab is not None else None
            if not isinstance(layout, QFormLayout):
                continue
            for row in range(layout.rowCount()):
                field = layout.itemAt(row, QFormLayout.ItemRole.FieldRole)
                widget = field.widget() if field is not None else None
                if isinstance(widget, OptionInput) and layout.isRowVisible(row):
                    shown.add(widget.name)
        return shown

    def preset(self) -> str | None:
        """The chosen preset, or None."""
        text = self.preset_box.currentText()
        return None if text in ("", "(none)") else text

    def _apply_preset(self) -> None:
        schema = self.schemas[self.framework]
        values = {f["name"]: f.get("default") for f in schema["fields"]}
        values.update(schema.get("presets", {}).get(self.preset() or "", {}))
        for name, value in values.items():
            if name in self.inputs:
                self.inputs[name].set_value(value)

    def set_option(self, name: str, value: Any) -> None:
        """Fill one option's input (as a person would type it)."""
        self.inputs[name].set_value(value)

    # --- validation and the result ------------------------------------------------------

    def validate(self) -> TrainOptions | None:
        """Check every option with the trainer's schema; the options, or None with the
        problems shown (each message names its option)."""
        problems: list[str] = []
        values: dict[str, Any] = {}
        for name, widget in self.inputs.items():
            try:
                values[name] = studio_ops.check_train_option(
                    self.framework, name, widget.raw_value()
                )
                widget.mark_error(None)
            except Exception as exc:  # noqa: BLE001 - a SpecError names the option
                widget.mark_error(error_text(exc))
                problems.append(error_text(exc))
        dataset = self.dataset_box.currentText()
        if not dataset:
            problems.append("pick a dataset (import one in Datasets first)")
        model = self.model_box.currentText().strip()
        if not model:
            problems.append("pick a model")
        if problems:
            self.error_label.setText("\n".join(problems))
            return None
        self.error_label.clear()
        version = self.version_box.currentText()
        defaults = {f["name"]: f.get("default") for f in self.schemas[self.framework]["fields"]}
        defaults.update(
            self.schemas[self.framework].get("presets", {}).get(self.preset() or "", {})
        )
        changed = {k: v for k, v in values.items() if defaults.get(k) != v}
        return TrainOptions(
            dataset=dataset,
            version=None if version in ("", "auto") else version,
            framework=self.framework,
            model=model,
            preset=self.preset(),
            device=self.device_edit.text().strip() or "auto",
            extra=changed,
            experiment=self.experiment_edit.text().strip() or None,
        )

    def try_accept(self) -> None:
        """Accept when every option is valid."""
        options = self.validate()
        if options is not None:
            self.options = options
            self.accept()


def _framework_models(framework: str, tasks: list[str]) -> dict[str, list[str]]:
    """A framework's trainable architectures by task (listing some frameworks takes seconds)."""
    return {task: studio_ops.trainable_models(framework, task) for task in tasks}


def _load_dialog_data(ctx: StudioContext) -> dict[str, Any]:
    frameworks = studio_ops.trainer_frameworks()
    schemas = {fw["key"]: studio_ops.trainer_schema(fw["key"]) for fw in frameworks}
    first = frameworks[0]
    return {
        "frameworks": frameworks,
        "schemas": schemas,
        "models": {first["key"]: _framework_models(first["key"], list(first["tasks"]))},
        "datasets": studio_ops.dataset_choices(ctx.workspace),
    }


def _submit(ctx: StudioContext, options: TrainOptions) -> dict[str, Any]:
    submitted: dict[str, Any] = dict(submit_training(ctx.workspace, options))
    submitted["worker_pid"] = studio_ops.ensure_worker(ctx.workspace)
    return submitted


def _resume(ctx: StudioContext, run_id: str) -> dict[str, Any]:
    job_id = resume_run(ctx.workspace, run_id)
    return {"job": job_id, "run": run_id, "worker_pid": studio_ops.ensure_worker(ctx.workspace)}


def _cancel(ctx: StudioContext, job_id: str) -> str:
    with JobManager(ctx.workspace) as manager:
        return manager.cancel(job_id).status


def _poll(ctx: StudioContext, run_id: str | None) -> dict[str, Any]:
    runs = list_runs(ctx.workspace)
    curves: dict[str, Any] | None = None
    logs: list[str] = []
    if run_id is not None and any(r["id"] == run_id for r in runs):
        curves = studio_ops.run_curves(ctx.workspace, run_id)
        if curves["job_id"]:
            found = job_logs(ctx.workspace, curves["job_id"], tail=0)
            logs = read_log_tail(found["log_path"], 300)
    return {"runs": runs, "curves": curves, "logs": logs, "run_id": run_id}


class TrainingPage(QWidget):
    """The queue of runs, a selected run's live curves and log, and the run actions."""

    title = "Training"
    topics = ("runs", "jobs", "datasets")

    def __init__(self, ctx: StudioContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.dialog: NewRunDialog | None = None
        self.runs: list[dict[str, Any]] = []
        self.last_submitted: dict[str, Any] | None = None
        self._polling = False
        self._selected: str | None = None

        self.new_button = QPushButton("New run…")
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.refresh_button = QPushButton("Refresh")
        self.status_label = QLabel()
        bar = QHBoxLayout()
        for button in (
            self.new_button,
            self.cancel_button,
            self.resume_button,
            self.refresh_button,
        ):
            bar.addWidget(button)
        bar.addStretch(1)
        bar.addWidget(self.status_label)

        self.queue = QTableWidget(0, len(QUEUE_COLUMNS))
        self.queue.setHorizontalHeaderLabels(list(QUEUE_COLUMNS))
        self.queue.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.queue.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.queue.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.queue.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.queue.verticalHeader().setVisible(False)

        self.loss_chart = LineChart("Losses", "epoch", "loss")
        self.metric_chart = LineChart("Validation metrics", "epoch", "value")
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setPlaceholderText("The selected run's log appears here.")
        charts = QSplitter(Qt.Orientation.Horizontal)
        charts.addWidget(self.loss_chart)
        charts.addWidget(self.metric_chart)
        detail = QSplitter(Qt.Orientation.Vertical)
        detail.addWidget(charts)
        detail.addWidget(self.log_view)
        main = QSplitter(Qt.Orientation.Vertical)
        main.addWidget(self.queue)
        main.addWidget(detail)
        main.setStretchFactor(1, 2)

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(main, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.refresh)
        self.new_button.clicked.connect(self.open_new_run)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.resume_button.clicked.connect(self.resume_selected)
        self.refresh_button.clicked.connect(self.refresh)
        self.queue.itemSelectionChanged.connect(self._selection_changed)
        ctx.changed.connect(self._on_changed)
        self._update_buttons()

    # --- refresh --------------------------------------------------------------------------

    def _on_changed(self, topic: str) -> None:
        if topic in self.topics:
            self.refresh()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.timer.start()

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 - Qt API
        super().hideEvent(event)
        self.timer.stop()

    def refresh(self) -> None:
        """Reload the queue and the selected run's curves and log (off the UI thread)."""
        if self._polling:
            return
        self._polling = True
        self.ctx.run(
            _poll, self.ctx, self._selected, on_done=self._show, on_error=self._poll_failed
        )

    def _poll_failed(self, exc: BaseException) -> None:
        self._polling = False
        self.status_label.setText(error_text(exc))

    def _show(self, data: dict[str, Any]) -> None:
        self._polling = False
        self.runs = list(reversed(data["runs"]))  # newest first
        if self._selected is None and self.runs:  # show the newest run's curves at first
            self._selected = str(self.runs[0]["id"])
            QTimer.singleShot(0, self.refresh)
        self.queue.blockSignals(True)
        self.queue.setRowCount(len(self.runs))
        selected_row = -1
        for row, run in enumerate(self.runs):
            progress = run.get("progress") or {}
            epoch = f"{progress['epoch']}/{progress.get('epochs')}" if progress.get("epoch") else ""
            eta = progress.get("eta_s")
            cells = (
                run["id"],
                run["status"],
                run["model"],
                f"{run.get('dataset') or ''} {run.get('dataset_version') or ''}".strip(),
                epoch,
                f"{eta:.0f} s" if isinstance(eta, (int, float)) and run["status"] in ACTIVE else "",
                primary_metric_text(run),
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(str(text))
                item.setData(Qt.ItemDataRole.UserRole, run["id"])
                self.queue.setItem(row, col, item)
            if run["id"] == self._selected:
                selected_row = row
        if selected_row >= 0:
            self.queue.selectRow(selected_row)
        self.queue.blockSignals(False)
        active = sum(1 for r in self.runs if r["status"] in ACTIVE)
        self.status_label.setText(f"{len(self.runs)} runs, {active} queued or running")
        curves = data["curves"]
        if curves is not None and data["run_id"] == self._selected:
            self._show_curves(curves["series"])
            self._show_logs(data["logs"])
        self._update_buttons()

    def _show_curves(self, series: dict[str, list[tuple[float, float]]]) -> None:
        for chart in (self.loss_chart, self.metric_chart):
            for name in chart.series_names():
                if name not in series:
                    chart.remove_series(name)
        for name, points in sorted(series.items()):
            if name.startswith("lr/"):
                continue
            chart = self.loss_chart if "loss" in name else self.metric_chart
            chart.set_series(name, points)

    def _show_logs(self, lines: list[str]) -> None:
        text = "\n".join(clean_log(lines))
        if self.log_view.toPlainText() != text:
            self.log_view.setPlainText(text)
            bar = self.log_view.verticalScrollBar()
            bar.setValue(bar.maximum())

    # --- selection and actions ------------------------------------------------------------

    def selected_run(self) -> dict[str, Any] | None:
        """The selected run's row, or None."""
        return next((r for r in self.runs if r["id"] == self._selected), None)

    def select_run(self, run_id: str) -> None:
        """Select a run (its curves and log load on the next refresh)."""
        self._selected = run_id
        for row in range(self.queue.rowCount()):
            item = self.queue.item(row, 0)
            if item is not None and item.text() == run_id:
                self.queue.selectRow(row)
        self.loss_chart.clear()
        self.metric_chart.clear()
        self.log_view.clear()
        self._update_buttons()
        self.refresh()

    def _selection_changed(self) -> None:
        items = self.queue.selectedItems()
        run_id = items[0].data(Qt.ItemDataRole.UserRole) if items else None
        if run_id != self._selected and run_id is not None:
            self.select_run(str(run_id))

    def _update_buttons(self) -> None:
        run = self.selected_run()
        status = run["status"] if run else None
        self.cancel_button.setEnabled(bool(run and status in ACTIVE and run.get("job_id")))
        self.resume_button.setEnabled(status in ("failed", "cancelled", "orphaned"))

    def open_new_run(self) -> None:
        """Load the schemas, models and datasets, then show the new-run dialog."""
        self.new_button.setEnabled(False)

        def show(data: dict[str, Any]) -> None:
            self.new_button.setEnabled(True)
            dialog = NewRunDialog(
                self.ctx,
                data["frameworks"],
                data["schemas"],
                data["models"],
                data["datasets"],
                self,
            )
            dialog.accepted.connect(lambda: self._queue_from(dialog))
            self.dialog = dialog
            dialog.open()

        def failed(exc: BaseException) -> None:
            self.new_button.setEnabled(True)
            self.ctx.show_error(exc, self)

        self.ctx.run(_load_dialog_data, self.ctx, on_done=show, on_error=failed)

    def _queue_from(self, dialog: NewRunDialog) -> None:
        if dialog.options is not None:
            self.submit(dialog.options)

    def submit(self, options: TrainOptions) -> None:
        """Queue a run and make sure a background worker trains it."""

        def done(result: dict[str, Any]) -> None:
            self.last_submitted = result
            self._selected = str(result["run"])
            self.ctx.changed.emit("runs")
            self.ctx.changed.emit("jobs")
            self.refresh()

        self.ctx.run(_submit, self.ctx, options, on_done=done)

    def cancel_selected(self) -> None:
        """Cancel the selected run's job (gracefully; the trainer saves its checkpoint)."""
        run = self.selected_run()
        if run is None or not run.get("job_id"):
            return
        self.cancel_button.setEnabled(False)

        def done(status: str) -> None:
            self.status_label.setText(f"job {run['job_id']}: {status}")
            self.ctx.changed.emit("jobs")
            self.refresh()

        self.ctx.run(_cancel, self.ctx, str(run["job_id"]), on_done=done)

    def resume_selected(self) -> None:
        """Continue the selected failed or cancelled run from its last checkpoint."""
        run = self.selected_run()
        if run is None:
            return
        self.resume_button.setEnabled(False)

        def done(result: dict[str, Any]) -> None:
            self.last_submitted = result
            self.ctx.changed.emit("jobs")
            self.refresh()

        self.ctx.run(_resume, self.ctx, str(run["id"]), on_done=done)
