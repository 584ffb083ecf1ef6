"""An image with its annotations drawn on top, and a box editor.

:class:`AnnotatedImageView` shows one image and its boxes (each with its class name, in the
class's colour; a prediction's segmentation mask and pose keypoints are drawn with its box). In edit mode a person draws a new box (drag on empty space), moves a box
(drag it), resizes it (drag one of the selected box's corner handles), deletes it (Del) or
changes its class (:meth:`AnnotatedImageView.set_selected_class`). The view changes nothing
itself: each edit is a signal with pixel coordinates, and whoever owns the data (the
datasets page, through ``desktop_app.core.dataset_edit``) stores it and calls
:meth:`AnnotatedImageView.set_annotations` with the result.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QImage,
    QImageReader,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPen,
    QPixmap,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QWidget,
)

HANDLE_PX = 8  # corner handle size on screen
MIN_BOX_PX = 2.0  # a drawn box smaller than this (image pixels) is ignored
MASK_ALPHA = 110  # a segmentation mask's opacity (0-255) over the image
KEYPOINT_PX = 6  # a keypoint's dot on screen
KEYPOINT_MIN_VISIBILITY = 0.5  # keypoints the model is less sure of are not drawn


def class_color(class_id: int) -> QColor:
    """A distinct, stable colour for a class id (golden-ratio hues)."""
    hue = (class_id * 0.618033988749895 + 0.08) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return QColor(int(r * 255), int(g * 255), int(b * 255))


class BoxItem(QGraphicsRectItem):
    """One annotation: its rectangle (image pixels), class label and, when selected, handles."""

    def __init__(self, index: int, annotation: Mapping[str, Any]) -> None:
        x0, y0, x1, y1 = (float(v) for v in annotation["xyxy"])
        super().__init__(QRectF(QPointF(x0, y0), QPointF(x1, y1)).normalized())
        self.index = index
        self.annotation = dict(annotation)
        self.class_id = int(annotation.get("class_id", 0))
        self.class_name = str(annotation.get("class_name", self.class_id))
        self.score: float | None = (
            float(annotation["score"]) if annotation.get("score") is not None else None
        )
        self.color = class_color(self.class_id)
        pen = QPen(self.color, 2)
        pen.setCosmetic(True)
        if self.score is not None:  # a proposal awaiting review: dashed
            pen.setStyle(Qt.PenStyle.DashLine)
        self.setPen(pen)
        fill = QColor(self.color)
        fill.setAlpha(28)
        self.setBrush(QBrush(fill))
        self.setZValue(1)
        text = self.class_name if self.score is None else f"{self.class_name} {self.score:.2f}"
        self.label = QGraphicsSimpleTextItem(text, self)
        self.label.setBrush(QBrush(QColor("white")))
        font = QFont()
        font.setPointSizeF(9)
        font.setBold(True)
        self.label.setFont(font)
        self.label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self.label_bg = QGraphicsRectItem(self)
        self.label_bg.setBrush(QBrush(self.color))
        self.label_bg.setPen(QPen(Qt.PenStyle.NoPen))
        self.label_bg.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self.label_bg.setZValue(-0.1)
        self.label.setZValue(0.1)
        self._place_label()
        self.mask_item: QGraphicsPixmapItem | None = None
        self.keypoint_items: list[QGraphicsEllipseItem] = []
        if annotation.get("mask"):
            self._add_mask(annotation["mask"])
        if annotation.get("keypoints"):
            self._add_keypoints(annotation["keypoints"])

    def _add_mask(self, rle: Mapping[str, Any]) -> None:
        """A prediction's mask (COCO RLE at the image's size), translucent in the class's
        colour, as an image of the mask's own box."""
        from runtimes.detections import rle_to_mask

        try:
            mask = rle_to_mask(dict(rle))
        except (KeyError, TypeError, ValueError):
            return  # a malformed mask is left out; the box still shows
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not rows.size:
            return
        part = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        rgba = np.zeros((*part.shape, 4), np.uint8)
        rgba[part] = (self.color.red(), self.color.green(), self.color.blue(), MASK_ALPHA)
        height, width = part.shape
        image = QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888).copy()
        self.mask_item = QGraphicsPixmapItem(QPixmap.fromImage(image), self)
        self.mask_item.setPos(float(cols[0]), float(rows[0]))
        self.mask_item.setZValue(-0.5)

    def _add_keypoints(self, keypoints: Sequence[Sequence[float]]) -> None:
        """A pose prediction's keypoints (``[x, y]`` or ``[x, y, visibility]`` in image
        pixels) as dots in the class's colour; those below
        :data:`KEYPOINT_MIN_VISIBILITY` are left out."""
        for point in keypoints:
            if len(point) < 2 or (len(point) > 2 and float(point[2]) < KEYPOINT_MIN_VISIBILITY):
                continue
            half = KEYPOINT_PX / 2
            dot = QGraphicsEllipseItem(-half, -half, KEYPOINT_PX, KEYPOINT_PX, self)
            dot.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
            dot.setPos(float(point[0]), float(point[1]))
            dot.setBrush(QBrush(self.color))
            dot.setPen(QPen(QColor("white"), 1))
            dot.setZValue(0.2)
            self.keypoint_items.append(dot)

    def _place_label(self) -> None:
        r = self.rect()
        br = self.label.boundingRect()
        self.label_bg.setRect(QRectF(0, 0, br.width() + 6, br.height() + 2))
        self.label_bg.setPos(r.left(), r.top())
        self.label.setPos(r.left(), r.top())
        # the label itself ignores the view's scale; nudge its text inside the background
        self.label.setTransform(QTransform.fromTranslate(3, 1))

    def set_box(self, rect: QRectF) -> None:
        """Move the drawn rectangle (while dragging)."""
        self.setRect(rect.normalized())
        self._place_label()

    def xyxy(self) -> tuple[float, float, float, float]:
        """The rectangle as pixel ``x0, y0, x1, y1``."""
        r = self.rect()
        return (r.left(), r.top(), r.right(), r.bottom())

    def set_selected_look(self, selected: bool) -> None:
        """Thicker outline while selected."""
        pen = self.pen()
        pen.setWidth(3 if selected else 2)
        self.setPen(pen)
        self.setZValue(2 if selected else 1)


