"""Export page: the capability matrix, the wizard's formats and precisions (INT8 note),
the exports with their parity results, default and delete, a refused export, and an export
run as a real job (a child process the page follows to its end)."""

# ruff: noqa: F811 - the fixtures imported from fixtures_s2 are test parameters
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from desktop_app.core import studio_ops
from desktop_app.core.exports import default_export, list_exports
from desktop_app.core.jobs import JobManager, list_jobs
from desktop_app.core.models import TrainingRun
from desktop_app.ui.export_page import INT8_NOTE, ExportPage
from tests.ui.fixtures_s2 import add_fake_export, s2_ctx, seed_runs  # noqa: F401 - fixtures

pytestmark = pytest.mark.gui

VALIDATION = {
    "matched": 2,
    "reference_detections": 2,
    "export_detections": 2,
    "max_box_deviation_px": 0.31,
    "max_score_deviation": 0.0004,
    "accuracy": {"metric": "mAP50-95", "pytorch": 0.41, "export": 0.409},
}


def _page(qtbot: Any, ctx: Any) -> ExportPage:
    page = ExportPage(ctx)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    page.refresh()
    qtbot.waitUntil(lambda: page.capability_table.rowCount() > 0, timeout=10_000)
    return page


def _seed(ws: Any) -> None:
    seed_runs(ws)
    add_fake_export(
        ws,
        "exp-a1",
        "run-alpha",
        details={"precision": "fp32", "validation": VALIDATION, "latency": {"p50_ms": 1.25}},
    )
    add_fake_export(ws, "exp-a2", "run-alpha")


def test_capability_matrix_and_exports_with_parity(qtbot: Any, s2_ctx: Any) -> None:
    _seed(s2_ctx.workspace)
    page = _page(qtbot, s2_ctx)
    caps = studio_ops.export_capabilities()
    assert page.capability_table.rowCount() == len(caps)
    titles = [page.capability_table.item(r, 0).text() for r in range(len(caps))]
    assert titles == [c["title"] for c in caps]
    qtbot.waitUntil(lambda: page.exports_table.rowCount() == 2, timeout=10_000)
    page.select_export("exp-a1")
    row = [e["id"] for e in page.exports].index("exp-a1")
    assert page.exports_table.item(row, 6).text() == "2/2 matched, box 0.31 px"
    assert page.exports_table.item(row, 7).text() == "0.409 (mAP50-95)"
    assert page.exports_table.item(row, 8).text() == "1.25"
    checks = {
        page.parity_table.item(r, 0).text(): page.parity_table.item(r, 1).text()
        for r in range(page.parity_table.rowCount())
    }
    assert checks["matched"] == "2"
    assert checks["accuracy.export"] == "0.409"
    assert checks["latency.p50_ms"] == "1.25"


def test_set_default_and_delete(qtbot: Any, s2_ctx: Any) -> None:
    ws = s2_ctx.workspace
    _seed(ws)
    page = _page(qtbot, s2_ctx)
    qtbot.waitUntil(lambda: page.exports_table.rowCount() == 2, timeout=10_000)
    page.select_export("exp-a2")
    assert page.default_button.isEnabled()
    page.default_button.click()
    qtbot.waitUntil(
        lambda: any(e["id"] == "exp-a2" and e["default"] for e in page.exports), timeout=10_000
    )
    row = [e["id"] for e in page.exports].index("exp-a2")
    assert page.exports_table.item(row, 5).text() == "★"
    exp = default_export(ws, "run-alpha")
    assert exp is not None and exp.id == "exp-a2"

    page.select_export("exp-a1")
    page.delete_selected(confirm=False)
    qtbot.waitUntil(lambda: page.exports_table.rowCount() == 1, timeout=10_000)
    assert [e["id"] for e in list_exports(ws)] == ["exp-a2"]
    assert not (Path(ws.root) / "exports" / "exp-a1").exists()


