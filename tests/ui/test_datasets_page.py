"""The Datasets area: import wizard, lazy thumbnail grid, image view and editor, filters,
split dialog, versions and diff, QA, statistics, pre-labelling review."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QApplication, QWizard

from desktop_app.core import datasets
from desktop_app.core.dataset_prelabel import store_proposals

pytestmark = pytest.mark.gui

WAIT = 20_000


def _page(qtbot: Any, studio: Any) -> Any:
    page = studio.datasets_page
    qtbot.waitUntil(lambda: page.images.model.rowCount() > 0, timeout=WAIT)
    return page


def _open(qtbot: Any, page: Any, row: int) -> dict[str, Any]:
    page.images.grid.setCurrentIndex(page.images.model.index(row))
    name = page.images.model.row_at(row).file_name
    qtbot.waitUntil(
        lambda: page.images.item is not None and page.images.item["file_name"] == name,
        timeout=WAIT,
    )
    return dict(page.images.item)


def _settle(qtbot: Any, page: Any) -> None:
    """Wait until the page's edits are stored and what the background tasks sent back has
    reached the page: a task's result arrives as a queued signal after the pool is idle, and
    one that lands in the middle of the next drag would replace the boxes under the mouse."""
    for _ in range(50):
        qtbot.waitUntil(lambda: page.images.pending_edits() == 0, timeout=WAIT)
        page.ctx.wait()
        QApplication.processEvents()
        if page.images.pending_edits() == 0 and page.ctx.pool.activeThreadCount() == 0:
            return
    raise AssertionError("the page kept starting background tasks")


def test_import_wizard_imports_the_sample(qtbot: Any, studio: Any, sample_source: Path) -> None:
    page = studio.datasets_page
    wizard = page.open_import(sample_source)
    assert wizard.currentPage() is wizard.source_page
    assert wizard.source_page.isComplete()
    wizard.next()
    qtbot.waitUntil(lambda: wizard.preview_page.report is not None, timeout=WAIT)
    report = wizard.preview_page.report
    assert report["images"] == 12
    assert wizard.preview_page.classes.rowCount() == len(report["classes"]) == 3
    assert wizard.preview_page.isComplete()
    wizard.next()
    wizard.name_page.name_edit.setText("bad name!")
    assert not wizard.name_page.isComplete()
    wizard.name_page.name_edit.setText("shapes-2")
    assert wizard.name_page.isComplete()
    wizard.button(QWizard.WizardButton.FinishButton).click()
    qtbot.waitUntil(lambda: any(d["name"] == "shapes-2" for d in page.datasets), timeout=WAIT)
    stored = {d["name"]: d for d in datasets.list_datasets(page.ctx.workspace)}
    assert stored["shapes-2"]["images"] == 12
    assert page.ctx.last_error is None


def test_grid_lists_rows_and_fills_thumbnails_lazily(qtbot: Any, studio: Any) -> None:
    page = _page(qtbot, studio)
    images = page.images
    assert images.model.rowCount() == 12
    loader = images.loader
    # thumbnails come from the pool as cells are painted, then stay cached on disk
    for row in range(images.model.rowCount()):
        images.grid.scrollTo(images.model.index(row))
        qtbot.waitUntil(
            lambda row=row: loader.pixmap(images.model.row_at(row).sha256) is not None,
            timeout=WAIT,
        )
    cached = sorted((page.ctx.root / "cache" / "thumbs").glob("*_128.jpg"))
    shas = {r.sha256 for r in images.model.rows()}
    assert {p.name.split("_")[0] for p in cached} == shas
    pm = loader.pixmap(images.model.row_at(0).sha256)
    assert pm is not None and max(pm.width(), pm.height()) <= 128


def test_image_view_draws_every_box(qtbot: Any, studio: Any) -> None:
    page = _page(qtbot, studio)
    for row in range(3):
        item = _open(qtbot, page, row)
        boxes = page.images.view.box_items()
        assert len(boxes) == len(item["annotations"]) > 0
        for box, ann in zip(boxes, item["annotations"], strict=True):
            assert box.class_name == ann["class_name"]
            assert box.xyxy() == pytest.approx(tuple(ann["xyxy"]), abs=1e-6)
            assert box.label.text() == ann["class_name"]


def _shortcut(
    qtbot: Any, studio: Any, key: Any, modifier: Any = Qt.KeyboardModifier.NoModifier
) -> None:
    """A shortcut of the main window's menus: it fires only while the window is active, which
    a loaded machine may not have made it yet."""
    if not studio.isActiveWindow():
        studio.activateWindow()
        qtbot.waitUntil(studio.isActiveWindow, timeout=WAIT)
    qtbot.keyClick(studio, key, modifier)


def _drag(qtbot: Any, view: Any, a: tuple[float, float], b: tuple[float, float]) -> None:
    vp = view.viewport()
    start = view.mapFromScene(*a)
    end = view.mapFromScene(*b)
    qtbot.mousePress(vp, Qt.MouseButton.LeftButton, pos=start)
    mid = QPoint((start.x() + end.x()) // 2, (start.y() + end.y()) // 2)
    qtbot.mouseMove(vp, mid)
    qtbot.mouseMove(vp, end)
    qtbot.mouseRelease(vp, Qt.MouseButton.LeftButton, pos=end)


def test_editor_add_move_resize_delete_then_undo_restores(qtbot: Any, studio: Any) -> None:
    page = _page(qtbot, studio)
    images = page.images
    original = _open(qtbot, page, 0)
    n = len(original["annotations"])
    view = images.view
    view.resize(600, 600)
    view.fit()
    images.set_editing(True)
    images.draw_class.setCurrentText("square")
    images._draw_class_chosen()
    # draw a new box on an empty corner
    _drag(qtbot, view, (2, 2), (30, 30))
    _settle(qtbot, page)
    assert len(images.item["annotations"]) == n + 1
    added = images.item["annotations"][-1]
    assert added["class_name"] == "square"
    assert added["xyxy"] == pytest.approx([2, 2, 30, 30], abs=1.5)
    # move it by dragging its middle
    _drag(qtbot, view, (16, 16), (26, 21))
    _settle(qtbot, page)
    moved = images.item["annotations"][-1]["xyxy"]
    assert moved == pytest.approx([12, 7, 40, 35], abs=1.5)
    # resize from its bottom-right handle
    assert view.selected_index == n
    _drag(qtbot, view, (moved[2], moved[3]), (50, 50))
    _settle(qtbot, page)
    assert images.item["annotations"][-1]["xyxy"] == pytest.approx([12, 7, 50, 50], abs=1.5)
    # change its class, then delete it with the Del shortcut
    view.set_selected_class("circle")
    _settle(qtbot, page)
    assert images.item["annotations"][-1]["class_name"] == "circle"
    view.setFocus()
    _shortcut(qtbot, studio, Qt.Key.Key_Delete)
    _settle(qtbot, page)
    qtbot.waitUntil(lambda: len(images.item["annotations"]) == n, timeout=WAIT)
    assert len(view.box_items()) == n
    # undo five times (Ctrl+Z) returns to the original
    for _ in range(5):
        _shortcut(qtbot, studio, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
        _settle(qtbot, page)
    stored = datasets.get_item(page.ctx.workspace, "shapes", original["file_name"])
    assert stored["annotations"] == original["annotations"]
    qtbot.waitUntil(lambda: images.item["annotations"] == original["annotations"], timeout=WAIT)
    # and redo (Ctrl+Shift+Z) adds the box again
    _shortcut(
        qtbot,
        studio,
        Qt.Key.Key_Z,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    _settle(qtbot, page)
    stored = datasets.get_item(page.ctx.workspace, "shapes", original["file_name"])
    assert len(stored["annotations"]) == n + 1


def test_a_read_that_began_before_an_edit_does_not_bring_old_boxes_back(
    qtbot: Any, studio: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = _page(qtbot, studio)
    images = page.images
    original = _open(qtbot, page, 0)
    n = len(original["annotations"])
    real_get_item = datasets.get_item
    release = threading.Event()
    read_started = threading.Event()

    def slow_get_item(*args: Any, **kwargs: Any) -> dict[str, Any]:
        item = real_get_item(*args, **kwargs)  # the boxes as they are now...
        read_started.set()
        release.wait(WAIT / 1000)  # ...handed back after the edit below is done
        return item

    monkeypatch.setattr(datasets, "get_item", slow_get_item)
    # no re-reads after the edit (the page's refresh would mend a stale read later)
    page.ctx.changed.disconnect(page._topic)
    images.open_row(0)  # e.g. a grid refresh re-reading the image shown
    assert read_started.wait(WAIT / 1000)
    images.set_editing(True)
    images.view.select(0)
    images.view.delete_selected()
    qtbot.waitUntil(lambda: images.pending_edits() == 0, timeout=WAIT)
    assert len(images.item["annotations"]) == n - 1
    release.set()
    page.ctx.wait()
    qtbot.wait(50)  # let the read's result reach the event loop
    assert len(images.item["annotations"]) == n - 1
    assert len(images.view.box_items()) == n - 1
    # a read begun after the edit is shown as usual
    monkeypatch.setattr(datasets, "get_item", real_get_item)
    images.open_row(0)
    page.ctx.wait()
    qtbot.wait(50)
    stored = real_get_item(page.ctx.workspace, "shapes", original["file_name"])
    assert images.item == stored


def test_filters_by_class_status_split_and_qa(qtbot: Any, studio: Any) -> None:
    page = _page(qtbot, studio)
    images = page.images
    ws = page.ctx.workspace

    def shown() -> set[str]:
        return {r.file_name for r in images.model.rows()}

    def wait_for(expected: set[str]) -> None:
        qtbot.waitUntil(lambda: shown() == expected, timeout=WAIT)

    circle = {i["file_name"] for i in datasets.list_items(ws, "shapes", class_name="circle")}
    assert 0 < len(circle) < 12
    images.class_filter.setCurrentText("circle")
    wait_for(circle)
    images.class_filter.setCurrentText("(any)")
    val = {i["file_name"] for i in datasets.list_items(ws, "shapes", split="val")}
    images.split_filter.setCurrentText("val")
    wait_for(val)
    images.split_filter.setCurrentText("(any)")
    wait_for({i["file_name"] for i in datasets.list_items(ws, "shapes")})
    target = sorted(shown())[0]
    datasets.set_label_status(ws, "shapes", target, "unlabelled")
    images.status_filter.setCurrentText("unlabelled")
    wait_for({target})
    images.status_filter.setCurrentText("(any)")
    # the QA tab lists the unlabelled image; double-clicking the check filters the grid
    page.tabs.setCurrentWidget(page.qa)
    qtbot.waitUntil(lambda: page.qa.report is not None, timeout=WAIT)
    checks = [f["check"] for f in page.qa.report["findings"]]
    assert "unlabelled" in checks
    assert page.qa.table.rowCount() == len(checks)
    page.qa.table.cellDoubleClicked.emit(checks.index("unlabelled"), 0)
    assert page.tabs.currentWidget() is images
    wait_for({target})


def test_split_dialog_applies_a_new_split(qtbot: Any, studio: Any) -> None:
    page = _page(qtbot, studio)
    dialog = page.open_split()
    assert dialog is not None
    qtbot.waitUntil(lambda: dialog.settings is not None, timeout=WAIT)
    dialog.val.setValue(0.25)
    dialog.test.setValue(0.25)
    dialog.seed.setValue(7)
    dialog.apply()
    qtbot.waitUntil(lambda: dialog.applied is not None, timeout=WAIT)
    info = datasets.split_settings(page.ctx.workspace, "shapes")
    assert info["settings"]["val"] == 0.25 and info["settings"]["seed"] == 7
    assert info["splits"]["test"] > 0
    assert dialog.applied["splits"] == info["splits"]
    assert "moved" in dialog.result_label.text()


def test_versions_snapshot_and_diff(qtbot: Any, studio: Any) -> None:
    page = _page(qtbot, studio)
    ws = page.ctx.workspace
    first = datasets.list_items(ws, "shapes", limit=1)[0]
    datasets.add_box(ws, "shapes", first["file_name"], "triangle", (1, 1, 20, 20))
    datasets.snapshot(ws, "shapes", message="one more triangle")
    page.tabs.setCurrentWidget(page.versions)
    qtbot.waitUntil(lambda: page.versions.table.rowCount() == 2, timeout=WAIT)
    assert page.versions.table.item(1, 7).text() == "one more triangle"
    page.versions.a.setCurrentText("v1")
    page.versions.b.setCurrentText("v2")
    page.versions.diff()
    qtbot.waitUntil(lambda: page.versions.last_diff is not None, timeout=WAIT)
    diff = page.versions.last_diff
    assert diff["annotations"]["added"] == 1
    assert diff["class_counts"]["triangle"]["delta"] == 1
    tree = page.versions.diff_tree
    texts = [tree.topLevelItem(i).text(0) for i in range(tree.topLevelItemCount())]
    assert "Annotations" in texts
    ann = tree.topLevelItem(texts.index("Annotations"))
    assert ann.text(1).startswith("+1 ")
    assert ann.child(0).text(0) == first["file_name"]


def test_statistics_charts_show_class_counts(qtbot: Any, studio: Any) -> None:
    page = _page(qtbot, studio)
    page.tabs.setCurrentWidget(page.stats)
    qtbot.waitUntil(lambda: page.stats.stats is not None, timeout=WAIT)
    per_class = datasets.dataset_stats(page.ctx.workspace, "shapes")["annotations_per_class"]
    assert dict(page.stats.per_class.data()) == {k: float(v) for k, v in per_class.items()}
    assert sum(v for _, v in page.stats.sizes.data()) == sum(per_class.values())


def test_review_accept_reject_and_accept_all(qtbot: Any, studio: Any) -> None:
    page = _page(qtbot, studio)
    ws = page.ctx.workspace
    files = [r.file_name for r in page.images.model.rows()[:3]]
    store_proposals(
        ws,
        "shapes",
        {f: [("circle", 0.9, (5.0, 5.0, 40.0, 40.0))] for f in files},
    )
    page.refresh()
    page.images.status_filter.setCurrentText("needs_review")
    qtbot.waitUntil(lambda: page.images.model.rowCount() == 3, timeout=WAIT)
    item = _open(qtbot, page, 0)
    assert item["label_status"] == "needs_review"
    assert page.images.accept_button.isEnabled()
    assert any(b.score == pytest.approx(0.9) for b in page.images.view.box_items())
    page.images.accept_button.click()
    _settle(qtbot, page)
    assert datasets.get_item(ws, "shapes", item["file_name"])["label_status"] == "labelled"
    qtbot.waitUntil(lambda: page.images.model.rowCount() == 2, timeout=WAIT)
    second = _open(qtbot, page, 0)
    before = len(second["annotations"])
    page.images.reject_button.click()
    _settle(qtbot, page)
    after = datasets.get_item(ws, "shapes", second["file_name"])
    assert len(after["annotations"]) == before - 1
    assert all(a["score"] is None for a in after["annotations"])
    page.images.accept_all_button.click()
    _settle(qtbot, page)
    statuses = {datasets.get_item(ws, "shapes", f)["label_status"] for f in files}
    assert statuses == {"labelled"}


def test_index_pages_and_grid_appends_the_rest(
    qtbot: Any, studio: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from desktop_app.ui import datasets_page
    from desktop_app.ui.dataset_index import item_index

    page = _page(qtbot, studio)
    ws = page.ctx.workspace
    first = item_index(ws, "shapes", limit=5)
    assert (len(first.rows), first.complete, first.total) == (5, False, 12)
    rest = item_index(ws, "shapes", offset=5, limit=100)
    assert (len(rest.rows), rest.complete) == (7, True)
    every = [r.file_name for r in item_index(ws, "shapes").rows]
    assert [r.file_name for r in first.rows + rest.rows] == every == sorted(every)
    # the grid shows a first page, then appends the rest in file-name order
    monkeypatch.setattr(datasets_page, "FIRST_PAGE", 5)
    page.images.reload()
    qtbot.waitUntil(lambda: page.images.count_label.text() == "v1: 12 images", timeout=WAIT)
    assert [r.file_name for r in page.images.model.rows()] == every
