"""The Datasets area: datasets, the image grid and editor, versions, QA and statistics.

Every read and write goes through ``desktop_app.core.datasets`` on the context's pool; edits
go one at a time, in order, through a small queue (each one is a transaction on the draft and
a journal entry that undo/redo walk).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core import datasets
from desktop_app.core.errors import NotFoundError
from desktop_app.ui.canvas import AnnotatedImageView
from desktop_app.ui.charts import BarChart
from desktop_app.ui.context import StudioContext
from desktop_app.ui.dataset_index import (
    LABEL_STATUSES,
    ItemFilter,
    ItemIndex,
    item_index,
    working_qa_report,
)
from desktop_app.ui.grid import ItemGridModel, ThumbnailGrid
from desktop_app.ui.import_wizard import ImportWizard
from desktop_app.ui.prelabel_dialog import PrelabelDialog
from desktop_app.ui.split_dialog import SplitDialog
from desktop_app.ui.thumbnails import DEFAULT_SIZE, ThumbnailLoader

ANY = "(any)"
FIRST_PAGE = 2000  # rows shown before the rest of a large version is read


def _table(headers: list[str]) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _fill(table: QTableWidget, rows: list[list[Any]]) -> None:
    table.setRowCount(len(rows))
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            table.setItem(r, c, QTableWidgetItem("" if value is None else str(value)))


class ImagesPanel(QWidget):
    """Filters, the thumbnail grid, and the image view with its editor and review buttons."""

    def __init__(self, page: DatasetsPage) -> None:
        super().__init__(page)
        self.page = page
        ctx = page.ctx
        self.class_filter = QComboBox()
        self.status_filter = QComboBox()
        self.status_filter.addItems([ANY, *LABEL_STATUSES])
        self.split_filter = QComboBox()
        self.split_filter.addItems([ANY, "train", "val", "test"])
        self.qa_filter = QComboBox()
        self.qa_filter.addItem(ANY)
        for combo in (self.class_filter, self.status_filter, self.split_filter, self.qa_filter):
            combo.currentIndexChanged.connect(self._filters_changed)
        self.count_label = QLabel("")
        bar = QHBoxLayout()
        for label, combo in (
            ("Class", self.class_filter),
            ("Status", self.status_filter),
            ("Split", self.split_filter),
            ("QA", self.qa_filter),
        ):
            bar.addWidget(QLabel(label))
            bar.addWidget(combo)
        bar.addStretch(1)
        bar.addWidget(self.count_label)

        self.loader = ThumbnailLoader(ctx.root, DEFAULT_SIZE, parent=self)
        self.model = ItemGridModel(self.loader, lambda sha: ctx.workspace.blobs.path(sha), self)
        self.grid = ThumbnailGrid(DEFAULT_SIZE)
        self.grid.setModel(self.model)
        self.grid.selectionModel().currentChanged.connect(
            lambda cur, _prev: self.open_row(cur.row())
        )

        self.view = AnnotatedImageView()
        self.view.box_added.connect(self._box_added)
        self.view.box_changed.connect(self._box_changed)
        self.view.box_deleted.connect(self._box_deleted)
        self.view.class_changed.connect(self._class_changed)
        self.view.selection_changed.connect(self._selection_changed)
        self.edit_button = QToolButton()
        self.edit_button.setText("Edit")
        self.edit_button.setCheckable(True)
        self.edit_button.setToolTip("Edit boxes: drag to draw, drag a box to move, corners resize")
        self.edit_button.toggled.connect(self.set_editing)
        self.draw_class = QComboBox()
        self.draw_class.setToolTip("Class of new boxes; with a box selected, its class")
        self.draw_class.activated.connect(self._draw_class_chosen)
        self.undo_button = QToolButton()
        self.undo_button.setText("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QToolButton()
        self.redo_button.setText("Redo")
        self.redo_button.clicked.connect(self.redo)
        self.delete_button = QToolButton()
        self.delete_button.setText("Delete box")
        self.delete_button.clicked.connect(self.view.delete_selected)
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Accept this image's proposals")
        self.accept_button.clicked.connect(lambda: self.review(True))
        self.reject_button = QPushButton("Reject")
        self.reject_button.setToolTip("Remove this image's proposals")
        self.reject_button.clicked.connect(lambda: self.review(False))
        self.min_score = QDoubleSpinBox()
        self.min_score.setRange(0.0, 1.0)
        self.min_score.setSingleStep(0.05)
        self.min_score.setPrefix("min score ")
        self.accept_all_button = QPushButton("Accept all")
        self.accept_all_button.setToolTip("Accept every image whose proposals all reach the score")
        self.accept_all_button.clicked.connect(self.accept_all)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        tools = QHBoxLayout()
        for w in (self.edit_button, self.draw_class, self.undo_button, self.redo_button):
            tools.addWidget(w)
        tools.addWidget(self.delete_button)
        tools.addStretch(1)
        review = QHBoxLayout()
        review.addWidget(QLabel("Review:"))
        for w2 in (self.accept_button, self.reject_button, self.min_score, self.accept_all_button):
            review.addWidget(w2)
        review.addStretch(1)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addLayout(tools)
        rl.addWidget(self.view, 1)
        rl.addWidget(self.info)
        rl.addLayout(review)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.grid)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(splitter, 1)

        self.index: ItemIndex | None = None
        self.item: dict[str, Any] | None = None
        self._generation = 0
        self._edits: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._editing_busy = False
        self._edit_count = 0  # edits started so far: a read begun before one is stale
        self._reads = 0  # image reads started: only the newest is shown
        self._filling = False
        self._open_first = False
        self._update_buttons()

    # ---- loading -----------------------------------------------------------------------

    def set_classes(self, names: list[str]) -> None:
        """The class names of the dataset shown (filters and the draw class)."""
        self._filling = True
        current = self.class_filter.currentText()
        self.class_filter.clear()
        self.class_filter.addItems([ANY, *names])
        if current in names:
            self.class_filter.setCurrentText(current)
        draw = self.draw_class.currentText()
        self.draw_class.clear()
        self.draw_class.addItems(names)
        if draw in names:
            self.draw_class.setCurrentText(draw)
        self._filling = False
        self.view.set_draw_class(self.draw_class.currentText() or None)

    def set_qa_checks(self, checks: list[str]) -> None:
        """The QA checks that found something (the QA filter's choices)."""
        self._filling = True
        current = self.qa_filter.currentText()
        self.qa_filter.clear()
        self.qa_filter.addItems([ANY, *checks])
        if current in checks:
            self.qa_filter.setCurrentText(current)
        self._filling = False

    def filters(self) -> ItemFilter:
        """The filters chosen."""

        def pick(combo: QComboBox) -> str | None:
            text = combo.currentText()
            return None if text in ("", ANY) else text

        return ItemFilter(
            class_name=pick(self.class_filter),
            status=pick(self.status_filter),
            split=pick(self.split_filter),
            qa_check=pick(self.qa_filter),
        )

    def _filters_changed(self) -> None:
        if not self._filling:
            self.reload()

    def show_review(self) -> None:
        """Filter the grid to the images under review and open the first one."""
        self._open_first = True
        self.item = None
        self.view.set_image(None)
        if self.status_filter.currentText() == "needs_review":
            self.reload()
        else:
            self.status_filter.setCurrentText("needs_review")  # reloads

    def reload(self) -> None:
        """Query the rows of the dataset shown (off the UI thread) and show them."""
        name = self.page.current
        if name is None:
            self.model.set_rows([])
            self.count_label.setText("")
            return
        self._generation += 1
        generation = self._generation
        self.count_label.setText("Loading…")
        self.page.ctx.run(
            item_index,
            self.page.ctx.workspace,
            name,
            None,
            self.filters(),
            limit=FIRST_PAGE,
            on_done=lambda idx: self._show_index(generation, idx),
        )

    def _show_index(self, generation: int, index: ItemIndex) -> None:
        if generation != self._generation:
            return
        self.index = index
        keep = self.item["file_name"] if self.item else None
        if index.offset == 0:
            self.model.set_rows(index.rows)
        else:
            self.model.append_rows(index.rows)
        if not index.complete:  # the rest, while the first page is already on screen
            self.page.ctx.run(
                item_index,
                self.page.ctx.workspace,
                index.dataset,
                None,
                self.filters(),
                offset=index.offset + len(index.rows),
                on_done=lambda idx: self._show_index(generation, idx),
            )
        shown = self.model.rowCount()
        self.count_label.setText(
            f"{index.version}: {shown} of {index.total} images"
            if shown != index.total
            else f"{index.version}: {shown} images"
        )
        if index.offset:
            return
        row = self.model.row_of_file(keep) if keep else -1
        if row < 0 and self._open_first and self.model.rowCount():
            row = 0
        self._open_first = False
        if row >= 0:
            self.grid.setCurrentIndex(self.model.index(row))
        elif self.item is not None and index.complete:
            self.item = None
            self.view.set_image(None)
            self._update_buttons()

    def open_row(self, row: int) -> None:
        """Show the image of grid row ``row`` with its annotations (read from the draft)."""
        if row < 0 or row >= self.model.rowCount() or self.page.current is None:
            return
        r = self.model.row_at(row)
        self._reads += 1
        read, edits = self._reads, self._edit_count
        self.page.ctx.run(
            datasets.get_item,
            self.page.ctx.workspace,
            self.page.current,
            r.file_name,
            on_done=lambda item: self._read_done(read, edits, item),
        )

    def _read_done(self, read: int, edits: int, item: dict[str, Any]) -> None:
        # Reads run beside edits on the pool: one overtaken by a newer read, or one of the
        # image shown that began before an edit of it (it may hold the boxes from before
        # the edit), would put old boxes back on screen.
        if read != self._reads:
            return
        shown = self.item is not None and self.item["file_name"] == item["file_name"]
        if shown and (edits != self._edit_count or self.pending_edits()):
            return
        self.show_item(item)

    def show_item(self, item: dict[str, Any]) -> None:
        """Show an item (from ``get_item`` or an edit's result)."""
        same = self.item is not None and self.item["file_name"] == item["file_name"]
        self.item = item
        if not same:
            self.view.set_image(self.page.ctx.workspace.blobs.path(item["sha256"]))
        self.view.set_annotations(item["annotations"])
        scores = [a["score"] for a in item["annotations"] if a.get("score") is not None]
        self.info.setText(
            f"{item['file_name']} — {item['width']}×{item['height']}, split {item['split']}, "
            f"{item['label_status']}, {len(item['annotations'])} annotations"
            + (f" ({len(scores)} proposals)" if scores else "")
        )
        self._update_buttons()

    def _update_buttons(self) -> None:
        has = self.item is not None
        review = has and self.item is not None and self.item["label_status"] == "needs_review"
        self.accept_button.setEnabled(review)
        self.reject_button.setEnabled(review)
        self.delete_button.setEnabled(has and self.view.editable and self.view.selected_index >= 0)

    # ---- editing -----------------------------------------------------------------------

    def set_editing(self, on: bool) -> None:
        """Switch the box editor on or off."""
        if self.edit_button.isChecked() != on:
            self.edit_button.setChecked(on)
            return
        self.view.set_editable(on)
        self.view.set_draw_class(self.draw_class.currentText() or None)
        self._update_buttons()

    def _draw_class_chosen(self) -> None:
        name = self.draw_class.currentText()
        self.view.set_draw_class(name or None)
        if self.view.selected_index >= 0 and name:
            self.view.set_selected_class(name)

    def _selection_changed(self, index: int) -> None:
        if index >= 0 and self.item is not None and index < len(self.item["annotations"]):
            self.draw_class.setCurrentText(str(self.item["annotations"][index]["class_name"]))
        self._update_buttons()

    def edit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue one edit of the current dataset's draft; they run in order."""
        self._edits.append((fn, args))
        self._next_edit()

    def _next_edit(self) -> None:
        if self._editing_busy or not self._edits or self.page.current is None:
            return
        fn, args = self._edits.popleft()
        self._editing_busy = True
        self._edit_count += 1
        self.page.ctx.run(
            fn,
            self.page.ctx.workspace,
            self.page.current,
            *args,
            on_done=self._edit_done,
            on_error=self._edit_failed,
        )

    def pending_edits(self) -> int:
        """Edits queued or running."""
        return len(self._edits) + int(self._editing_busy)

    def _edit_done(self, result: dict[str, Any]) -> None:
        self._editing_busy = False
        if "annotations" in result and "file_name" in result:
            self.show_item(result)
            self._update_row_status(result)
        elif self.item is not None:  # undo/redo: re-read the image shown
            self.open_row(self.grid.currentIndex().row())
        self.page.ctx.changed.emit("datasets")
        self._next_edit()

    def _edit_failed(self, exc: BaseException) -> None:
        self._editing_busy = False
        self._edits.clear()
        if self.item is not None:  # put the boxes back where the store has them
            self.view.set_annotations(self.item["annotations"])
        self.page.ctx.show_error(exc, self)

    def _update_row_status(self, item: dict[str, Any]) -> None:
        row = self.model.row_of_file(item["file_name"])
        if row >= 0 and self.model.row_at(row).label_status != item["label_status"]:
            self.reload()

    def _box_added(self, cls: str, x0: float, y0: float, x1: float, y1: float) -> None:
        if self.item is not None:
            self.edit(datasets.add_box, self.item["file_name"], cls, (x0, y0, x1, y1))

    def _box_changed(self, index: int, x0: float, y0: float, x1: float, y1: float) -> None:
        if self.item is not None:
            self.edit(datasets.update_box, self.item["file_name"], index, (x0, y0, x1, y1))

    def _box_deleted(self, index: int) -> None:
        if self.item is not None:
            self.edit(datasets.delete_annotation, self.item["file_name"], index)

    def _class_changed(self, index: int, cls: str) -> None:
        if self.item is not None:
            self.edit(datasets.set_annotation_class, self.item["file_name"], index, cls)

    def undo(self) -> None:
        """Undo the dataset's last edit."""
        self.edit(datasets.undo)

    def redo(self) -> None:
        """Redo the edit undone last."""
        self.edit(datasets.redo)

    def review(self, accept: bool) -> None:
        """Accept or reject the proposals of the image shown."""
        if self.item is not None:
            self.edit(_review, self.item["file_name"], accept)

    def accept_all(self) -> None:
        """Accept every image under review whose proposals reach the minimum score."""
        self.edit(_accept_all, round(self.min_score.value(), 4))


def _review(ws: Any, name: str, file_name: str, accept: bool) -> dict[str, Any]:
    return datasets.review(ws, name, file_name, accept=accept)


def _accept_all(ws: Any, name: str, min_score: float) -> dict[str, Any]:
    result = datasets.accept_all(ws, name, min_score)
    return {"accept_all": result}


class VersionsPanel(QWidget):
    """Numbered versions (and a changed draft), snapshot, tag, and a diff of two versions."""

    def __init__(self, page: DatasetsPage) -> None:
        super().__init__(page)
        self.page = page
        self.table = _table(
            ["Version", "Created", "Images", "Annotations", "Splits", "Origin", "Tags", "Message"]
        )
        self.snapshot_button = QPushButton("Snapshot…")
        self.snapshot_button.clicked.connect(self.snapshot)
        self.tag_button = QPushButton("Tag…")
        self.tag_button.clicked.connect(self.tag)
        self.a = QComboBox()
        self.b = QComboBox()
        self.diff_button = QPushButton("Diff")
        self.diff_button.clicked.connect(self.diff)
        self.diff_tree = QTreeWidget()
        self.diff_tree.setHeaderLabels(["Change", "Count / detail"])
        self.diff_tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        bar = QHBoxLayout()
        bar.addWidget(self.snapshot_button)
        bar.addWidget(self.tag_button)
        bar.addStretch(1)
        bar.addWidget(QLabel("Compare"))
        bar.addWidget(self.a)
        bar.addWidget(QLabel("with"))
        bar.addWidget(self.b)
        bar.addWidget(self.diff_button)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.diff_tree)
        layout.addWidget(splitter, 1)
        self.summary: dict[str, Any] | None = None
        self.last_diff: dict[str, Any] | None = None

    def show_summary(self, summary: dict[str, Any]) -> None:
        """Fill the table from ``dataset_summary``."""
        self.summary = summary
        rows = []
        labels = []
        for v in summary["versions"]:
            labels.append(v["version"])
            splits = v.get("splits") or {}
            rows.append(
                [
                    v["version"] + (" (changed)" if v.get("changed") else ""),
                    (v.get("created_at") or "")[:19].replace("T", " "),
                    v.get("images"),
                    v.get("annotations"),
                    " / ".join(str(splits.get(k, 0)) for k in ("train", "val", "test")),
                    v.get("origin"),
                    ", ".join(v.get("tags") or []),
                    v.get("message") or "",
                ]
            )
        _fill(self.table, rows)
        if summary["draft"]["exists"] and "draft" not in labels:
            labels.append("draft")
        for combo, pick in ((self.a, -2), (self.b, -1)):
            current = combo.currentText()
            combo.clear()
            combo.addItems(labels)
            if current in labels:
                combo.setCurrentText(current)
            elif labels:
                combo.setCurrentIndex(max(0, len(labels) + pick))

    def snapshot(self) -> None:
        """Save the draft as the next version (asks for a message)."""
        name = self.page.current
        if name is None:
            return
        message, ok = QInputDialog.getText(self, "Snapshot", "What changed?")
        if ok:
            self.page.ctx.run(
                _snapshot, self.page.ctx.workspace, name, message or None, on_done=self._changed
            )

    def tag(self) -> None:
        """Tag the selected version."""
        name = self.page.current
        row = self.table.currentRow()
        if name is None or self.summary is None or row < 0:
            return
        version = self.summary["versions"][row]["version"]
        if version == "draft":
            return
        tag, ok = QInputDialog.getText(self, "Tag", f"Tag for {name}@{version}")
        if ok and tag:
            self.page.ctx.run(
                datasets.tag_version,
                self.page.ctx.workspace,
                name,
                version,
                tag,
                on_done=self._changed,
            )

    def _changed(self, _result: Any) -> None:
        self.page.ctx.changed.emit("datasets")

    def diff(self) -> None:
        """Compare the two chosen versions."""
        name = self.page.current
        if name is None or not self.a.currentText() or not self.b.currentText():
            return
        self.page.ctx.run(
            datasets.diff_versions,
            self.page.ctx.workspace,
            name,
            self.a.currentText(),
            self.b.currentText(),
            on_done=self.show_diff,
        )

    def show_diff(self, diff: dict[str, Any]) -> None:
        """Show a ``diff_versions`` result as a tree."""
        self.last_diff = diff
        tree = self.diff_tree
        tree.clear()

        def node(parent: QTreeWidget | QTreeWidgetItem, text: str, value: Any) -> QTreeWidgetItem:
            item = QTreeWidgetItem([text, "" if value is None else str(value)])
            if isinstance(parent, QTreeWidget):
                parent.addTopLevelItem(item)
            else:
                parent.addChild(item)
            return item

        head = "identical" if diff["identical"] else "differ"
        node(tree, f"{diff['a']} → {diff['b']}", head)
        images = diff["images"]
        im = node(tree, "Images", f"+{images['added']} −{images['removed']} ~{images['changed']}")
        for kind, files in images.get("examples", {}).items():
            for f in files:
                node(im, kind, f)
        ann = diff["annotations"]
        an = node(
            tree,
            "Annotations",
            f"+{ann['added']} −{ann['removed']} ~{ann['changed']} in {ann['images']} images",
        )
        for ex in ann.get("examples", []):
            node(an, ex["file_name"], f"+{ex['added']} −{ex['removed']} ~{ex['changed']}")
        sp = diff["splits"]
        spn = node(tree, "Split moves", sp["moved"])
        for ex in sp.get("examples", []):
            node(spn, ex["file_name"], f"{ex['from']} → {ex['to']}")
        cl = diff["classes"]
        node(tree, "Classes added", ", ".join(cl["added"]) or "—")
        node(tree, "Classes removed", ", ".join(cl["removed"]) or "—")
        cc = node(tree, "Per class", "")
        for cls, c in diff["class_counts"].items():
            node(cc, cls, f"{c['a']} → {c['b']} ({c['delta']:+d})")
        ls = diff["label_status"]
        lsn = node(tree, "Label status changes", ls["changed"])
        for ex in ls.get("examples", []):
            node(lsn, ex["file_name"], f"{ex['from']} → {ex['to']}")
        tree.expandToDepth(0)


