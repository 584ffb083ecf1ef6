"""Training page: the new-run form generated from the trainer schema (presets, advanced
fields, validation naming the field), queueing, live per-epoch charts and log, cancel and
resume. No model trains here (the background worker is not started): the slow end-to-end
Studio test trains a real run through this page."""

# ruff: noqa: F811 - the fixtures imported from fixtures_s2 are test parameters
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from desktop_app.core import studio_ops
from desktop_app.core.jobs import get_job
from desktop_app.core.models import Job, TrainingRun
from desktop_app.core.training import TRAINING_JOBS
from desktop_app.ui.training_page import NewRunDialog, TrainingPage
from tests.ui.fixtures_s2 import s2_ctx  # noqa: F401 - fixture

pytestmark = pytest.mark.gui


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Queue runs without starting the background worker that would train them."""
    calls: list[Any] = []
    monkeypatch.setattr(studio_ops, "ensure_worker", lambda ws: calls.append(ws))
    return calls


def _page(qtbot: Any, ctx: Any) -> TrainingPage:
    page = TrainingPage(ctx)
    qtbot.addWidget(page)
    page.resize(1000, 700)
    page.show()
    return page


def _dialog(qtbot: Any, page: TrainingPage) -> NewRunDialog:
    page.open_new_run()
    qtbot.waitUntil(lambda: page.dialog is not None, timeout=20_000)
    assert page.dialog is not None
    return page.dialog


def test_form_is_generated_from_the_schema(qtbot: Any, s2_ctx: Any) -> None:
    page = _page(qtbot, s2_ctx)
    dialog = _dialog(qtbot, page)
    schema = studio_ops.trainer_schema("ultralytics")
    assert list(dialog.inputs) == [f["name"] for f in schema["fields"]]
    tabs = [dialog.tabs.tabText(i).lower() for i in range(dialog.tabs.count())]
    assert tabs == [g for g in schema["groups"] if any(f["group"] == g for f in schema["fields"])]
    advanced = {f["name"] for f in schema["fields"] if f.get("advanced")}
    assert advanced and not advanced & dialog.visible_options()
    dialog.advanced_box.setChecked(True)
    assert advanced <= dialog.visible_options()
    # typed inputs: a select is a drop-down with the schema's choices, a bool a check box
    optimizer = next(f for f in schema["fields"] if f["name"] == "optimizer")
    box = dialog.inputs["optimizer"].editor
    assert [box.itemText(i) for i in range(box.count())] == list(optimizer["choices"])
    assert dialog.inputs["cos_lr"].raw_value() is False
    assert dialog.inputs["epochs"].raw_value() == str(
        next(f["default"] for f in schema["fields"] if f["name"] == "epochs")
    )
    # presets fill the form
    dialog.preset_box.setCurrentText("easy")
    for name, value in schema["presets"]["easy"].items():
        assert dialog.inputs[name].raw_value() in (str(value), value)
    # the dataset picker and the model picker (detect models for a detect dataset)
    assert dialog.dataset_box.currentText() == "shapes"
    versions = [dialog.version_box.itemText(i) for i in range(dialog.version_box.count())]
    assert versions[0] == "auto" and "v1" in versions
    models = [dialog.model_box.itemText(i) for i in range(dialog.model_box.count())]
    assert models == studio_ops.trainable_models("ultralytics", "detect")
    assert dialog.model_box.currentText() == "yolo11n.yaml"
    dialog.reject()


@pytest.mark.slow  # listing timm's architectures imports torch and timm (10-25 s here)
def test_another_framework_rebuilds_the_form(qtbot: Any, s2_ctx: Any) -> None:
    page = _page(qtbot, s2_ctx)
    dialog = _dialog(qtbot, page)
    timm = dialog.framework_box.findData("timm")
    dialog.framework_box.setCurrentIndex(timm)
    assert list(dialog.inputs) == [f["name"] for f in studio_ops.trainer_schema("timm")["fields"]]
    qtbot.waitUntil(lambda: dialog.models_loaded("timm"), timeout=60_000)
    assert dialog.model_box.count() == 0  # timm trains classifiers; shapes is a detect dataset
    assert dialog.validate() is None
    assert "pick a model" in dialog.error_label.text()
    dialog.reject()


def test_validation_messages_name_the_field(qtbot: Any, s2_ctx: Any) -> None:
    page = _page(qtbot, s2_ctx)
    dialog = _dialog(qtbot, page)
    dialog.set_option("imgsz", "16")
    dialog.set_option("epochs", "ten")
    dialog.try_accept()
    assert dialog.result() == 0 and dialog.options is None
    text = dialog.error_label.text()
    assert "option 'imgsz' must be between 32 and 4096, got 16" in text
    assert "option 'epochs' must be a int" in text
    assert "d62728" in dialog.inputs["imgsz"].editor.styleSheet()
    dialog.set_option("imgsz", "64")
    dialog.set_option("epochs", "1")
    options = dialog.validate()
    assert options is not None
    assert options.extra == {"imgsz": 64, "epochs": 1}
    assert dialog.inputs["imgsz"].editor.styleSheet() == ""
    dialog.reject()


def test_queue_live_curves_log_cancel_and_resume(
    qtbot: Any, s2_ctx: Any, no_worker: list[Any]
) -> None:
    ws = s2_ctx.workspace
    page = _page(qtbot, s2_ctx)
    page.timer.setInterval(200)
    dialog = _dialog(qtbot, page)
    dialog.preset_box.setCurrentText("easy")
    dialog.set_option("epochs", "2")
    dialog.set_option("imgsz", "64")
    dialog.set_option("batch", "4")
    dialog.device_edit.setText("cpu")
    dialog.try_accept()
    qtbot.waitUntil(lambda: page.last_submitted is not None, timeout=30_000)
    assert no_worker  # the page asked for a worker to train it
    submitted = page.last_submitted
    assert submitted is not None
    run_id, job_id = submitted["run"], submitted["job"]
    with ws.session() as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == "queued"
        assert (run.params["epochs"], run.params["imgsz"], run.params["batch"]) == (2, 64, 4)
        assert run.params["preset"] == "easy"
    qtbot.waitUntil(lambda: page.selected_run() is not None, timeout=10_000)
    assert page.queue.item(0, 0).text() == run_id
    assert page.queue.item(0, 1).text() == "queued"
    assert page.cancel_button.isEnabled()

    # the trainer's epoch events, recorded as the job manager records them, appear live
    job = get_job(ws, job_id)
    log = Path(ws.root) / "runs" / run_id / "train.log"
    log.write_text("epoch 1/2 box_loss 2.31\n", encoding="utf-8")
    with ws.session() as s:
        s.get(Job, job_id).log_path = ws.relative(log)
    metrics = {"train/box_loss": 2.31, "metrics/mAP50(B)": 0.01, "lr/pg0": 0.01}
    TRAINING_JOBS.record(ws, job, {"event": "epoch_end", "epoch": 1, "metrics": metrics}, {})
    qtbot.waitUntil(
        lambda: page.loss_chart.points("train/box_loss") == [(1.0, 2.31)], timeout=10_000
    )
    assert page.metric_chart.points("metrics/mAP50(B)") == [(1.0, 0.01)]
    assert "lr/pg0" not in page.loss_chart.series_names() + page.metric_chart.series_names()
    qtbot.waitUntil(lambda: "box_loss 2.31" in page.log_view.toPlainText(), timeout=10_000)
    metrics = {"train/box_loss": 1.9, "metrics/mAP50(B)": 0.05}
    TRAINING_JOBS.record(ws, job, {"event": "epoch_end", "epoch": 2, "metrics": metrics}, {})
    with log.open("a", encoding="utf-8") as fh:
        fh.write("epoch 2/2 box_loss 1.90\n")
    qtbot.waitUntil(lambda: len(page.loss_chart.points("train/box_loss")) == 2, timeout=10_000)
    assert page.loss_chart.points("train/box_loss")[-1] == (2.0, 1.9)
    qtbot.waitUntil(lambda: "box_loss 1.90" in page.log_view.toPlainText(), timeout=10_000)

    # cancel the queued job: the run is cancelled
    page.cancel_button.click()
    qtbot.waitUntil(lambda: get_job(ws, job_id).status == "cancelled", timeout=20_000)
    qtbot.waitUntil(lambda: page.queue.item(0, 1).text() == "cancelled", timeout=10_000)
    assert page.resume_button.isEnabled()
    assert not page.cancel_button.isEnabled()

    # resuming needs a checkpoint: the dialog says so
    page.resume_button.click()
    qtbot.waitUntil(lambda: s2_ctx.last_error is not None, timeout=10_000)
    assert f"run {run_id} has no checkpoint to resume from" in s2_ctx.last_error


def test_submit_refusal_is_shown(qtbot: Any, s2_ctx: Any, no_worker: list[Any]) -> None:
    from desktop_app.core.training import TrainOptions

    page = _page(qtbot, s2_ctx)
    page.submit(TrainOptions(dataset="nope", model="yolo11n.yaml"))
    qtbot.waitUntil(lambda: s2_ctx.last_error is not None, timeout=10_000)
    assert "no dataset 'nope'" in s2_ctx.last_error
    assert not no_worker
