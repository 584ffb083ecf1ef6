"""The main window: a project sidebar of areas, their pages, menus, shortcuts, status bar.

Areas (Ctrl+1..5): Datasets, Training, Experiments, Export, Devices. Each page follows the
page contract (``title``, ``__init__(ctx, parent)``, ``refresh()``) and is refreshed when it
becomes visible and on F5.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QProgressBar,
    QSplitter,
    QStackedWidget,
    QWidget,
)

from desktop_app.core import datasets
from desktop_app.ui.context import StudioContext
from desktop_app.ui.datasets_page import DatasetsPage
from desktop_app.ui.devices_page import DevicesPage
from desktop_app.ui.experiments_page import ExperimentsPage
from desktop_app.ui.export_page import ExportPage
from desktop_app.ui.jobs_panel import JobsPanel
from desktop_app.ui.settings import SettingsDialog, StudioSettings
from desktop_app.ui.training_page import TrainingPage

SAMPLE_DATASET = "sample"


def create_sample_project(ws: Any, name: str = SAMPLE_DATASET) -> dict[str, Any]:
    """Write the sample dataset to a temp folder and import it as ``name`` (core calls)."""
    with tempfile.TemporaryDirectory(prefix="outpost-sample-") as tmp:
        src = Path(tmp) / "sample"
        datasets.write_sample_dataset(src)
        return datasets.import_dataset(ws, src, name)


class MainWindow(QMainWindow):
    """Sidebar + stacked pages + jobs dock + status bar."""

    def __init__(
        self,
        ctx: StudioContext,
        settings: StudioSettings | None = None,
        settings_path: Path | None = None,
        jobs_panel: JobsPanel | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.settings = settings or ctx.settings
        ctx.settings = self.settings
        if not self.settings.workspace:
            self.settings.workspace = str(ctx.root)
        self.settings_path = settings_path
        self.setWindowTitle(f"Outpost Studio — {ctx.root}")
        self.resize(1360, 860)
        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setIconSize(QSize(18, 18))
        self.sidebar.setMaximumWidth(190)
        self.sidebar.setStyleSheet(
            "QListWidget#sidebar { font-size: 11pt; border: none; }"
            "QListWidget#sidebar::item { padding: 9px 12px; }"
        )
        self.stack = QStackedWidget()
        self.pages: list[QWidget] = []
        self.datasets_page = DatasetsPage(ctx)
        self._add_page(self.datasets_page)
        self.training_page = TrainingPage(ctx)
        self.experiments_page = ExperimentsPage(ctx)
        self.export_page = ExportPage(ctx)
        self.devices_page = DevicesPage(ctx)
        for page in (
            self.training_page,
            self.experiments_page,
            self.export_page,
            self.devices_page,
        ):
            self._add_page(page)
        self.sidebar.currentRowChanged.connect(self.show_area)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(self.stack)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([170, 1190])
        self.setCentralWidget(splitter)
        self.jobs_panel = jobs_panel or JobsPanel(ctx, self)
        self.jobs_panel.setParent(self)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.jobs_panel)
        self._sized = False
        self._build_status_bar()
        self._build_menus()
        ctx.busy.connect(self._busy)
        ctx.workspace_changed.connect(self._workspace_changed)
        self.sidebar.setCurrentRow(0)

    # ---- pages -------------------------------------------------------------------------

    def _add_page(self, page: QWidget) -> None:
        self.pages.append(page)
        self.stack.addWidget(page)
        title = str(getattr(page, "title", type(page).__name__))
        item = QListWidgetItem(f"{title}")
        item.setToolTip(f"{title} (Ctrl+{len(self.pages)})")
        self.sidebar.addItem(item)

    def area_titles(self) -> list[str]:
        """The areas, in sidebar order."""
        return [str(getattr(p, "title", "")) for p in self.pages]

    def current_page(self) -> QWidget:
        return self.pages[self.stack.currentIndex()]

    def show_area(self, index: int) -> None:
        """Switch to area ``index`` (0-based) and refresh it."""
        if not 0 <= index < len(self.pages):
            return
        if self.sidebar.currentRow() != index:
            self.sidebar.setCurrentRow(index)
            return
        self.stack.setCurrentIndex(index)
        self.refresh_current()

    def refresh_current(self) -> None:
        """Reload the page shown (F5)."""
        refresh = getattr(self.current_page(), "refresh", None)
        if callable(refresh):
            refresh()

    # ---- menus and shortcuts -----------------------------------------------------------

    def _action(self, menu: Any, text: str, slot: Any, shortcut: Any = None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        self.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        f = bar.addMenu("&File")
        self.open_action = self._action(
            f, "Open workspace…", self.open_workspace_dialog, QKeySequence.StandardKey.Open
        )
        self.import_action = self._action(f, "Import dataset…", self.import_dataset, "Ctrl+I")
        self._action(f, "Create the sample project", self.create_sample)
        f.addSeparator()
        self._action(f, "Settings…", self.open_settings, "Ctrl+,")
        f.addSeparator()
        self._action(f, "Quit", self.close, QKeySequence.StandardKey.Quit)
        e = bar.addMenu("&Edit")
        self.undo_action = self._action(e, "Undo edit", self.undo, "Ctrl+Z")
        self.redo_action = self._action(e, "Redo edit", self.redo, "Ctrl+Shift+Z")
        self.delete_action = self._action(e, "Delete box", self.delete_box, "Del")
        self.edit_mode_action = self._action(e, "Edit boxes", self.toggle_edit, "E")
        v = bar.addMenu("&View")
        self.area_actions = [
            self._action(
                v,
                title or f"Area {i + 1}",
                lambda _c=False, i=i: self.show_area(i),
                f"Ctrl+{i + 1}",
            )
            for i, title in enumerate(self.area_titles())
        ]
        v.addSeparator()
        self._action(v, "Refresh", self.refresh_current, "F5")
        v.addAction(self.jobs_panel.toggleViewAction())

    def _build_status_bar(self) -> None:
        self.workspace_label = QLabel(str(self.ctx.root))
        self.busy_label = QLabel("")
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setMaximumWidth(120)
        self.busy_bar.setMaximumHeight(14)
        self.busy_bar.hide()
        status = self.statusBar()
        status.addWidget(self.workspace_label, 1)
        status.addPermanentWidget(self.busy_label)
        status.addPermanentWidget(self.busy_bar)

    def _busy(self, count: int) -> None:
        self.busy_bar.setVisible(count > 0)
        self.busy_label.setText(f"working ({count})" if count > 0 else "")

    # ---- actions -----------------------------------------------------------------------

    def _datasets_active(self) -> bool:
        return self.current_page() is self.datasets_page

    def undo(self) -> None:
        """Undo the last edit of the dataset shown (Datasets area)."""
        if self._datasets_active() and self.datasets_page.current is not None:
            self.datasets_page.images.undo()

    def redo(self) -> None:
        """Redo the edit undone last (Datasets area)."""
        if self._datasets_active() and self.datasets_page.current is not None:
            self.datasets_page.images.redo()

    def delete_box(self) -> None:
        """Delete the selected box (Datasets area, edit mode)."""
        if self._datasets_active():
            self.datasets_page.images.view.delete_selected()

    def toggle_edit(self) -> None:
        """Switch the box editor on or off (Datasets area)."""
        if self._datasets_active():
            images = self.datasets_page.images
            images.set_editing(not images.edit_button.isChecked())

    def import_dataset(self) -> None:
        """Open the import wizard in the Datasets area."""
        self.show_area(0)
        self.datasets_page.open_import()

    def create_sample(self) -> None:
        """Import the sample dataset into the workspace (in the background)."""
        self.ctx.run(create_sample_project, self.ctx.workspace, on_done=self._sample_done)

    def _sample_done(self, result: dict[str, Any]) -> None:
        self.ctx.changed.emit("datasets")
        self.show_area(0)
        self.datasets_page.current = str(result.get("dataset") or SAMPLE_DATASET)
        self.datasets_page.refresh()

    def open_workspace_dialog(self) -> None:
        """Pick another workspace folder and open it."""
        path = QFileDialog.getExistingDirectory(self, "Open workspace", str(self.ctx.root))
        if path:
            self.open_workspace(Path(path))

    def open_workspace(self, root: Path) -> None:
        """Open (creating if needed) the workspace at ``root`` and remember it."""
        try:
            self.ctx.open_workspace(root)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.ctx.show_error(exc, self)
            return
        self.settings.remember_workspace(self.ctx.root)
        self.settings.save(self.settings_path)

    def _workspace_changed(self) -> None:
        self.setWindowTitle(f"Outpost Studio — {self.ctx.root}")
        self.workspace_label.setText(str(self.ctx.root))
        self.refresh_current()

    def open_settings(self) -> SettingsDialog:
        """Open the settings dialog."""
        dialog = SettingsDialog(self.settings, self, self.settings_path)
        dialog.accepted.connect(self._settings_saved)
        dialog.open()
        return dialog

    def _settings_saved(self) -> None:
        ws = self.settings.workspace
        if ws and Path(ws).expanduser().resolve() != self.ctx.root.resolve():
            self.open_workspace(Path(ws).expanduser())

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._sized:  # the jobs dock starts about five rows high; the areas get the rest
            self._sized = True
            self.size_jobs_dock()
            QTimer.singleShot(0, self.size_jobs_dock)  # again once the window is laid out

    def size_jobs_dock(self) -> None:
        """Give the jobs dock its default height (about five jobs)."""
        self.resizeDocks(
            [self.jobs_panel], [self.jobs_panel.default_height()], Qt.Orientation.Vertical
        )

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.jobs_panel.stop()
        self.datasets_page.images.loader.shutdown()
        self.ctx.wait(10_000)
        super().closeEvent(event)
