"""Studio polish: the primary metric column, clean log views, the dataset-list race, the
pre-label dialog, the per-device latency chart and the jobs dock's default height."""

# ruff: noqa: F811 - the fixtures imported from fixtures_s2 are test parameters
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from desktop_app.core import datasets
from desktop_app.core.models import Device, DeviceBenchmark, Job, TrainingRun
from desktop_app.ui import datasets_page as datasets_page_module
from desktop_app.ui.devices_page import DevicesPage, bench_history, latency_series
from desktop_app.ui.experiments_page import ExperimentsPage
from desktop_app.ui.prelabel_dialog import ALL_IMAGES, UNLABELLED_ONLY, prelabel_packages
from desktop_app.ui.text import clean_log, metric_text, read_log_tail, strip_ansi
from desktop_app.ui.training_page import TrainingPage, primary_metric_text
from tests.ui.fixtures_s2 import add_fake_export, s2_ctx, seed_runs  # noqa: F401 - fixtures

pytestmark = pytest.mark.gui

WAIT = 20_000
PRIMARY = {"key": "metrics/mAP50-95(B)", "value": 0.3125}


def _set_validation(ws: Any, run_id: str, validation: dict[str, Any]) -> None:
    with ws.session() as s:
        run = s.get(TrainingRun, run_id)
        assert run is not None
        run.validation = validation


# ---- 1. the primary metric ------------------------------------------------------------------


def test_primary_metric_text_uses_the_key_core_stores() -> None:
    assert metric_text(PRIMARY) == "mAP50-95(B) 0.3125"
    assert metric_text({"key": "metrics/accuracy_top1", "value": 1}) == "accuracy_top1 1.0000"
    assert metric_text({"name": None, "value": 0.0}) == ""  # never "None=0.0000"
    assert metric_text({"key": "metrics/x", "value": True}) == ""
    assert metric_text(None) == ""
    # while a run trains, the job's progress carries the newest validation
    running = {"primary_metric": None, "progress": {"primary_metric": PRIMARY}}
    assert primary_metric_text(running) == "mAP50-95(B) 0.3125"
    # a detection run without a validation event: its final mAP50-95
    assert primary_metric_text({"task": "detect", "mAP50-95": 0.25}) == "mAP50-95(B) 0.2500"
    assert primary_metric_text({"task": "classify"}) == ""


def test_training_and_experiments_tables_show_the_primary_metric(qtbot: Any, s2_ctx: Any) -> None:
    ws = s2_ctx.workspace
    seed_runs(ws)
    _set_validation(ws, "run-alpha", {"primary_metric": PRIMARY})
    training = TrainingPage(s2_ctx)
    qtbot.addWidget(training)
    training.refresh()
    qtbot.waitUntil(lambda: training.queue.rowCount() == 2, timeout=WAIT)
    column = training.queue.columnCount() - 1
    cells = {
        training.queue.item(r, 0).text(): training.queue.item(r, column).text() for r in range(2)
    }
    assert cells["run-alpha"] == "mAP50-95(B) 0.3125"
    assert cells["run-beta"] == "mAP50-95(B) 0.3500"  # no validation event: final mAP50-95
    assert not any("None" in text for text in cells.values())

    experiments = ExperimentsPage(s2_ctx)
    qtbot.addWidget(experiments)
    experiments.refresh()
    qtbot.waitUntil(lambda: len(experiments.runs) == 2, timeout=WAIT)
    row = next(i for i, r in enumerate(experiments.runs) if r["id"] == "run-alpha")
    # core's experiments listing takes the key's value from the run's final metrics
    assert experiments.runs_table.item(row, 6).text() == "mAP50-95(B) 0.3000"


# ---- 2. log views without terminal control sequences ------------------------------------------

RAW_LOG = (
    "\x1b[34m\x1b[1mtrain:\x1b[0m Scanning labels... 12 images\n"
    "  1/3  0.1G  1.9  \x1b[K\r  1/3  0.1G  1.7 50%\x1b[K\r  1/3  0.1G  1.5 100%\x1b[K\n"
    "\x1b]0;title\x07epoch done\r\n"
    "\r\x1b[K\n"
    "all good\n"
)
CLEAN = [
    "train: Scanning labels... 12 images",
    "  1/3  0.1G  1.5 100%",
    "epoch done",
    "all good",
]


def test_clean_log_strips_escapes_and_keeps_the_last_redraw(tmp_path: Path) -> None:
    assert strip_ansi("\x1b[2K\x1b[1A\x1b[31mred\x1b[0m") == "red"
    assert clean_log(RAW_LOG) == CLEAN
    log = tmp_path / "job.log"
    log.write_bytes(RAW_LOG.encode())
    assert read_log_tail(log, 300) == CLEAN
    assert read_log_tail(log, 2) == CLEAN[-2:]
    assert read_log_tail(tmp_path / "missing.log") == []


