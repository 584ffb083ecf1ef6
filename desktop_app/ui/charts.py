"""Small charts drawn with QPainter: line curves, bars and a labelled heatmap.

Studio draws its pictures itself (QtCharts is not part of the essentials wheel). The
widgets hold only the numbers they are given; pages compute nothing here beyond the
scale of the axes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

#: Series colours, cycled in the order series are added.
PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick positions covering ``[low, high]`` (1, 2, 5 × 10^k steps).

    Args:
        low: The smallest value to show.
        high: The largest value to show.
        count: About how many ticks to return.

    Returns:
        Increasing tick values; one value when the range is empty.
    """
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high < low:
        low, high = high, low
    if high == low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks: list[float] = []
    value = first
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks or [low, high]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


class _ChartBase(QWidget):
    """Common title, margins and empty-state text."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._title = title
        self.empty_text = "No data yet"
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(220, 160)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(420, 260)

    @property
    def title(self) -> str:
        """The caption drawn above the plot."""
        return self._title

    def set_title(self, title: str) -> None:
        """Change the caption."""
        self._title = title
        self.update()

    def _draw_title(self, painter: QPainter) -> int:
        if not self._title:
            return 6
        metrics = QFontMetrics(painter.font())
        painter.setPen(self.palette().text().color())
        painter.drawText(
            QRectF(0, 2, self.width(), metrics.height() + 2),
            int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter),
            self._title,
        )
        return metrics.height() + 6

    def _draw_empty(self, painter: QPainter, top: int) -> None:
        painter.setPen(QColor("#888888"))
        painter.drawText(
            QRectF(0, top, self.width(), self.height() - top),
            int(Qt.AlignmentFlag.AlignCenter),
            self.empty_text,
        )


class LineChart(_ChartBase):
    """Named series of (x, y) points over a shared x axis, with legend and axes.

    Points can be appended live (one per epoch while a run trains); the axes rescale.
    """

    def __init__(
        self,
        title: str = "",
        x_label: str = "",
        y_label: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(title, parent)
        self.x_label = x_label
        self.y_label = y_label
        self._series: dict[str, list[tuple[float, float]]] = {}
        self._colors: dict[str, QColor] = {}

    def series_names(self) -> list[str]:
        """Series in the order they were added."""
        return list(self._series)

    def points(self, name: str) -> list[tuple[float, float]]:
        """A copy of one series' points (empty when unknown)."""
        return list(self._series.get(name, []))

    def _ensure(self, name: str) -> list[tuple[float, float]]:
        if name not in self._series:
            self._series[name] = []
            self._colors[name] = QColor(PALETTE[(len(self._colors)) % len(PALETTE)])
        return self._series[name]

    def set_series(self, name: str, points: Iterable[tuple[float, float]]) -> None:
        """Replace (or add) a series; non-finite points are skipped."""
        series = self._ensure(name)
        series.clear()
        series.extend(
            (float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)
        )
        series.sort(key=lambda p: p[0])
        self.update()

    def append(self, name: str, x: float, y: float) -> None:
        """Add one point to a series (creating it); a point at an existing x replaces it."""
        if not (math.isfinite(x) and math.isfinite(y)):
            return
        series = self._ensure(name)
        series[:] = [p for p in series if p[0] != x]
        series.append((float(x), float(y)))
        series.sort(key=lambda p: p[0])
        self.update()

    def remove_series(self, name: str) -> None:
        """Drop one series."""
        self._series.pop(name, None)
        self._colors.pop(name, None)
        self.update()

    def clear(self) -> None:
        """Drop every series."""
        self._series.clear()
        self._colors.clear()
        self.update()

    def color(self, name: str) -> QColor:
        """The colour a series is drawn in."""
        return QColor(self._colors.get(name, QColor(PALETTE[0])))

    def bounds(self) -> tuple[float, float, float, float] | None:
        """``(x_min, x_max, y_min, y_max)`` over all points, or ``None`` without points."""
        xs = [p[0] for s in self._series.values() for p in s]
        ys = [p[1] for s in self._series.values() for p in s]
        if not xs:
            return None
        return min(xs), max(xs), min(ys), max(ys)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        top = self._draw_title(painter)
        bounds = self.bounds()
        if bounds is None:
            self._draw_empty(painter, top)
            painter.end()
            return
        x0, x1, y0, y1 = bounds
        if x0 == x1:
            x0, x1 = x0 - 1, x1 + 1
        if y0 == y1:
            pad = abs(y0) * 0.1 or 1.0
            y0, y1 = y0 - pad, y1 + pad
        yticks = nice_ticks(y0, y1)
        y0, y1 = min(y0, yticks[0]), max(y1, yticks[-1])
        xticks = nice_ticks(x0, x1)
        metrics = QFontMetrics(painter.font())
        left = max(metrics.horizontalAdvance(_fmt(t)) for t in yticks) + 10
        if self.y_label:
            left += metrics.height()
        # Legend rows under the plot: every series named, wrapping across the width.
        rows: list[list[tuple[str, float]]] = [[]]
        lx = float(left)
        for name in self._series:
            w = metrics.horizontalAdvance(name) + 26
            if lx + w > self.width() and rows[-1]:
                rows.append([])
                lx = float(left)
            rows[-1].append((name, w))
            lx += w
        legend_h = len(rows) * (metrics.height() + 2) + 4
        bottom = metrics.height() * (2 if self.x_label else 1) + 8 + legend_h
        plot = QRectF(left, top, max(10, self.width() - left - 12), self.height() - top - bottom)
        if plot.height() < 10:
            painter.end()
            return

        def sx(x: float) -> float:
            return plot.left() + (x - x0) / (x1 - x0) * plot.width()

        def sy(y: float) -> float:
            return plot.bottom() - (y - y0) / (y1 - y0) * plot.height()

        grid = QPen(QColor("#dddddd"))
        text = self.palette().text().color()
        for t in yticks:
            painter.setPen(grid)
            painter.drawLine(QPointF(plot.left(), sy(t)), QPointF(plot.right(), sy(t)))
            painter.setPen(text)
            painter.drawText(
                QRectF(0, sy(t) - metrics.height() / 2, left - 4, metrics.height()),
                int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                _fmt(t),
            )
        for t in xticks:
            if t < x0 or t > x1:
                continue
            painter.setPen(text)
            painter.drawText(
                QRectF(sx(t) - 30, plot.bottom() + 2, 60, metrics.height()),
                int(Qt.AlignmentFlag.AlignHCenter),
                _fmt(t),
            )
        painter.setPen(QPen(text))
        painter.drawRect(plot)
        if self.x_label:
            painter.drawText(
                QRectF(plot.left(), plot.bottom() + metrics.height() + 4, plot.width(), 20),
                int(Qt.AlignmentFlag.AlignHCenter),
                self.x_label,
            )
        if self.y_label:
            painter.save()
            painter.translate(metrics.height() * 0.2, plot.center().y())
            painter.rotate(-90)
            painter.drawText(
                QRectF(-plot.height() / 2, 0, plot.height(), metrics.height()),
                int(Qt.AlignmentFlag.AlignHCenter),
                self.y_label,
            )
            painter.restore()
        for name, series in self._series.items():
            pen = QPen(self._colors[name], 2)
            painter.setPen(pen)
            pts = [QPointF(sx(x), sy(y)) for x, y in series]
            for a, b in zip(pts, pts[1:], strict=False):
                painter.drawLine(a, b)
            painter.setBrush(self._colors[name])
            for p in pts:
                painter.drawEllipse(p, 2.5, 2.5)
            painter.setBrush(Qt.BrushStyle.NoBrush)
        ly = float(self.height() - legend_h)
        for row in rows:
            lx = plot.left()
            for name, width in row:
                painter.fillRect(QRectF(lx, ly + 4, 14, metrics.height() - 6), self._colors[name])
                painter.setPen(text)
                painter.drawText(QRectF(lx + 18, ly, width, metrics.height()), 0, name)
                lx += width
            ly += metrics.height() + 2
        painter.end()


