"""Experiments: every run in a searchable table with stars, a compare view (overlaid
curves and a parameter diff), markdown notes, and a run's evaluation (per-class table,
confusion matrix, PR curves, sample predictions).

All numbers come from ``desktop_app.core.experiments``, ``evaluation`` and ``studio_ops``
calls run off the UI thread; the page only lays them out.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core import studio_ops
from desktop_app.core.evaluation import evaluate, get_evaluation, list_evaluations
from desktop_app.core.experiments import compare_runs, search_runs, set_notes, star_run
from desktop_app.core.training import run_summary
from desktop_app.ui.canvas import AnnotatedImageView
from desktop_app.ui.charts import BarChart, Heatmap, LineChart
from desktop_app.ui.context import StudioContext, error_text
from desktop_app.ui.text import metric_text

RUN_COLUMNS = ("★", "run", "status", "model", "dataset", "experiment", "primary metric", "tags")
STAR_ON, STAR_OFF = "★", "☆"
PER_CLASS_COLUMNS = ("class", "images", "instances", "precision", "recall", "ap50", "ap50_95")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _table(columns: tuple[str, ...] | list[str]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _fill(table: QTableWidget, rows: list[list[Any]]) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.setItem(r, c, QTableWidgetItem(_cell(value)))


def _load_detail(ctx: StudioContext, run_id: str) -> dict[str, Any]:
    ws = ctx.workspace
    evaluations = list_evaluations(ws, run_id)
    newest = get_evaluation(ws, evaluations[-1]["id"]) if evaluations else None
    return {
        "run": run_summary(ws, run_id),
        "evaluations": evaluations,
        "evaluation": newest,
        "samples": studio_ops.prediction_samples(ws, run_id),
    }


def _evaluate(ctx: StudioContext, run: dict[str, Any]) -> dict[str, Any]:
    return evaluate(ctx.workspace, run["id"], run["dataset"], run["version"], "val")


class ExperimentsPage(QWidget):
    """Runs, comparison, notes and evaluation."""

    title = "Experiments"
    topics = ("runs", "experiments", "exports")

    def __init__(self, ctx: StudioContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.runs: list[dict[str, Any]] = []
        self.comparison: dict[str, Any] | None = None
        self.detail: dict[str, Any] | None = None
        self.samples: list[dict[str, Any]] = []
        self._current: str | None = None
        self._loading = False
        self._again = False

        # --- the runs table with search and stars ----------------------------------------
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search runs: id, model, tag, note, experiment")
        self.starred_box = QCheckBox("Starred only")
        self.runs_table = _table(RUN_COLUMNS)
        self.runs_table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.runs_table.setColumnWidth(0, 28)
        self.compare_button = QPushButton("Compare selected")
        self.hint = QLabel("Select one run for its details, two or more to compare them.")
        self.hint.setWordWrap(True)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        search_row = QHBoxLayout()
        search_row.addWidget(self.search_edit, 1)
        search_row.addWidget(self.starred_box)
        left_layout.addLayout(search_row)
        left_layout.addWidget(self.runs_table, 1)
        left_layout.addWidget(self.compare_button)
        left_layout.addWidget(self.hint)

        # --- compare ------------------------------------------------------------------------
        self.metric_box = QComboBox()
        self.compare_chart = LineChart("", "epoch", "")
        self.final_table = _table(["metric"])
        self.param_table = _table(["parameter"])
        compare = QWidget()
        compare_layout = QVBoxLayout(compare)
        row = QHBoxLayout()
        row.addWidget(QLabel("Curve"))
        row.addWidget(self.metric_box, 1)
        compare_layout.addLayout(row)
        compare_layout.addWidget(self.compare_chart, 2)
        compare_layout.addWidget(QLabel("Final metrics (best marked *)"))
        compare_layout.addWidget(self.final_table, 1)
        compare_layout.addWidget(QLabel("Parameters that differ"))
        compare_layout.addWidget(self.param_table, 1)

        # --- notes --------------------------------------------------------------------------
        self.notes_edit = QTextEdit()
        self.notes_edit.setAcceptRichText(False)
        self.notes_edit.setPlaceholderText("Notes in Markdown: what you tried, what you saw.")
        self.notes_preview = QTextBrowser()
        self.save_notes_button = QPushButton("Save notes")
        notes = QWidget()
        notes_layout = QVBoxLayout(notes)
        notes_split = QSplitter(Qt.Orientation.Horizontal)
        notes_split.addWidget(self.notes_edit)
        notes_split.addWidget(self.notes_preview)
        notes_layout.addWidget(notes_split, 1)
        notes_layout.addWidget(self.save_notes_button)
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(150)
        self._preview_timer.timeout.connect(self._render_preview)

        # --- evaluation ---------------------------------------------------------------------
        self.evaluate_button = QPushButton("Evaluate on val")
        self.predict_button = QPushButton("Predict val samples")
        self.eval_label = QLabel("Select a run.")
        self.eval_label.setWordWrap(True)
        self.per_class_table = _table(PER_CLASS_COLUMNS)
        self.ap_chart = BarChart("AP50 per class")
        self.confusion = Heatmap("Confusion matrix", "predicted", "true")
        self.pr_chart = LineChart("Precision-recall (IoU 0.5)", "recall", "precision")
        self.sample_list = QListWidget()
        self.sample_view = AnnotatedImageView()
        evaluation = QWidget()
        eval_layout = QVBoxLayout(evaluation)
        buttons = QHBoxLayout()
        buttons.addWidget(self.evaluate_button)
        buttons.addWidget(self.predict_button)
        buttons.addStretch(1)
        eval_layout.addLayout(buttons)
        eval_layout.addWidget(self.eval_label)
        eval_tabs = QTabWidget()
        per_class = QSplitter(Qt.Orientation.Vertical)
        per_class.addWidget(self.per_class_table)
        per_class.addWidget(self.ap_chart)
        eval_tabs.addTab(per_class, "Per class")
        eval_tabs.addTab(self.confusion, "Confusion matrix")
        eval_tabs.addTab(self.pr_chart, "PR curves")
        samples = QSplitter(Qt.Orientation.Horizontal)
        samples.addWidget(self.sample_list)
        samples.addWidget(self.sample_view)
        samples.setStretchFactor(1, 3)
        eval_tabs.addTab(samples, "Sample predictions")
        eval_layout.addWidget(eval_tabs, 1)
        self.eval_tabs = eval_tabs

        self.tabs = QTabWidget()
        self.tabs.addTab(compare, "Compare")
        self.tabs.addTab(notes, "Notes")
        self.tabs.addTab(evaluation, "Evaluation")
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.tabs)
        split.setStretchFactor(1, 2)
        split.setSizes([430, 770])
        layout = QVBoxLayout(self)
        layout.addWidget(split)

        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(250)
        self._search_timer.timeout.connect(self.refresh)
        self.search_edit.textChanged.connect(lambda _t: self._search_timer.start())
        self.starred_box.toggled.connect(lambda _c: self.refresh())
        self.runs_table.cellClicked.connect(self._cell_clicked)
        self.runs_table.itemSelectionChanged.connect(self._selection_changed)
        self.compare_button.clicked.connect(self.compare_selected)
        self.metric_box.currentTextChanged.connect(self._show_curve)
        self.notes_edit.textChanged.connect(self._preview_timer.start)
        self.save_notes_button.clicked.connect(self.save_notes)
        self.evaluate_button.clicked.connect(self.evaluate_selected)
        self.predict_button.clicked.connect(self.predict_selected)
        self.sample_list.currentRowChanged.connect(self._show_sample)
        ctx.changed.connect(self._on_changed)
        self._update_buttons()

    # --- runs -------------------------------------------------------------------------------

    def _on_changed(self, topic: str) -> None:
        if topic in self.topics:
            self.refresh()

    def refresh(self) -> None:
        """Search runs with the current text and star filter (off the UI thread)."""
        if self._loading:
            self._again = True
            return
        self._loading = True
        text = self.search_edit.text().strip() or None
        starred = True if self.starred_box.isChecked() else None
        self.ctx.run(
            search_runs,
            self.ctx.workspace,
            text=text,
            starred=starred,
            on_done=self._show_runs,
            on_error=self._load_failed,
        )

    def _load_failed(self, exc: BaseException) -> None:
        self._loading = False
        self.hint.setText(error_text(exc))

    def _show_runs(self, runs: list[dict[str, Any]]) -> None:
        self._loading = False
        selected = set(self.selected_ids())
        self.runs = runs
        self.runs_table.blockSignals(True)
        _fill(
            self.runs_table,
            [
                [
                    STAR_ON if r["starred"] else STAR_OFF,
                    r["id"],
                    r["status"],
                    r["model"],
                    f"{r.get('dataset') or ''} {r.get('version') or ''}".strip(),
                    r.get("experiment"),
                    metric_text(r.get("primary_metric")),
                    r.get("tags"),
                ]
                for r in runs
            ],
        )
        for row, run in enumerate(runs):
            if run["id"] in selected:
                self.runs_table.selectRow(row)
        self.runs_table.blockSignals(False)
        self.hint.setText(f"{len(runs)} runs. Select two or more to compare; click ☆ to star.")
        if self._again:
            self._again = False
            self.refresh()
        self._update_buttons()

    def selected_ids(self) -> list[str]:
        """The selected runs' ids, in table order."""
        rows = sorted({i.row() for i in self.runs_table.selectedIndexes()})
        return [self.runs[r]["id"] for r in rows if r < len(self.runs)]

    def select_runs(self, run_ids: list[str]) -> None:
        """Select these runs in the table (as a person would with Ctrl-click)."""
        self.runs_table.clearSelection()
        mode = self.runs_table.selectionMode()
        self.runs_table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for row, run in enumerate(self.runs):
            if run["id"] in run_ids:
                self.runs_table.selectRow(row)
        self.runs_table.setSelectionMode(mode)

    def _cell_clicked(self, row: int, column: int) -> None:
        if column == 0 and row < len(self.runs):
            self.toggle_star(self.runs[row]["id"])

    def toggle_star(self, run_id: str) -> None:
        """Star or unstar a run."""
        run = next((r for r in self.runs if r["id"] == run_id), None)
        if run is None:
            return
        self.ctx.run(
            star_run,
            self.ctx.workspace,
            run_id,
            not run["starred"],
            on_done=lambda _r: self.ctx.changed.emit("runs"),
        )

    def _selection_changed(self) -> None:
        ids = self.selected_ids()
        self._update_buttons()
        if len(ids) == 1 and ids[0] != self._current:
            self.load_run(ids[0])

    def _update_buttons(self) -> None:
        ids = self.selected_ids()
        self.compare_button.setEnabled(len(ids) >= 2)
        one = self.current_run()
        self.save_notes_button.setEnabled(one is not None)
        done = one is not None and one["status"] == "completed"
        self.evaluate_button.setEnabled(done)
        self.predict_button.setEnabled(done)

    def current_run(self) -> dict[str, Any] | None:
        """The run whose notes and evaluation are shown."""
        return next((r for r in self.runs if r["id"] == self._current), None)

    # --- one run: notes and evaluation -------------------------------------------------------

    def load_run(self, run_id: str) -> None:
        """Show a run's notes, newest evaluation and sample predictions."""
        self._current = run_id
        self._update_buttons()
        self.eval_label.setText(f"Loading {run_id} …")
        self.ctx.run(_load_detail, self.ctx, run_id, on_done=self._show_detail)

    def _show_detail(self, detail: dict[str, Any]) -> None:
        if detail["run"]["id"] != self._current:
            return
        self.detail = detail
        self.notes_edit.blockSignals(True)
        self.notes_edit.setPlainText(detail["run"].get("notes_full") or "")
        self.notes_edit.blockSignals(False)
        self._render_preview()
        self.show_evaluation(detail["evaluation"])
        self.show_samples(detail["samples"])

    def _render_preview(self) -> None:
        self.notes_preview.setMarkdown(self.notes_edit.toPlainText())

    def save_notes(self) -> None:
        """Store the notes of the run shown."""
        if self._current is None:
            return
        text = self.notes_edit.toPlainText()
        self.ctx.run(
            set_notes,
            self.ctx.workspace,
            self._current,
            text if text.strip() else None,
            on_done=lambda _r: self.ctx.changed.emit("runs"),
        )

    def show_evaluation(self, ev: dict[str, Any] | None) -> None:
        """Lay out one evaluation (None: say how to make one)."""
        if ev is None:
            self.eval_label.setText("No evaluation yet: export the run to ONNX, then Evaluate.")
            _fill(self.per_class_table, [])
            self.ap_chart.set_data([])
            self.confusion.set_matrix([], [])
            self.pr_chart.clear()
            return
        m = ev.get("metrics") or {}
        self.eval_label.setText(
            f"{ev['id']}: {ev.get('dataset')} {ev.get('version')} {ev.get('split')} — "
            f"mAP50 {_cell(m.get('map50'))}, mAP50-95 {_cell(m.get('map50_95'))}"
        )
        rows = list(ev.get("per_class") or [])
        _fill(self.per_class_table, [[r.get(c) for c in PER_CLASS_COLUMNS] for r in rows])
        self.ap_chart.set_data([(r["class"], float(r.get("ap50") or 0.0)) for r in rows])
        confusion = (ev.get("details") or {}).get("confusion") or {}
        labels = [str(v) for v in confusion.get("labels") or []]
        self.confusion.row_title = str(confusion.get("rows", "predicted"))
        self.confusion.column_title = str(confusion.get("columns", "true"))
        self.confusion.set_matrix(confusion.get("matrix") or [], labels, labels)
        curves = (ev.get("details") or {}).get("curves") or {}
        recall = [float(v) for v in curves.get("recall") or []]
        self.pr_chart.clear()
        for name, precision in (curves.get("precision") or {}).items():
            self.pr_chart.set_series(
                str(name),
                [
                    (r, float(p))
                    for r, p in zip(recall, precision, strict=False)
                    if p is not None and float(p) >= 0
                ],
            )

    def show_samples(self, samples: list[dict[str, Any]]) -> None:
        """List sample predictions; the first is drawn."""
        self.samples = samples
        self.sample_list.clear()
        for sample in samples:
            item = QListWidgetItem(f"{sample.get('file')} ({len(sample['annotations'])} boxes)")
            self.sample_list.addItem(item)
        if samples:
            self.sample_list.setCurrentRow(0)
        else:
            self.sample_view.set_image(None)
            self.sample_view.set_annotations([])

    def _show_sample(self, row: int) -> None:
        if 0 <= row < len(self.samples):
            sample = self.samples[row]
            self.sample_view.set_image(sample["image"])
            self.sample_view.set_annotations(sample["annotations"])

    def evaluate_selected(self) -> None:
        """Evaluate the run shown on its dataset version's val split."""
        run = self.current_run()
        if run is None:
            return
        self.evaluate_button.setEnabled(False)
        self.eval_label.setText(f"Evaluating {run['id']} …")

        def done(ev: dict[str, Any]) -> None:
            self._update_buttons()
            if run["id"] == self._current:
                self.show_evaluation(ev)

        def failed(exc: BaseException) -> None:
            self._update_buttons()
            self.eval_label.setText(error_text(exc))
            self.ctx.show_error(exc, self)

        self.ctx.run(_evaluate, self.ctx, run, on_done=done, on_error=failed)

    def predict_selected(self) -> None:
        """Predict the run's val split and show the images with their boxes."""
        run = self.current_run()
        if run is None:
            return
        self.predict_button.setEnabled(False)

        def done(samples: list[dict[str, Any]]) -> None:
            self._update_buttons()
            if run["id"] == self._current:
                self.show_samples(samples)
                self.eval_tabs.setCurrentIndex(3)

        def failed(exc: BaseException) -> None:
            self._update_buttons()
            self.ctx.show_error(exc, self)

        self.ctx.run(
            studio_ops.predict_samples, self.ctx.workspace, run["id"], on_done=done, on_error=failed
        )

    # --- compare -------------------------------------------------------------------------------

    def compare_selected(self) -> None:
        """Compare the selected runs (two or more)."""
        ids = self.selected_ids()
        if len(ids) < 2:
            return
        self.ctx.run(compare_runs, self.ctx.workspace, ids, on_done=self.show_comparison)

    def show_comparison(self, comparison: dict[str, Any]) -> None:
        """Lay out a ``compare_runs`` result: curves, final metrics, differing parameters."""
        self.comparison = comparison
        self.tabs.setCurrentIndex(0)
        ids = [r["id"] for r in comparison["runs"]]
        keys = sorted(comparison["curves"])
        preferred = next((k for k in keys if "mAP50-95" in k), keys[0] if keys else "")
        self.metric_box.blockSignals(True)
        self.metric_box.clear()
        self.metric_box.addItems(keys)
        self.metric_box.setCurrentText(preferred)
        self.metric_box.blockSignals(False)
        self._show_curve(preferred)
        finals = comparison["final_metrics"]
        self.final_table.setColumnCount(1 + len(ids))
        self.final_table.setHorizontalHeaderLabels(["metric", *ids])
        _fill(
            self.final_table,
            [
                [
                    key,
                    *[
                        f"{_cell(entry['values'].get(rid))}{' *' if entry['best_run'] == rid else ''}"
                        for rid in ids
                    ],
                ]
                for key, entry in sorted(finals.items())
            ],
        )
        differing = comparison["params"]["differing"]
        self.param_table.setColumnCount(1 + len(ids))
        self.param_table.setHorizontalHeaderLabels(["parameter", *ids])
        _fill(
            self.param_table,
            [[key, *[values.get(rid) for rid in ids]] for key, values in sorted(differing.items())],
        )

    def _show_curve(self, key: str) -> None:
        self.compare_chart.clear()
        if self.comparison is None or key not in self.comparison["curves"]:
            return
        self.compare_chart.set_title(key)
        self.compare_chart.y_label = key.split("/")[-1]
        for run_id, series in self.comparison["curves"][key]["series"].items():
            self.compare_chart.set_series(
                run_id, zip(map(float, series["epochs"]), map(float, series["values"]), strict=True)
            )
