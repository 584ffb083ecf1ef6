"""The split dialog: the dataset's split setting (``desktop_app.core.datasets.set_split``)."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QWidget,
)

from desktop_app.core import datasets
from desktop_app.ui.context import StudioContext


class SplitDialog(QDialog):
    """Method, val/test fractions and seed; Apply stores them and re-splits the draft.

    ``auto`` draws every image (seeded, stratified by class); ``partial`` keeps the images
    assigned by hand and draws the rest.
    """

    def __init__(self, ctx: StudioContext, dataset: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.dataset = dataset
        self.setWindowTitle(f"Split {dataset}")
        self.method = QComboBox()
        self.method.addItems(["auto", "partial"])
        self.val = QDoubleSpinBox()
        self.val.setRange(0.0, 0.9)
        self.val.setSingleStep(0.05)
        self.val.setValue(0.2)
        self.test = QDoubleSpinBox()
        self.test.setRange(0.0, 0.9)
        self.test.setSingleStep(0.05)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setValue(42)
        self.current = QLabel("Reading the current split…")
        self.result_label = QLabel("")
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Apply | QDialogButtonBox.StandardButton.Close
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Apply).clicked.connect(self.apply)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Current", self.current)
        form.addRow("Method", self.method)
        form.addRow("Validation fraction", self.val)
        form.addRow("Test fraction", self.test)
        form.addRow("Seed", self.seed)
        form.addRow("", self.result_label)
        form.addRow(self.buttons)
        self.settings: dict[str, Any] | None = None
        self.applied: dict[str, Any] | None = None
        ctx.run(datasets.split_settings, ctx.workspace, dataset, on_done=self._show_current)

    def _show_current(self, info: dict[str, Any]) -> None:
        self.settings = info
        s = info.get("settings") or {}
        if s.get("method") in ("auto", "partial"):
            self.method.setCurrentText(str(s["method"]))
        self.val.setValue(float(s.get("val", 0.2)))
        self.test.setValue(float(s.get("test", 0.0)))
        self.seed.setValue(int(s.get("seed", 42)))
        splits = info.get("splits") or {}
        self.current.setText(
            f"{info.get('version')}: train {splits.get('train', 0)}, val {splits.get('val', 0)}, "
            f"test {splits.get('test', 0)} ({info.get('split_method')})"
        )

    def apply(self) -> None:
        """Store the setting and re-split the draft (on the pool)."""
        settings = {
            "method": self.method.currentText(),
            "val": round(self.val.value(), 4),
            "test": round(self.test.value(), 4),
            "seed": self.seed.value(),
        }
        self.result_label.setText("Splitting…")
        self.ctx.run(
            datasets.set_split, self.ctx.workspace, self.dataset, settings, on_done=self._applied
        )

    def _applied(self, result: dict[str, Any]) -> None:
        self.applied = result
        splits = result.get("splits") or {}
        self.result_label.setText(
            f"draft: train {splits.get('train', 0)}, val {splits.get('val', 0)}, "
            f"test {splits.get('test', 0)}; {result.get('moved', 0)} images moved"
        )
        self.current.setText(self.result_label.text())
        self.ctx.changed.emit("datasets")