class BarChart(_ChartBase):
    """Categories with one value each, drawn as vertical bars with their values."""

    def __init__(
        self, title: str = "", color: str = PALETTE[0], parent: QWidget | None = None
    ) -> None:
        super().__init__(title, parent)
        self._data: list[tuple[str, float]] = []
        self._color = QColor(color)

    def set_data(self, data: Sequence[tuple[str, float]] | dict[str, float]) -> None:
        """Replace the bars: ``{category: value}`` or ``[(category, value), ...]``."""
        items = list(data.items()) if isinstance(data, dict) else list(data)
        self._data = [(str(k), float(v)) for k, v in items if math.isfinite(float(v))]
        self.update()

    def data(self) -> list[tuple[str, float]]:
        """The bars shown, in order."""
        return list(self._data)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        top = self._draw_title(painter)
        if not self._data:
            self._draw_empty(painter, top)
            painter.end()
            return
        metrics = QFontMetrics(painter.font())
        high = max(0.0, max(v for _, v in self._data))
        low = min(0.0, min(v for _, v in self._data))
        if high == low:
            high = low + 1.0
        ticks = nice_ticks(low, high)
        high = max(high, ticks[-1])
        left = max(metrics.horizontalAdvance(_fmt(t)) for t in ticks) + 10
        bottom = metrics.height() + 8
        plot = QRectF(left, top + metrics.height(), self.width() - left - 10, 0)
        plot.setBottom(self.height() - bottom)
        if plot.height() < 10 or plot.width() < 10:
            painter.end()
            return

        def sy(y: float) -> float:
            return plot.bottom() - (y - low) / (high - low) * plot.height()

        text = self.palette().text().color()
        for t in ticks:
            painter.setPen(QColor("#dddddd"))
            painter.drawLine(QPointF(plot.left(), sy(t)), QPointF(plot.right(), sy(t)))
            painter.setPen(text)
            painter.drawText(
                QRectF(0, sy(t) - metrics.height() / 2, left - 4, metrics.height()),
                int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                _fmt(t),
            )
        slot = plot.width() / len(self._data)
        bar_w = max(2.0, slot * 0.7)
        for i, (name, value) in enumerate(self._data):
            cx = plot.left() + slot * (i + 0.5)
            y_top, y_base = sy(max(value, 0.0)), sy(min(value, 0.0))
            painter.fillRect(QRectF(cx - bar_w / 2, y_top, bar_w, y_base - y_top), self._color)
            painter.setPen(text)
            painter.drawText(
                QRectF(cx - slot / 2, y_top - metrics.height() - 1, slot, metrics.height()),
                int(Qt.AlignmentFlag.AlignHCenter),
                _fmt(value),
            )
            label = metrics.elidedText(name, Qt.TextElideMode.ElideRight, int(slot) - 2)
            painter.drawText(
                QRectF(cx - slot / 2, plot.bottom() + 2, slot, metrics.height()),
                int(Qt.AlignmentFlag.AlignHCenter),
                label,
            )
        painter.setPen(text)
        painter.drawLine(plot.bottomLeft(), plot.bottomRight())
        painter.end()