def test_wizard_formats_precisions_and_int8_note(qtbot: Any, s2_ctx: Any) -> None:
    _seed(s2_ctx.workspace)
    page = _page(qtbot, s2_ctx)
    qtbot.waitUntil(lambda: len(page.runs) == 2, timeout=10_000)
    wizard = page.open_wizard("run-beta")
    formats = wizard.formats_page
    assert formats.run_id() == "run-beta"
    assert formats.formats() == ["onnx"]  # the default choice
    assert formats.isComplete()
    keys = {c["key"] for c in page.capabilities if c["available"]}
    if "openvino" not in keys:
        pytest.skip("OpenVINO is not installed here")
    formats.set_formats(["openvino"])
    wizard.next()
    precisions = [
        wizard.precision_page.precision_box.itemText(i)
        for i in range(wizard.precision_page.precision_box.count())
    ]
    assert precisions == ["fp32", "fp16", "int8"]
    wizard.precision_page.precision_box.setCurrentText("int8")
    assert wizard.precision_page.note.text() == INT8_NOTE
    assert wizard.request() == {
        "run": "run-beta",
        "formats": ["openvino"],
        "precision": "int8",
        "imgsz": None,
    }
    wizard.back()
    formats.set_formats(["onnx", "openvino"])  # ONNX has fp32 only: so has the pair
    wizard.next()
    assert wizard.precision_page.precision_box.count() == 1
    assert wizard.precision_page.precision() == "fp32"
    formats.set_formats([])
    assert not formats.isComplete()
    wizard.reject()


def test_export_of_an_unfinished_run_is_refused_with_a_dialog(qtbot: Any, s2_ctx: Any) -> None:
    ws = s2_ctx.workspace
    seed_runs(ws)
    with ws.session() as s:
        s.get(TrainingRun, "run-beta").status = "failed"
    page = _page(qtbot, s2_ctx)
    page.start_export({"run": "run-beta", "formats": ["onnx"], "precision": "fp32", "imgsz": None})
    qtbot.waitUntil(lambda: s2_ctx.last_error is not None, timeout=10_000)
    assert "run-beta is failed" in s2_ctx.last_error
    assert "train it first" in s2_ctx.last_error
    assert not page.exporting


def test_the_wizard_queues_an_export_job_the_page_follows_to_its_end(
    qtbot: Any, s2_ctx: Any
) -> None:
    """A real export job in a child process: its run's checkpoint is not a checkpoint, so
    the job fails with the export's one-line error, and the page shows the failed export."""
    ws = s2_ctx.workspace
    seed_runs(ws)
    weights = Path(ws.root) / "runs" / "run-beta" / "best.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not a checkpoint")
    with ws.session() as s:
        s.get(TrainingRun, "run-beta").best_checkpoint = "runs/run-beta/best.pt"
    manager = JobManager(ws, resources=["cpu"])
    page = ExportPage(s2_ctx, manager=manager, follow_ms=200)
    qtbot.addWidget(page)
    page.refresh()
    qtbot.waitUntil(lambda: len(page.runs) == 2, timeout=10_000)
    wizard = page.open_wizard("run-beta")
    wizard.next()
    wizard.accept()
    qtbot.waitUntil(lambda: page.job is not None, timeout=10_000)
    assert not page.new_button.isEnabled()
    job_id = page.job.id
    qtbot.waitUntil(lambda: not page.exporting, timeout=120_000)
    manager.close()
    (job,) = list_jobs(ws)
    assert (job.id, job.kind, job.status) == (job_id, "export", "failed")
    assert job.spec["run_id"] == "run-beta" and job.spec["formats"] == ["onnx"]
    assert page.status_label.text() == f"export failed: {job.error}"
    (export,) = list_exports(ws)
    assert export["status"] == "failed" and export["error"] in str(job.error)
    assert page.last_results == [
        {
            "id": export["id"],
            "format": "onnx",
            "precision": "fp32",
            "status": "failed",
            "package": None,
            "error": export["error"],
        }
    ]
    qtbot.waitUntil(lambda: page.exports_table.rowCount() == 1, timeout=10_000)
    assert page.exports_table.item(0, 4).text() == "failed"
    assert page.new_button.isEnabled()