def test_training_log_view_shows_the_cleaned_log(qtbot: Any, s2_ctx: Any) -> None:
    ws = s2_ctx.workspace
    seed_runs(ws)
    log = Path(ws.root) / "jobs" / "job-log1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(RAW_LOG.encode())
    with ws.session() as s:
        s.add(
            Job(
                id="job-log1",
                kind="train",
                status="completed",
                run_id="run-alpha",
                log_path=ws.relative(log),
            )
        )
    page = TrainingPage(s2_ctx)
    qtbot.addWidget(page)
    page.select_run("run-alpha")
    qtbot.waitUntil(lambda: bool(page.log_view.toPlainText()), timeout=WAIT)
    assert page.log_view.toPlainText().splitlines() == CLEAN


# ---- 3. a stale dataset listing never resets the selection -------------------------------------


def test_a_stale_listing_keeps_the_imported_selection(
    qtbot: Any, studio: Any, sample_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = studio.datasets_page
    qtbot.waitUntil(lambda: page.current == "shapes", timeout=WAIT)
    ws = studio.ctx.workspace
    real = datasets.list_datasets
    release = threading.Event()
    calls: list[int] = []

    def slow_first(workspace: Any) -> list[dict[str, Any]]:
        calls.append(1)
        rows = real(workspace)  # read before the import below
        if len(calls) == 1:
            release.wait(WAIT / 1000)
        return rows

    monkeypatch.setattr(datasets_page_module.datasets, "list_datasets", slow_first)
    page.refresh()  # started before the import; it will finish last
    qtbot.waitUntil(lambda: len(calls) == 1, timeout=WAIT)
    datasets.import_dataset(ws, sample_source, "second")
    page._imported({"dataset": "second"})
    qtbot.waitUntil(lambda: page.list.count() == 2 and page.current == "second", timeout=WAIT)
    release.set()
    qtbot.waitUntil(lambda: len(studio.ctx._tasks) == 0, timeout=WAIT)
    studio.ctx.wait()
    qtbot.wait(50)
    assert page.list.count() == 2  # the stale one-dataset listing was not shown
    assert page.current == "second"
    assert page.list.currentItem().data(256) == "second"  # Qt.UserRole


# ---- 4. the pre-label dialog --------------------------------------------------------------------


def test_prelabel_dialog_runs_core_and_opens_the_review(qtbot: Any, studio: Any) -> None:
    ws = studio.ctx.workspace
    seed_runs(ws)
    add_fake_export(ws, "exp-pre1", "run-alpha")
    add_fake_export(ws, "exp-bad1", "run-beta", status="failed")
    assert [p["id"] for p in prelabel_packages(ws)] == ["exp-pre1"]  # completed ones only
    page = studio.datasets_page
    qtbot.waitUntil(lambda: page.current == "shapes", timeout=WAIT)
    assert page.prelabel_button.isEnabled()
    dialog = page.open_prelabel()
    assert dialog is not None
    qtbot.waitUntil(lambda: dialog.package_box.count() == 1, timeout=WAIT)
    assert dialog.export_id() == "exp-pre1"
    assert dialog.statuses() == UNLABELLED_ONLY
    dialog.all_radio.setChecked(True)  # the sample is fully labelled: predict every image
    dialog.conf_spin.setValue(0.5)
    assert dialog.request() == {
        "export_id": "exp-pre1",
        "conf": 0.5,
        "only_status": ALL_IMAGES,
        "add_missing_classes": False,
    }
    dialog.ok_button.click()
    qtbot.waitUntil(lambda: dialog.outcome is not None, timeout=60_000)
    result = dialog.outcome
    assert result is not None and result["images"] == datasets.list_datasets(ws)[0]["images"]
    assert result["proposals"] > 0
    # the review view: the grid filtered to the images under review, the first one open
    images = page.images
    assert images.status_filter.currentText() == "needs_review"
    qtbot.waitUntil(lambda: images.item is not None, timeout=WAIT)
    item = images.item
    assert item is not None and item["label_status"] == "needs_review"
    assert any(a.get("score") is not None for a in item["annotations"])
    assert images.accept_button.isEnabled()


def test_prelabel_dialog_without_exports_says_what_to_do(qtbot: Any, studio: Any) -> None:
    page = studio.datasets_page
    qtbot.waitUntil(lambda: page.current == "shapes", timeout=WAIT)
    dialog = page.open_prelabel()
    assert dialog is not None
    qtbot.waitUntil(
        lambda: "Export a trained detection run" in dialog.status_label.text(), timeout=WAIT
    )
    assert not dialog.ok_button.isEnabled()


# ---- 5. the per-device latency chart -------------------------------------------------------------


def test_latency_chart_draws_each_benchmark_of_the_device(qtbot: Any, s2_ctx: Any) -> None:
    ws = s2_ctx.workspace
    seed_runs(ws)
    add_fake_export(ws, "exp-lat1", "run-alpha")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with ws.session() as s:
        s.add(Device(id="dev-lat", name="bench-box", host="127.0.0.1", port=9))
        s.add(Device(id="dev-other", name="other", host="127.0.0.1", port=9))
        for i, (p50, p90, fmt) in enumerate(
            [(12.0, 15.0, "onnx"), (10.0, 13.0, "onnx"), (30.0, 40.0, "tflite")]
        ):
            s.add(
                DeviceBenchmark(
                    device_id="dev-lat",
                    export_id="exp-lat1",
                    model_name="shapes",
                    format=fmt,
                    runtime="onnxruntime",
                    runs=20,
                    p50_ms=p50,
                    p90_ms=p90,
                    p99_ms=p90 + 1,
                    mean_ms=p50,
                    created_at=start + timedelta(minutes=i),
                )
            )
        s.add(
            DeviceBenchmark(
                device_id="dev-other",
                export_id="exp-lat1",
                model_name="shapes",
                format="onnx",
                runs=20,
                p50_ms=99.0,
                p90_ms=99.0,
                p99_ms=99.0,
                mean_ms=99.0,
            )
        )
    history = bench_history(ws, "dev-lat")
    assert [b["p50_ms"] for b in history] == [12.0, 10.0, 30.0]  # oldest first, this device only
    series = latency_series(history)
    assert series["shapes (onnx) p50"] == [(1.0, 12.0), (2.0, 10.0)]
    assert series["shapes (onnx) p90"] == [(1.0, 15.0), (2.0, 13.0)]
    assert series["shapes (tflite) p50"] == [(3.0, 30.0)]

    page = DevicesPage(s2_ctx)
    page.set_interfaces(["127.0.0.1"])
    qtbot.addWidget(page)
    page.timer.setInterval(60_000)
    page.refresh()
    qtbot.waitUntil(lambda: page.device("dev-lat") is not None, timeout=WAIT)
    page.select_device("dev-lat")
    chart = page.latency_history
    qtbot.waitUntil(lambda: len(chart.series_names()) == 4, timeout=WAIT)
    assert chart.points("shapes (onnx) p90") == [(1.0, 15.0), (2.0, 13.0)]
    assert chart.bounds() == (1.0, 3.0, 10.0, 40.0)


# ---- 6. the jobs dock's default height ----------------------------------------------------------


def test_jobs_dock_starts_about_five_rows_high(qtbot: Any, studio: Any) -> None:
    panel = studio.jobs_panel
    studio.resize(1360, 860)
    row = panel.table.verticalHeader().defaultSectionSize()
    want = panel.default_height()
    assert 5 * row < want < 5 * row + 120  # five rows, the header and the title bar
    qtbot.waitUntil(lambda: abs(panel.height() - want) <= 12, timeout=WAIT)
    assert studio.centralWidget().height() > 2 * panel.height()


# ---- 7. screenshots ----------------------------------------------------------------------------


def test_screenshots_save_every_view_without_training(
    qtbot: Any, tmp_path: Path, studio_config: Path
) -> None:
    from PySide6.QtGui import QImage

    from desktop_app.ui import screenshots

    out = tmp_path / "shots"
    assert screenshots.main(["--out", str(out), "--workspace", str(tmp_path / "ws")]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    for want in ("01-datasets-images", "07-training", "08-experiments-compare", "10-export"):
        assert f"{want}.png" in names
    assert "14-prelabel-dialog.png" in names  # no export yet: the dialog says what to do
    for name in names:
        image = QImage(str(out / name))
        assert not image.isNull() and image.width() > 200 and image.height() > 150, name


def test_device_details_name_each_runtime() -> None:
    from desktop_app.ui.devices_page import runtime_text

    onnx = {"key": "onnxruntime", "version": "1.32.0", "formats": ["onnx"], "available": True}
    assert runtime_text(onnx) == "onnxruntime 1.32.0 (onnx)"
    missing = {
        "key": "litert",
        "formats": ["tflite"],
        "available": False,
        "reason": "not installed",
    }
    assert runtime_text(missing) == "litert (tflite) — unavailable: not installed"
    assert runtime_text("tensorrt") == "tensorrt"


def test_jobs_panel_shows_export_jobs_as_formats_done() -> None:
    from dataclasses import replace

    from desktop_app.core.jobs import JobInfo
    from desktop_app.ui.jobs_panel import progress_of

    fields = {name: None for name in JobInfo.__dataclass_fields__}
    base = JobInfo(**{**fields, "kind": "export", "status": "running", "spec": {}, "progress": {}})  # type: ignore[arg-type]
    assert progress_of(replace(base, progress={"formats_total": 3, "formats_done": 1})) == (
        1,
        3,
        "1/3 formats",
    )
    assert progress_of(replace(base, progress={})) == (0, 0, "running")
    train = replace(base, kind="train", progress={"epochs": 5, "epoch": 2})
    assert progress_of(train) == (2, 5, "epoch 2/5")