class Heatmap(_ChartBase):
    """A matrix of values with row and column labels (e.g. a confusion matrix).

    Rows are the true classes, columns the predicted ones when used as a confusion
    matrix; each cell shows its value, shaded by its share of the largest value.
    """

    def __init__(
        self,
        title: str = "",
        row_title: str = "",
        column_title: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(title, parent)
        self.row_title = row_title
        self.column_title = column_title
        self._matrix: list[list[float]] = []
        self._rows: list[str] = []
        self._cols: list[str] = []

    def set_matrix(
        self,
        matrix: Sequence[Sequence[float]],
        row_labels: Sequence[str],
        column_labels: Sequence[str] | None = None,
    ) -> None:
        """Show a matrix; labels default to indices when missing.

        Raises:
            ValueError: When the rows are not all the same length.
        """
        rows = [[float(v) for v in row] for row in matrix]
        if rows and any(len(r) != len(rows[0]) for r in rows):
            raise ValueError("heatmap rows differ in length: pass a rectangular matrix")
        ncols = len(rows[0]) if rows else 0
        cols = list(column_labels) if column_labels is not None else list(row_labels)
        self._matrix = rows
        self._rows = [str(v) for v in row_labels][: len(rows)]
        self._rows += [str(i) for i in range(len(self._rows), len(rows))]
        self._cols = [str(v) for v in cols][:ncols]
        self._cols += [str(i) for i in range(len(self._cols), ncols)]
        self.update()

    def matrix(self) -> list[list[float]]:
        """A copy of the matrix shown."""
        return [list(r) for r in self._matrix]

    def labels(self) -> tuple[list[str], list[str]]:
        """``(row_labels, column_labels)``."""
        return list(self._rows), list(self._cols)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        top = self._draw_title(painter)
        if not self._matrix or not self._matrix[0]:
            self._draw_empty(painter, top)
            painter.end()
            return
        metrics = QFontMetrics(painter.font())
        text = self.palette().text().color()
        left = max(metrics.horizontalAdvance(r) for r in self._rows) + 10
        if self.row_title:
            left += metrics.height() + 2
        header = metrics.height() + 6
        if self.column_title:
            header += metrics.height() + 2
        grid = QRectF(left, top + header, self.width() - left - 8, self.height() - top - header - 8)
        if grid.width() < 10 or grid.height() < 10:
            painter.end()
            return
        nrows, ncols = len(self._matrix), len(self._matrix[0])
        cw, ch = grid.width() / ncols, grid.height() / nrows
        peak = max((v for r in self._matrix for v in r), default=0.0) or 1.0
        if self.column_title:
            painter.setPen(text)
            painter.drawText(
                QRectF(grid.left(), top, grid.width(), metrics.height()),
                int(Qt.AlignmentFlag.AlignHCenter),
                self.column_title,
            )
        for j, name in enumerate(self._cols):
            painter.setPen(text)
            painter.drawText(
                QRectF(
                    grid.left() + j * cw, grid.top() - metrics.height() - 3, cw, metrics.height()
                ),
                int(Qt.AlignmentFlag.AlignHCenter),
                metrics.elidedText(name, Qt.TextElideMode.ElideRight, int(cw) - 2),
            )
        if self.row_title:
            painter.save()
            painter.translate(2, grid.center().y())
            painter.rotate(-90)
            painter.drawText(
                QRectF(-grid.height() / 2, 0, grid.height(), metrics.height()),
                int(Qt.AlignmentFlag.AlignHCenter),
                self.row_title,
            )
            painter.restore()
        for i, row in enumerate(self._matrix):
            painter.setPen(text)
            painter.drawText(
                QRectF(0, grid.top() + i * ch, left - 4, ch),
                int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                self._rows[i],
            )
            for j, value in enumerate(row):
                share = max(0.0, min(1.0, value / peak))
                cell = QRectF(grid.left() + j * cw, grid.top() + i * ch, cw, ch)
                shade = QColor.fromRgbF(1.0 - 0.85 * share, 1.0 - 0.6 * share, 1.0, 1.0)
                painter.fillRect(cell, shade)
                painter.setPen(QColor("#ffffff") if share > 0.55 else QColor("#202020"))
                if ch >= metrics.height() and cw >= metrics.horizontalAdvance(_fmt(value)):
                    painter.drawText(cell, int(Qt.AlignmentFlag.AlignCenter), _fmt(value))
        painter.setPen(QColor("#bbbbbb"))
        painter.drawRect(grid)
        painter.end()
