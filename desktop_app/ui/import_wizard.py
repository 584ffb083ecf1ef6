"""The import wizard: pick a folder or zip → ``analyze`` preview → name and format → import.

The analysis and the import run on the context's pool (``desktop_app.core.datasets``
``analyze_dataset`` / ``import_dataset``); the wizard only shows what they report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from desktop_app.core import datasets
from desktop_app.ui.context import StudioContext, error_text


class SourcePage(QWizardPage):
    """Where the dataset is and which format to read it as."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Choose a dataset")
        self.setSubTitle("A dataset folder or a .zip in any supported format.")
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("/path/to/dataset or dataset.zip")
        self.path_edit.textChanged.connect(self.completeChanged)
        folder = QPushButton("Folder…")
        folder.clicked.connect(self._pick_folder)
        archive = QPushButton("Zip…")
        archive.clicked.connect(self._pick_zip)
        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        row.addWidget(folder)
        row.addWidget(archive)
        self.format_combo = QComboBox()
        self.format_combo.addItems(["auto", *sorted(datasets.FORMATS)])
        form = QFormLayout(self)
        form.addRow("Source", row)
        form.addRow("Format", self.format_combo)

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Dataset folder")
        if path:
            self.path_edit.setText(path)

    def _pick_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Dataset archive", "", "Zip archives (*.zip)")
        if path:
            self.path_edit.setText(path)

    def source(self) -> Path:
        return Path(self.path_edit.text().strip()).expanduser()

    def isComplete(self) -> bool:  # noqa: N802 - Qt override
        text = self.path_edit.text().strip()
        return bool(text) and Path(text).expanduser().exists()


class PreviewPage(QWizardPage):
    """What an import would store, and every problem found (from ``analyze``)."""

    def __init__(
        self, ctx: StudioContext, source: SourcePage, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.source_page = source
        self.setTitle("Preview")
        self.setSubTitle("Nothing is written yet: this is what the import would store.")
        self.summary = QLabel("Analyzing…")
        self.summary.setWordWrap(True)
        self.classes = QTableWidget(0, 2)
        self.classes.setHorizontalHeaderLabels(["Class", "Annotations"])
        self.classes.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.classes.verticalHeader().setVisible(False)
        self.problems = QListWidget()
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(QLabel("Classes"))
        layout.addWidget(self.classes, 2)
        layout.addWidget(QLabel("Problems and warnings"))
        layout.addWidget(self.problems, 1)
        self.report: dict[str, Any] | None = None
        self._generation = 0

    def initializePage(self) -> None:  # noqa: N802 - Qt override
        self.report = None
        self._generation += 1
        generation = self._generation
        self.summary.setText("Analyzing…")
        self.classes.setRowCount(0)
        self.problems.clear()
        fmt = self.source_page.format_combo.currentText()
        self.ctx.run(
            datasets.analyze_dataset,
            self.source_page.source(),
            fmt,
            on_done=lambda r: self._show(generation, r),
            on_error=lambda e: self._failed(generation, e),
        )
        self.completeChanged.emit()

    def _failed(self, generation: int, exc: BaseException) -> None:
        if generation == self._generation:
            self.summary.setText(f"Cannot analyze: {error_text(exc)}")

    def _show(self, generation: int, report: dict[str, Any]) -> None:
        if generation != self._generation:
            return
        self.report = report
        splits = ", ".join(f"{k} {v}" for k, v in (report.get("splits") or {}).items())
        self.summary.setText(
            f"Format <b>{report.get('format')}</b>, task <b>{report.get('task')}</b>: "
            f"{report.get('images', 0)} images ({report.get('unlabelled_images', 0)} unlabelled, "
            f"{report.get('background_images', 0)} background), "
            f"{report.get('annotations', 0)} annotations, "
            f"{len(report.get('classes') or [])} classes"
            + (f"; splits: {splits}" if splits else "")
            + (
                ".<br>No problems found."
                if report.get("ok")
                else f".<br><b>{len(report.get('problems') or [])} problems</b> "
                "(a strict import stops at the first; a lenient one skips them)."
            )
        )
        per_class = report.get("annotations_per_class") or {}
        names = list(report.get("classes") or [])
        self.classes.setRowCount(len(names))
        for i, name in enumerate(names):
            self.classes.setItem(i, 0, QTableWidgetItem(str(name)))
            self.classes.setItem(i, 1, QTableWidgetItem(str(per_class.get(name, 0))))
        for p in report.get("problems") or []:
            self.problems.addItem(f"problem: {p}")
        for w in report.get("warnings") or []:
            self.problems.addItem(f"warning: {w}")
        for finding in report.get("qa") or []:
            self.problems.addItem(
                f"QA {finding.get('severity')}: {finding.get('title')} ({finding.get('count')})"
            )
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802 - Qt override
        return self.report is not None and int(self.report.get("images") or 0) > 0


class NamePage(QWizardPage):
    """The new dataset's name and how strictly to import."""

    def __init__(self, source: SourcePage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source_page = source
        self.setTitle("Name")
        self.setSubTitle("The dataset is stored as version v1 under this name.")
        self.name_edit = QLineEdit()
        self.name_edit.textChanged.connect(self._check)
        self.lenient = QCheckBox("Skip invalid images and annotations (lenient import)")
        self.error = QLabel("")
        self.error.setStyleSheet("color: #c62828")
        form = QFormLayout(self)
        form.addRow("Name", self.name_edit)
        form.addRow("", self.lenient)
        form.addRow("", self.error)

    def initializePage(self) -> None:  # noqa: N802 - Qt override
        if not self.name_edit.text():
            stem = self.source_page.source().stem.replace(" ", "-")
            self.name_edit.setText(stem or "dataset")
        preview = self.wizard().page(1)
        if isinstance(preview, PreviewPage) and preview.report is not None:
            self.lenient.setChecked(not preview.report.get("ok", True))

    def _check(self) -> None:
        try:
            datasets.check_dataset_name(self.name_edit.text())
        except Exception as exc:  # noqa: BLE001 - any refusal is shown inline
            self.error.setText(error_text(exc))
        else:
            self.error.setText("")
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802 - Qt override
        return bool(self.name_edit.text().strip()) and not self.error.text()


class ImportWizard(QWizard):
    """Three steps to a new dataset; the import itself runs on the context's pool.

    Signals:
        imported(dict): the import's result (``desktop_app.core.datasets.import_dataset``).
    """

    imported = Signal(dict)

    def __init__(
        self, ctx: StudioContext, parent: QWidget | None = None, path: Path | None = None
    ) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.setWindowTitle("Import a dataset")
        self.setWizardStyle(QWizard.WizardStyle.ClassicStyle)
        self.source_page = SourcePage()
        self.preview_page = PreviewPage(ctx, self.source_page)
        self.name_page = NamePage(self.source_page)
        self.addPage(self.source_page)
        self.addPage(self.preview_page)
        self.addPage(self.name_page)
        self.setButtonText(QWizard.WizardButton.FinishButton, "Import")
        self.resize(640, 520)
        if path is not None:
            self.source_page.path_edit.setText(str(path))

    def accept(self) -> None:
        name = self.name_page.name_edit.text().strip()
        self.ctx.run(
            datasets.import_dataset,
            self.ctx.workspace,
            self.source_page.source(),
            name,
            self.source_page.format_combo.currentText(),
            lenient=self.name_page.lenient.isChecked(),
            on_done=self._done,
        )
        super().accept()

    def _done(self, result: dict[str, Any]) -> None:
        self.ctx.changed.emit("datasets")
        self.imported.emit(result)