def _snapshot(ws: Any, name: str, message: str | None) -> dict[str, Any]:
    return datasets.snapshot(ws, name, message=message)


class QAPanel(QWidget):
    """The QA report of the draft (or latest version): one row per check that found something."""

    def __init__(self, page: DatasetsPage) -> None:
        super().__init__(page)
        self.page = page
        self.run_button = QPushButton("Run QA")
        self.run_button.clicked.connect(self.run_qa)
        self.summary = QLabel("")
        self.table = _table(["Check", "Severity", "Count", "Examples"])
        self.table.cellDoubleClicked.connect(self._show_in_grid)
        bar = QHBoxLayout()
        bar.addWidget(self.run_button)
        bar.addWidget(self.summary, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(QLabel("Double-click a check to show its images."))
        layout.addWidget(self.table, 1)
        self.report: dict[str, Any] | None = None

    def run_qa(self) -> None:
        """Run the QA checks on the draft (off the UI thread)."""
        name = self.page.current
        if name is None:
            return
        self.summary.setText("Checking…")
        self.page.ctx.run(
            working_qa_report, self.page.ctx.workspace, name, on_done=self.show_report
        )

    def show_report(self, report: dict[str, Any]) -> None:
        """Fill the table from ``qa_report``."""
        self.report = report
        self.summary.setText(
            f"{report['version']}: {report['images']} images, {report['annotations']} "
            f"annotations — {report['errors']} errors, {report['warnings']} warnings, "
            f"{report['infos']} infos"
        )
        rows = []
        for f in report["findings"]:
            examples = "; ".join(
                f"{e.get('file_name') or ''} {e.get('detail') or ''}".strip()
                for e in f["examples"][:3]
            )
            rows.append([f["check"], f["severity"], f["count"], examples])
        _fill(self.table, rows)
        self.page.images.set_qa_checks([f["check"] for f in report["findings"]])

    def _show_in_grid(self, row: int, _column: int) -> None:
        if self.report is None or row >= len(self.report["findings"]):
            return
        self.page.images.qa_filter.setCurrentText(self.report["findings"][row]["check"])
        self.page.tabs.setCurrentWidget(self.page.images)


class StatsPanel(QWidget):
    """Annotations per class, box sizes, label status and splits, as bar charts."""

    def __init__(self, page: DatasetsPage) -> None:
        super().__init__(page)
        self.page = page
        self.per_class = BarChart("Annotations per class")
        self.sizes = BarChart("Box sizes (COCO area)")
        self.status = BarChart("Label status")
        self.splits = BarChart("Images per split")
        self.summary = QLabel("")
        grid = QVBoxLayout(self)
        grid.addWidget(self.summary)
        top = QHBoxLayout()
        top.addWidget(self.per_class, 2)
        top.addWidget(self.sizes, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status)
        bottom.addWidget(self.splits)
        grid.addLayout(top, 1)
        grid.addLayout(bottom, 1)
        self.stats: dict[str, Any] | None = None

    def show_stats(self, stats: dict[str, Any]) -> None:
        """Show a ``dataset_stats`` result."""
        self.stats = stats
        self.per_class.set_data(dict(stats.get("annotations_per_class") or {}))
        self.sizes.set_data(dict(stats.get("box_sizes") or {}))
        self.status.set_data(dict(stats.get("label_status") or {}))
        self.splits.set_data(dict(stats.get("splits") or {}))
        self.summary.setText(
            f"{stats['version']}: {stats['images']} images, {stats['annotations']} annotations, "
            f"{stats.get('labelled_ratio', 0):.0%} labelled, "
            f"{int(stats.get('size_bytes') or 0) / 1e6:.1f} MB on disk"
        )


class DatasetsPage(QWidget):
    """Datasets: list, import, images (grid + editor), versions, QA, statistics, splits."""

    title = "Datasets"

    def __init__(self, ctx: StudioContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.current: str | None = None
        self.list = QListWidget()
        self.list.setMinimumWidth(180)
        self.list.currentItemChanged.connect(self._dataset_chosen)
        self.import_button = QPushButton("Import…")
        self.import_button.clicked.connect(lambda: self.open_import())
        self.split_button = QPushButton("Split…")
        self.split_button.clicked.connect(self.open_split)
        self.prelabel_button = QPushButton("Pre-label…")
        self.prelabel_button.setToolTip("Propose boxes with an exported detection model")
        self.prelabel_button.clicked.connect(self.open_prelabel)
        self.header = QLabel("No dataset yet: import one.")
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.tabs = QTabWidget()
        self.images = ImagesPanel(self)
        self.versions = VersionsPanel(self)
        self.qa = QAPanel(self)
        self.stats = StatsPanel(self)
        self.tabs.addTab(self.images, "Images")
        self.tabs.addTab(self.versions, "Versions")
        self.tabs.addTab(self.qa, "QA")
        self.tabs.addTab(self.stats, "Statistics")
        self.tabs.currentChanged.connect(lambda _i: self._load_tab())
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("Datasets"))
        ll.addWidget(self.list, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.import_button)
        buttons.addWidget(self.split_button)
        ll.addLayout(buttons)
        ll.addWidget(self.prelabel_button)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.header)
        rl.addWidget(self.tabs, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([220, 1000])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(splitter)
        self.datasets: list[dict[str, Any]] = []
        self._list_requests = 0
        self.wizard: ImportWizard | None = None
        self.prelabel_dialog: PrelabelDialog | None = None
        self.split_dialog: SplitDialog | None = None
        ctx.changed.connect(self._topic)
        ctx.workspace_changed.connect(self._workspace_changed)
        self.split_button.setEnabled(False)
        self.prelabel_button.setEnabled(False)

    # ---- the page contract -------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the dataset list (and, through it, the dataset shown).

        Listings can finish out of order (one started before an import may end after the
        one started by it); only the newest request's result is shown.
        """
        self._list_requests += 1
        request = self._list_requests
        self.ctx.run(
            datasets.list_datasets,
            self.ctx.workspace,
            on_done=lambda rows: self._listed(request, rows),
        )

    def _listed(self, request: int, rows: list[dict[str, Any]]) -> None:
        if request != self._list_requests:
            return  # a stale listing: a newer one is on its way
        self._show_datasets(rows)

    def _topic(self, topic: str) -> None:
        if topic == "datasets" and self.isVisible():
            self.refresh()

    def _workspace_changed(self) -> None:
        self.images.loader.root = self.ctx.root
        self.images.loader.clear()
        self.current = None
        self.refresh()

    # ---- datasets ----------------------------------------------------------------------

    def _show_datasets(self, rows: list[dict[str, Any]]) -> None:
        self.datasets = rows
        keep = self.current
        self.list.blockSignals(True)
        self.list.clear()
        for d in rows:
            item = QListWidgetItem(
                f"{d['name']}\n{d['latest'] or '—'}"
                + ("*" if d.get("draft_changed") else "")
                + f" · {d['images']} images · {d['task']}"
            )
            item.setData(Qt.ItemDataRole.UserRole, d["name"])
            item.setToolTip(", ".join(d.get("classes") or []))
            self.list.addItem(item)
        self.list.blockSignals(False)
        names = [d["name"] for d in rows]
        if keep in names:
            self.list.setCurrentRow(names.index(keep))
            self._load_dataset(reload_grid=True)
        elif names:
            self.list.setCurrentRow(0)
        else:
            self.current = None
            self.header.setText("No dataset yet: import one (Ctrl+I).")
            self.images.reload()
            self.split_button.setEnabled(False)
            self.prelabel_button.setEnabled(False)

    def _dataset_chosen(self, item: QListWidgetItem | None, _prev: Any = None) -> None:
        name = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        if name != self.current:
            self.current = name
            self.images.item = None
            self.images.view.set_image(None)
            self._load_dataset(reload_grid=True)

    def select_dataset(self, name: str) -> None:
        """Show the dataset ``name`` (when listed)."""
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == name:
                self.list.setCurrentRow(i)
                return

    def _load_dataset(self, reload_grid: bool) -> None:
        name = self.current
        self.split_button.setEnabled(name is not None)
        d = next((d for d in self.datasets if d["name"] == name), None)
        self.prelabel_button.setEnabled(d is not None and d.get("task") != "classify")
        if name is None:
            return
        if d is not None:
            self.header.setText(
                f"<b>{name}</b> — {d['task']}, {len(d['classes'])} classes, "
                f"latest {d['latest']}{' (draft changed)' if d.get('draft_changed') else ''}"
            )
            self.images.set_classes(list(d["classes"]))
        if reload_grid:
            self.images.reload()
        self._load_tab()

    def _load_tab(self) -> None:
        name = self.current
        if name is None:
            return
        tab = self.tabs.currentWidget()
        ws = self.ctx.workspace
        if tab is self.versions:
            self.ctx.run(datasets.dataset_summary, ws, name, on_done=self.versions.show_summary)
        elif tab is self.qa:
            self.qa.run_qa()
        elif tab is self.stats:
            self.ctx.run(_latest_stats, ws, name, on_done=self.stats.show_stats)

    # ---- dialogs -----------------------------------------------------------------------

    def open_import(self, path: Path | None = None) -> ImportWizard:
        """Open the import wizard (optionally with a source filled in)."""
        self.wizard = ImportWizard(self.ctx, self, path)
        self.wizard.imported.connect(self._imported)
        self.wizard.open()
        return self.wizard

    def _imported(self, result: dict[str, Any]) -> None:
        name = result.get("dataset") or result.get("name")
        if isinstance(name, str):
            self.current = name
        self.refresh()

    def open_prelabel(self) -> PrelabelDialog | None:
        """Open the pre-label dialog for the dataset shown; its proposals open for review."""
        if self.current is None:
            return None
        self.prelabel_dialog = PrelabelDialog(self.ctx, self.current, self)
        self.prelabel_dialog.prelabelled.connect(self._prelabelled)
        self.prelabel_dialog.open()
        return self.prelabel_dialog

    def _prelabelled(self, result: dict[str, Any]) -> None:
        """Show the images under review (the proposals) in the grid, the first one opened."""
        name = result.get("dataset")
        if isinstance(name, str) and name != self.current:
            self.select_dataset(name)
        self.tabs.setCurrentWidget(self.images)
        self.images.show_review()
        self.ctx.changed.emit("datasets")

    def open_split(self) -> SplitDialog | None:
        """Open the split dialog of the dataset shown."""
        if self.current is None:
            return None
        self.split_dialog = SplitDialog(self.ctx, self.current, self)
        self.split_dialog.open()
        return self.split_dialog


def _latest_stats(ws: Any, name: str) -> dict[str, Any]:
    """Statistics of the draft when there is one, else of the latest version."""
    try:
        return datasets.dataset_stats(ws, name, "draft")
    except NotFoundError:
        return datasets.dataset_stats(ws, name)
