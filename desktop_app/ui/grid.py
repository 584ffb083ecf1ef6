"""A virtualised thumbnail grid: a list model over light rows, a delegate, a batched view.

The model holds only :class:`~desktop_app.ui.dataset_index.ItemRow` tuples; the view asks
for the rows on screen, and the model asks the :class:`ThumbnailLoader` for their
thumbnails, which arrive later and repaint their cells. Cells have one size, so the view
lays out 100,000 rows without measuring them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
)
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QListView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QWidget,
)

from desktop_app.ui.dataset_index import ItemRow
from desktop_app.ui.thumbnails import ThumbnailLoader

ROW_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_COLORS = {
    "labelled": QColor(76, 175, 80),
    "unlabelled": QColor(158, 158, 158),
    "needs_review": QColor(255, 152, 0),
}
Index = QModelIndex | QPersistentModelIndex


class ItemGridModel(QAbstractListModel):
    """Rows of a dataset version; thumbnails requested as cells are painted."""

    def __init__(
        self,
        loader: ThumbnailLoader,
        source_of: Callable[[str], Path],
        parent: Any = None,
    ) -> None:
        super().__init__(parent)
        self.loader = loader
        self.source_of = source_of
        self._rows: list[ItemRow] = []
        self._rows_of: dict[str, list[int]] = {}
        loader.ready.connect(self._thumbnail_ready)
        loader.failed.connect(lambda sha, _reason: self._thumbnail_ready(sha))

    def set_rows(self, rows: list[ItemRow]) -> None:
        """Replace every row (a new dataset, version or filter)."""
        self.beginResetModel()
        self._rows = list(rows)
        self._rows_of = {}
        for i, r in enumerate(rows):
            self._rows_of.setdefault(r.sha256, []).append(i)
        self.endResetModel()

    def append_rows(self, rows: list[ItemRow]) -> None:
        """Add rows at the end (the rest of a large version, after its first page)."""
        if not rows:
            return
        start = len(self._rows)
        self.beginInsertRows(QModelIndex(), start, start + len(rows) - 1)
        self._rows.extend(rows)
        for i, r in enumerate(rows, start):
            self._rows_of.setdefault(r.sha256, []).append(i)
        self.endInsertRows()

    def row_at(self, row: int) -> ItemRow:
        """The row's record."""
        return self._rows[row]

    def rows(self) -> list[ItemRow]:
        """Every row (read only)."""
        return self._rows

    def row_of_file(self, file_name: str) -> int:
        """The row showing ``file_name``, or -1."""
        for i, r in enumerate(self._rows):
            if r.file_name == file_name:
                return i
        return -1

    def thumbnail(self, row: ItemRow) -> QPixmap | None:
        """The row's thumbnail when it is made; otherwise ask for it and return None."""
        pm = self.loader.pixmap(row.sha256)
        if pm is None:
            self.loader.request(row.sha256, self.source_of(row.sha256))
        return pm

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: N802, B008 - Qt API
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        r = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return r.file_name
        if role == Qt.ItemDataRole.DecorationRole:
            return self.thumbnail(r)
        if role == Qt.ItemDataRole.ToolTipRole:
            why = self.loader.error(r.sha256)
            text = f"{r.file_name}\nsplit: {r.split}\nstatus: {r.label_status}"
            return f"{text}\n{why}" if why else text
        if role == ROW_ROLE:
            return r
        return None

    def _thumbnail_ready(self, sha: str) -> None:
        rows = self._rows_of.get(sha)
        if rows:
            self.dataChanged.emit(
                self.index(min(rows)), self.index(max(rows)), [Qt.ItemDataRole.DecorationRole]
            )


class ThumbnailDelegate(QStyledItemDelegate):
    """Paints a cell: the thumbnail (or a placeholder), the file name, a status dot."""

    def __init__(self, size: int, parent: Any = None) -> None:
        super().__init__(parent)
        self.size = size
        self._font_key = ""
        self._font_metrics: QFontMetrics | None = None

    def _metrics(self, font: QFont) -> QFontMetrics:
        key = font.key()
        if self._font_key != key:
            self._font_key, self._font_metrics = key, QFontMetrics(font)
        assert self._font_metrics is not None
        return self._font_metrics

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:  # noqa: N802
        return QSize(self.size + 12, self.size + 30)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        rect: QRect = option.rect
        state = option.state
        painter.save()
        if state & QStyle.StateFlag.State_Selected:
            painter.fillRect(rect.adjusted(1, 1, -1, -1), option.palette.highlight())
        box = QRect(rect.x() + 6, rect.y() + 6, self.size, self.size)
        # Read the row through the model's own methods: QModelIndex.data() from Python loses
        # a reference to None whenever the value is empty (PySide6 6.12 on Python 3.11), and
        # enough of those abort the interpreter.
        model = index.model()
        row = model.row_at(index.row()) if isinstance(model, ItemGridModel) else None
        pm = model.thumbnail(row) if isinstance(model, ItemGridModel) and row else None
        if pm is not None and not pm.isNull():
            x = box.x() + (box.width() - pm.width()) // 2
            y = box.y() + (box.height() - pm.height()) // 2
            painter.drawPixmap(x, y, pm)
        else:
            painter.fillRect(box, QColor(60, 60, 66))
        if row is not None:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            painter.setPen(QPen(Qt.PenStyle.NoPen))
            painter.setBrush(STATUS_COLORS.get(row.label_status, QColor("gray")))
            painter.drawEllipse(box.right() - 12, box.y() + 4, 9, 9)
        text_rect = QRect(rect.x() + 4, box.bottom() + 4, rect.width() - 8, 18)
        metrics = self._metrics(option.font)
        name = metrics.elidedText(
            row.file_name if row is not None else "",
            Qt.TextElideMode.ElideMiddle,
            text_rect.width(),
        )
        painter.setPen(option.palette.text().color())
        painter.drawText(text_rect, int(Qt.AlignmentFlag.AlignCenter), name)
        painter.restore()


class ThumbnailGrid(QListView):
    """A wrapping grid of equal cells, laid out in batches so large models show at once."""

    def __init__(self, size: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.ListMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(2000)
        self.setMovement(QListView.Movement.Static)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setItemDelegate(ThumbnailDelegate(size, self))
        self.setSpacing(2)