class AnnotatedImageView(QGraphicsView):
    """An image with boxes and class labels; an optional editor for those boxes.

    Signals:
        box_added(str, float, float, float, float): a box of the current draw class was
            drawn (pixels ``x0, y0, x1, y1``).
        box_changed(int, float, float, float, float): annotation ``index`` was moved or
            resized to the given pixel box.
        box_deleted(int): annotation ``index`` should be deleted.
        class_changed(int, str): annotation ``index`` should become the given class.
        selection_changed(int): the selected annotation's index (-1: none).
    """

    box_added = Signal(str, float, float, float, float)
    box_changed = Signal(int, float, float, float, float)
    box_deleted = Signal(int)
    class_changed = Signal(int, str)
    selection_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        self.setBackgroundBrush(QBrush(QColor(40, 40, 44)))
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._pixmap_item: QGraphicsPixmapItem | None = None
        self._image_size: tuple[int, int] = (0, 0)
        self._boxes: list[BoxItem] = []
        self._handles: list[QGraphicsRectItem] = []
        self._selected = -1
        self._editable = False
        self._draw_class: str | None = None
        self._drag: tuple[str, int, QPointF, QRectF] | None = None  # mode, index, start, rect
        self._rubber: QGraphicsRectItem | None = None
        self._fit = True
        self.message = ""

    # ---- display ---------------------------------------------------------------------

    def set_image(self, path: Path | str | None) -> bool:
        """Show the image at ``path`` (None clears the view); False when it cannot be read."""
        self._scene.clear()
        self._boxes, self._handles, self._selected = [], [], -1
        self._pixmap_item, self._rubber, self._drag = None, None, None
        self._image_size = (0, 0)
        if path is None:
            return False
        reader = QImageReader(str(path))
        reader.setAutoTransform(True)
        image = reader.read()
        if image.isNull():
            self.message = f"cannot read {Path(path).name}: {reader.errorString()}"
            return False
        self.message = ""
        self._pixmap_item = self._scene.addPixmap(QPixmap.fromImage(image))
        self._pixmap_item.setZValue(0)
        self._image_size = (image.width(), image.height())
        self._scene.setSceneRect(QRectF(0, 0, image.width(), image.height()))
        self._fit = True
        self.fit()
        return True

    def image_size(self) -> tuple[int, int]:
        """Width and height of the shown image (0, 0 when none)."""
        return self._image_size

    def set_annotations(self, annotations: Sequence[Mapping[str, Any]]) -> None:
        """Draw these annotations (each with ``xyxy`` in pixels, ``class_id``, ``class_name``,
        optionally ``score``); the selection is kept when its index still exists."""
        keep = self._selected
        for item in self._boxes:
            self._scene.removeItem(item)
        self._boxes = [BoxItem(i, a) for i, a in enumerate(annotations) if a.get("xyxy")]
        for item in self._boxes:
            self._scene.addItem(item)
        self._select(keep if 0 <= keep < len(self._boxes) else -1)

    def box_items(self) -> list[BoxItem]:
        """The drawn boxes, in annotation order."""
        return list(self._boxes)

    def fit(self) -> None:
        """Scale the image to fit the view."""
        if self._pixmap_item is not None:
            self.fitInView(self._scene.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        if self._fit:
            self.fit()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            factor = 1.2 if event.angleDelta().y() > 0 else 1 / 1.2
            self._fit = False
            self.scale(factor, factor)
            event.accept()
            return
        super().wheelEvent(event)

    # ---- editing ---------------------------------------------------------------------

    @property
    def editable(self) -> bool:
        return self._editable

    def set_editable(self, editable: bool) -> None:
        """Switch the editor on or off."""
        self._editable = editable
        if not editable:
            self._select(-1)

    def set_draw_class(self, class_name: str | None) -> None:
        """The class a newly drawn box gets (None: drawing is off)."""
        self._draw_class = class_name

    @property
    def selected_index(self) -> int:
        return self._selected

    def select(self, index: int) -> None:
        """Select annotation ``index`` (-1: none)."""
        self._select(index if 0 <= index < len(self._boxes) else -1)

    def delete_selected(self) -> None:
        """Ask to delete the selected annotation (emits :attr:`box_deleted`)."""
        if self._editable and self._selected >= 0:
            self.box_deleted.emit(self._selected)

    def set_selected_class(self, class_name: str) -> None:
        """Ask to change the selected annotation's class (emits :attr:`class_changed`)."""
        if self._editable and self._selected >= 0:
            if self._boxes[self._selected].class_name != class_name:
                self.class_changed.emit(self._selected, class_name)

    def _select(self, index: int) -> None:
        for handle in self._handles:
            self._scene.removeItem(handle)
        self._handles = []
        for item in self._boxes:
            item.set_selected_look(item.index == index)
        changed = index != self._selected
        self._selected = index
        if index >= 0 and self._editable:
            self._make_handles(self._boxes[index].rect())
        if changed:
            self.selection_changed.emit(index)

    def _handle_size(self) -> float:
        scale = self.transform().m11() or 1.0
        return HANDLE_PX / scale

    def _corners(self, rect: QRectF) -> list[QPointF]:
        return [rect.topLeft(), rect.topRight(), rect.bottomRight(), rect.bottomLeft()]

    def _make_handles(self, rect: QRectF) -> None:
        size = self._handle_size()
        for corner in self._corners(rect):
            handle = QGraphicsRectItem(
                QRectF(corner.x() - size / 2, corner.y() - size / 2, size, size)
            )
            handle.setBrush(QBrush(QColor("white")))
            pen = QPen(QColor("black"), 1)
            pen.setCosmetic(True)
            handle.setPen(pen)
            handle.setZValue(3)
            self._scene.addItem(handle)
            self._handles.append(handle)

    def _move_handles(self, rect: QRectF) -> None:
        size = self._handle_size()
        for handle, corner in zip(self._handles, self._corners(rect), strict=False):
            handle.setRect(QRectF(corner.x() - size / 2, corner.y() - size / 2, size, size))

    def _hit_handle(self, pos: QPointF) -> int:
        for i, handle in enumerate(self._handles):
            if handle.rect().adjusted(-1, -1, 1, 1).contains(pos):
                return i
        return -1

    def _hit_box(self, pos: QPointF) -> int:
        hits = [b for b in self._boxes if b.rect().contains(pos)]
        if not hits:
            return -1
        smallest = min(hits, key=lambda b: b.rect().width() * b.rect().height())
        return smallest.index

    def _clip(self, rect: QRectF) -> QRectF:
        w, h = self._image_size
        return rect.normalized().intersected(QRectF(0, 0, w, h))

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if not self._editable or event.button() != Qt.MouseButton.LeftButton:
            super().mousePressEvent(event)
            return
        pos = self.mapToScene(event.position().toPoint())
        self.setFocus()
        corner = self._hit_handle(pos) if self._selected >= 0 else -1
        if corner >= 0:
            rect = self._boxes[self._selected].rect()
            self._drag = (f"resize{corner}", self._selected, pos, QRectF(rect))
        else:
            index = self._hit_box(pos)
            if index >= 0:
                self._select(index)
                self._drag = ("move", index, pos, QRectF(self._boxes[index].rect()))
            elif self._draw_class is not None and self._pixmap_item is not None:
                self._select(-1)
                self._rubber = QGraphicsRectItem(QRectF(pos, pos))
                pen = QPen(class_color(0), 2, Qt.PenStyle.DashLine)
                pen.setCosmetic(True)
                self._rubber.setPen(pen)
                self._rubber.setZValue(4)
                self._scene.addItem(self._rubber)
                self._drag = ("draw", -1, pos, QRectF(pos, pos))
            else:
                self._select(-1)
        event.accept()

    def _dragged_rect(self, pos: QPointF) -> QRectF:
        assert self._drag is not None
        mode, _, start, rect = self._drag
        dx, dy = pos.x() - start.x(), pos.y() - start.y()
        if mode == "draw":
            return self._clip(QRectF(start, pos))
        if mode == "move":
            w, h = self._image_size
            dx = min(max(dx, -rect.left()), w - rect.right())
            dy = min(max(dy, -rect.top()), h - rect.bottom())
            return rect.translated(dx, dy)
        corner = int(mode.removeprefix("resize"))
        corners = self._corners(rect)
        fixed = corners[(corner + 2) % 4]
        moved = corners[corner] + QPointF(dx, dy)
        return self._clip(QRectF(fixed, moved))

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._drag is None:
            super().mouseMoveEvent(event)
            return
        pos = self.mapToScene(event.position().toPoint())
        rect = self._dragged_rect(pos)
        mode, index = self._drag[0], self._drag[1]
        if mode == "draw" and self._rubber is not None:
            self._rubber.setRect(rect)
        elif index >= 0:
            self._boxes[index].set_box(rect)
            self._move_handles(rect)
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._drag is None:
            super().mouseReleaseEvent(event)
            return
        pos = self.mapToScene(event.position().toPoint())
        rect = self._dragged_rect(pos)
        mode, index, _, before = self._drag
        self._drag = None
        if self._rubber is not None:
            self._scene.removeItem(self._rubber)
            self._rubber = None
        big_enough = rect.width() >= MIN_BOX_PX and rect.height() >= MIN_BOX_PX
        if mode == "draw":
            if big_enough and self._draw_class is not None:
                self.box_added.emit(
                    self._draw_class, rect.left(), rect.top(), rect.right(), rect.bottom()
                )
        elif index >= 0:
            if big_enough and rect != before:
                self.box_changed.emit(index, rect.left(), rect.top(), rect.right(), rect.bottom())
            else:
                self._boxes[index].set_box(before)
                self._move_handles(before)
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if self._editable and event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            self.delete_selected()
            event.accept()
            return
        if event.key() == Qt.Key.Key_Escape:
            self._select(-1)
            event.accept()
            return
        super().keyPressEvent(event)
