"""``outpost studio``: start the desktop app.

On the first start (no settings file and no ``--workspace``) a picker offers the embedded
default workspace (or another folder) and, when that workspace has no dataset yet, to create
the sample project.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core import datasets
from desktop_app.core.workspace import Workspace, default_workspace_dir
from desktop_app.ui.context import StudioContext
from desktop_app.ui.main_window import MainWindow
from desktop_app.ui.settings import StudioSettings, settings_path


class WorkspacePicker(QDialog):
    """First start: where the workspace lives, and whether to create the sample project."""

    def __init__(self, default: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Welcome to Outpost Studio")
        intro = QLabel(
            "Outpost keeps datasets, runs, exports and devices in a workspace folder. "
            "The default one lives in your user data folder; any folder works."
        )
        intro.setWordWrap(True)
        self.path_edit = QLineEdit(str(default))
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        row.addWidget(browse)
        self.sample = QCheckBox("Create the sample project (64 labelled images of shapes)")
        self.sample.setChecked(True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Open")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(row)
        layout.addWidget(self.sample)
        layout.addWidget(buttons)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Workspace folder", self.path_edit.text())
        if path:
            self.path_edit.setText(path)

    def workspace(self) -> Path:
        return Path(self.path_edit.text().strip()).expanduser()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="outpost studio", description="Outpost Studio")
    parser.add_argument("--workspace", type=Path, default=None)
    return parser.parse_args(list(argv))


def build_window(
    workspace: Path, settings: StudioSettings, *, create_sample: bool = False
) -> MainWindow:
    """Open ``workspace`` and make the main window (with the sample project if asked)."""
    ws = Workspace.open(workspace)
    ctx = StudioContext(ws)
    ctx.settings = settings
    settings.remember_workspace(ws.root)
    settings.save()
    window = MainWindow(ctx, settings)
    if create_sample and not datasets.list_datasets(ws):
        window.create_sample()
    return window


def main(argv: Sequence[str] | None = None) -> int:
    """Run the Studio; the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "outpost"])
    app.setApplicationName("Outpost Studio")
    app.setOrganizationName("Outpost")
    first_start = not settings_path().exists()
    settings = StudioSettings.load()
    create_sample = False
    if args.workspace is not None:
        workspace = args.workspace
    elif settings.workspace and not first_start:
        workspace = Path(settings.workspace)
    else:
        picker = WorkspacePicker(default_workspace_dir())
        if picker.exec() != QDialog.DialogCode.Accepted:
            return 0
        workspace = picker.workspace()
        create_sample = picker.sample.isChecked()
    window = build_window(workspace, settings, create_sample=create_sample)
    window.show()
    code = app.exec()
    window.ctx.workspace.close()
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
