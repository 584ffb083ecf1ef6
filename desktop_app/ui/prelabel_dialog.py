"""The pre-label dialog: propose boxes for a dataset's draft with an exported detector.

The person picks a completed export package of a detection run, the confidence threshold
and which images to predict (the unlabelled ones, or every image); *Pre-label* runs
``desktop_app.core.datasets.prelabel`` on the context's pool (the window stays live, the
dialog shows the images done) and, when it finishes, emits :attr:`PrelabelDialog.prelabelled`
so the Datasets page opens the proposals in its review view.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core import datasets
from desktop_app.core.dataset_records import LABEL_STATUSES
from desktop_app.core.exports import list_exports
from desktop_app.core.training import list_runs
from desktop_app.ui.context import StudioContext, error_text

UNLABELLED_ONLY = ("unlabelled",)
ALL_IMAGES = tuple(LABEL_STATUSES)


def prelabel_packages(ws: Any) -> list[dict[str, Any]]:
    """Completed exports with a package, of detection runs, newest first (the dialog's
    choices): each ``{"id", "run_id", "format", "precision", "model", "label"}``."""
    runs = {r["id"]: r for r in list_runs(ws)}
    out: list[dict[str, Any]] = []
    for e in reversed(list_exports(ws)):
        run = runs.get(e["run_id"]) or {}
        if e["status"] != "completed" or not e.get("package") or run.get("task") != "detect":
            continue
        out.append(
            {
                "id": e["id"],
                "run_id": e["run_id"],
                "format": e["format"],
                "precision": e.get("precision"),
                "model": run.get("model"),
                "label": f"{e['id']} — {e['format']} {e.get('precision') or ''}".rstrip()
                + f" of {e['run_id']} ({run.get('model')})",
            }
        )
    return out


class PrelabelDialog(QDialog):
    """Choose a package, a threshold and the images, then pre-label in the background.

    Signals:
        prelabelled(dict): core's result (``dataset``, ``images``, ``proposals``, ...) once
            the proposals are stored.
        progressed(int, int): images done, images in all (emitted from the pool's thread).
    """

    prelabelled = Signal(dict)
    progressed = Signal(int, int)

    def __init__(self, ctx: StudioContext, dataset: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Pre-label {dataset}")
        self.ctx = ctx
        self.dataset = dataset
        self.packages: list[dict[str, Any]] = []
        self.outcome: dict[str, Any] | None = None
        self.loaded = False  # the package listing came back
        self.running = False

        self.package_box = QComboBox()
        self.package_box.setMinimumWidth(420)
        self.package_box.setPlaceholderText("listing exports …")
        self.conf_spin = QDoubleSpinBox()
        self.conf_spin.setRange(0.001, 1.0)
        self.conf_spin.setSingleStep(0.05)
        self.conf_spin.setDecimals(3)
        self.conf_spin.setValue(0.25)
        self.conf_spin.setToolTip("Weakest detection kept as a proposal")
        self.unlabelled_radio = QRadioButton("Unlabelled images only")
        self.all_radio = QRadioButton("All images (replaces earlier proposals)")
        self.unlabelled_radio.setChecked(True)
        self.which = QButtonGroup(self)
        self.which.addButton(self.unlabelled_radio)
        self.which.addButton(self.all_radio)
        which = QHBoxLayout()
        which.addWidget(self.unlabelled_radio)
        which.addWidget(self.all_radio)
        which.addStretch(1)
        self.add_classes_box = QCheckBox("Add model classes the dataset lacks")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Model package", self.package_box)
        form.addRow("Confidence", self.conf_spin)
        form.addRow("Images", which)
        form.addRow("", self.add_classes_box)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Pre-label")
        self.ok_button.setEnabled(False)
        self.buttons.accepted.connect(self.start)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status_label)
        layout.addWidget(self.buttons)
        self.progressed.connect(self._show_progress)
        self.load()

    # ---- choices -----------------------------------------------------------------------

    def load(self) -> None:
        """List the usable export packages (off the UI thread)."""
        self.ctx.run(
            prelabel_packages,
            self.ctx.workspace,
            on_done=self.set_packages,
            on_error=self._load_failed,
        )

    def _load_failed(self, exc: BaseException) -> None:
        self.loaded = True
        self.status_label.setText(error_text(exc))

    def set_packages(self, packages: list[dict[str, Any]]) -> None:
        """Fill the package choices (newest first)."""
        self.packages = packages
        self.loaded = True
        self.package_box.clear()
        for p in packages:
            self.package_box.addItem(str(p["label"]), p["id"])
        if packages:
            self.package_box.setCurrentIndex(0)  # the newest (a placeholder selects nothing)
        else:
            self.package_box.setPlaceholderText("no completed export of a detection run")
            self.status_label.setText(
                "Export a trained detection run first (Export area), then pre-label with it."
            )
        self.ok_button.setEnabled(bool(packages) and not self.running)

    def export_id(self) -> str | None:
        """The chosen export's id."""
        data = self.package_box.currentData()
        return str(data) if data else None

    def statuses(self) -> tuple[str, ...]:
        """Label statuses of the images to predict."""
        return ALL_IMAGES if self.all_radio.isChecked() else UNLABELLED_ONLY

    def request(self) -> dict[str, Any]:
        """The keyword arguments of ``datasets.prelabel`` chosen here."""
        return {
            "export_id": self.export_id(),
            "conf": round(self.conf_spin.value(), 4),
            "only_status": self.statuses(),
            "add_missing_classes": self.add_classes_box.isChecked(),
        }

    # ---- running -----------------------------------------------------------------------

    def start(self) -> None:
        """Pre-label in the background; the dialog closes when the proposals are stored."""
        if self.running or self.export_id() is None:
            return
        self.running = True
        self.ok_button.setEnabled(False)
        self.status_label.setText("Pre-labelling …")
        request = self.request()

        def progress(_stage: str, done: int, total: int) -> None:
            self.progressed.emit(done, total)

        self.ctx.run(
            datasets.prelabel,
            self.ctx.workspace,
            self.dataset,
            progress=progress,
            on_done=self._done,
            on_error=self._failed,
            **request,
        )

    def _show_progress(self, done: int, total: int) -> None:
        if self.running:
            self.status_label.setText(f"Pre-labelling … {done}/{total} images")

    def _done(self, result: dict[str, Any]) -> None:
        self.running = False
        self.outcome = result
        skipped = result.get("skipped_classes") or {}
        note = (
            f"; skipped classes the dataset lacks: {', '.join(sorted(skipped))}" if skipped else ""
        )
        self.status_label.setText(
            f"{result.get('images', 0)} images pre-labelled: "
            f"{result.get('proposals', 0)} proposals{note}"
        )
        self.prelabelled.emit(result)
        self.accept()

    def _failed(self, exc: BaseException) -> None:
        self.running = False
        self.status_label.setText(error_text(exc))
        self.ok_button.setEnabled(bool(self.packages))
        self.ctx.show_error(exc, self)
