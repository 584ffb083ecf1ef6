"""Experiments page: search, stars, compare (curves + parameter diff), markdown notes, and a
real evaluation and sample predictions with the fake detector's export."""

# ruff: noqa: F811 - the fixtures imported from fixtures_s2 are test parameters
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from desktop_app.core.models import TrainingRun
from desktop_app.ui.experiments_page import STAR_OFF, STAR_ON, ExperimentsPage
from tests.ui.fixtures_s2 import add_fake_export, s2_ctx, seed_runs  # noqa: F401 - fixtures

pytestmark = pytest.mark.gui


def _page(qtbot: Any, ctx: Any) -> ExperimentsPage:
    page = ExperimentsPage(ctx)
    qtbot.addWidget(page)
    page.resize(1100, 750)
    page.show()
    page.refresh()
    qtbot.waitUntil(lambda: len(page.runs) == 2, timeout=10_000)
    return page


def _assert_drawn(widget: Any) -> None:
    """The widget paints something besides its background (curves, bars or cells)."""
    widget.resize(420, 300)
    image = widget.grab().toImage()
    background = image.pixelColor(1, 1)
    colours = {
        image.pixelColor(x, y).name()
        for x in range(0, image.width(), 7)
        for y in range(0, image.height(), 7)
    }
    assert len(colours - {background.name()}) >= 3


def _ids(page: ExperimentsPage) -> list[str]:
    return [page.runs_table.item(r, 1).text() for r in range(page.runs_table.rowCount())]


def test_search_and_stars(qtbot: Any, s2_ctx: Any) -> None:
    seed_runs(s2_ctx.workspace)
    page = _page(qtbot, s2_ctx)
    assert sorted(_ids(page)) == ["run-alpha", "run-beta"]

    page.search_edit.setText("low-lr")  # a tag of run-beta
    qtbot.waitUntil(lambda: _ids(page) == ["run-beta"], timeout=10_000)
    page.search_edit.setText("")
    qtbot.waitUntil(lambda: len(_ids(page)) == 2, timeout=10_000)

    row = _ids(page).index("run-alpha")
    assert page.runs_table.item(row, 0).text() == STAR_OFF
    page.runs_table.cellClicked.emit(row, 0)
    qtbot.waitUntil(
        lambda: page.runs_table.item(_ids(page).index("run-alpha"), 0).text() == STAR_ON,
        timeout=10_000,
    )
    with s2_ctx.workspace.session() as s:
        assert s.get(TrainingRun, "run-alpha").starred
    page.starred_box.setChecked(True)
    qtbot.waitUntil(lambda: _ids(page) == ["run-alpha"], timeout=10_000)


def test_compare_overlays_curves_and_diffs_parameters(qtbot: Any, s2_ctx: Any) -> None:
    seed_runs(s2_ctx.workspace)
    page = _page(qtbot, s2_ctx)
    assert not page.compare_button.isEnabled()
    page.select_runs(["run-alpha", "run-beta"])
    assert page.compare_button.isEnabled()
    page.compare_button.click()
    qtbot.waitUntil(lambda: page.comparison is not None, timeout=10_000)
    assert page.metric_box.currentText() == "metrics/mAP50-95(B)"
    assert sorted(page.compare_chart.series_names()) == ["run-alpha", "run-beta"]
    assert page.compare_chart.points("run-beta") == [(1.0, 0.05), (2.0, 0.15), (3.0, 0.35)]
    _assert_drawn(page.compare_chart)
    page.metric_box.setCurrentText("train/box_loss")
    assert page.compare_chart.points("run-alpha")[-1] == (3.0, 1.2)
    params = {
        page.param_table.item(r, 0).text(): page.param_table.item(r, 1).text()
        for r in range(page.param_table.rowCount())
    }
    assert list(params) == ["lr0"]  # the only parameter that differs
    finals = {page.final_table.item(r, 0).text(): r for r in range(page.final_table.rowCount())}
    row = finals["metrics/mAP50-95(B)"]
    beta_col = 1 + [r["id"] for r in page.comparison["runs"]].index("run-beta")
    assert page.final_table.item(row, beta_col).text().endswith("*")  # the best run


def test_notes_preview_markdown_and_save(qtbot: Any, s2_ctx: Any) -> None:
    seed_runs(s2_ctx.workspace)
    page = _page(qtbot, s2_ctx)
    page.load_run("run-beta")
    qtbot.waitUntil(lambda: page.detail is not None, timeout=10_000)
    page.notes_edit.setPlainText("# Findings\n\n- **lower** learning rate wins")
    qtbot.waitUntil(lambda: "Findings" in page.notes_preview.toPlainText(), timeout=5_000)
    assert "#" not in page.notes_preview.toPlainText()
    assert "**" not in page.notes_preview.toPlainText()
    page.save_notes_button.click()
    qtbot.waitUntil(lambda: _notes(s2_ctx, "run-beta") is not None, timeout=10_000)
    assert _notes(s2_ctx, "run-beta") == "# Findings\n\n- **lower** learning rate wins"


def _notes(ctx: Any, run_id: str) -> str | None:
    with ctx.workspace.session() as s:
        row = s.scalars(select(TrainingRun).where(TrainingRun.id == run_id)).one()
        return row.notes


def test_evaluation_and_sample_predictions(qtbot: Any, s2_ctx: Any) -> None:
    ws = s2_ctx.workspace
    seed_runs(ws)
    add_fake_export(ws, "exp-eval1", "run-alpha")
    page = _page(qtbot, s2_ctx)
    page.load_run("run-alpha")
    qtbot.waitUntil(lambda: page.detail is not None, timeout=10_000)
    assert "No evaluation yet" in page.eval_label.text()
    assert page.evaluate_button.isEnabled()

    page.evaluate_button.click()
    qtbot.waitUntil(lambda: page.per_class_table.rowCount() > 0, timeout=60_000)
    classes = [page.per_class_table.item(r, 0).text() for r in range(3)]
    assert classes == ["circle", "square", "triangle"]
    rows, cols = page.confusion.labels()
    assert rows == cols == ["circle", "square", "triangle", "background"]
    assert len(page.confusion.matrix()) == 4
    assert sum(sum(r) for r in page.confusion.matrix()) > 0
    assert page.pr_chart.series_names()  # one curve per class with ground truth
    assert [name for name, _ in page.ap_chart.data()] == classes
    for chart in (page.confusion, page.pr_chart, page.ap_chart):
        _assert_drawn(chart)

    page.predict_button.click()
    qtbot.waitUntil(lambda: page.sample_list.count() > 0, timeout=60_000)
    first = page.samples[0]
    assert len(page.sample_view.box_items()) == len(first["annotations"]) > 0
    assert {b.class_name for b in page.sample_view.box_items()} <= {"circle", "square"}


def test_evaluate_without_export_says_what_to_do(qtbot: Any, s2_ctx: Any) -> None:
    seed_runs(s2_ctx.workspace)
    page = _page(qtbot, s2_ctx)
    page.load_run("run-beta")
    qtbot.waitUntil(lambda: page.detail is not None, timeout=10_000)
    page.evaluate_button.click()
    qtbot.waitUntil(lambda: s2_ctx.last_error is not None, timeout=10_000)
    assert "has no completed ONNX export" in s2_ctx.last_error
    assert "outpost export" in s2_ctx.last_error
