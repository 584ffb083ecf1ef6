"""The whole loop in the Studio window, with real work at every step: import the sample
dataset → view an image with its boxes → split → train one short run → export ONNX → a
local agent on 127.0.0.1 appears in Devices → pair → deploy → the inference test draws
one box per detection the device returned.

The run is tiny (2 epochs at 64 px on 9 training images): at the default confidence of
0.25 such a model finds nothing, so the inference test lowers the threshold to 0.001, as
a person checking a barely trained model would.
"""

# ruff: noqa: F811 - the fixtures imported from fixtures_s2 are test parameters
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QWizard

from desktop_app.core import datasets
from desktop_app.core.exports import list_exports
from desktop_app.core.models import TrainingRun
from desktop_app.ui.devices_page import DevicesPage
from desktop_app.ui.experiments_page import ExperimentsPage
from desktop_app.ui.export_page import ExportPage
from desktop_app.ui.training_page import TrainingPage
from tests.ui.fixtures_s2 import local_agent  # noqa: F401 - fixture

pytestmark = [pytest.mark.gui, pytest.mark.slow]

WAIT = 120_000
TRAIN_WAIT = 900_000
NAME = "shapes-e2e"


def test_studio_end_to_end(qtbot: Any, studio: Any, sample_source: Path, local_agent: Any) -> None:
    ctx = studio.ctx
    ws = ctx.workspace
    ctx.settings.discovery_interfaces = ["127.0.0.1"]  # never browse other networks in tests

    # 1. import the sample dataset through the wizard
    page = studio.datasets_page
    wizard = page.open_import(sample_source)
    wizard.next()
    qtbot.waitUntil(lambda: wizard.preview_page.report is not None, timeout=WAIT)
    wizard.next()
    wizard.name_page.name_edit.setText(NAME)
    wizard.button(QWizard.WizardButton.FinishButton).click()
    qtbot.waitUntil(
        lambda: any(d["name"] == NAME for d in page.datasets) or ctx.last_error is not None,
        timeout=WAIT,
    )
    assert ctx.last_error is None, ctx.last_error

    # 2. view an image with its boxes
    images = page.images

    def showing() -> bool:
        if page.current != NAME:  # a listing that began before the import may land last
            page.select_dataset(NAME)
        return page.current == NAME and images.model.rowCount() == 12

    qtbot.waitUntil(showing, timeout=WAIT)
    images.grid.setCurrentIndex(images.model.index(0))
    qtbot.waitUntil(lambda: images.item is not None, timeout=WAIT)
    assert images.item is not None
    shown = images.item
    assert len(images.view.box_items()) == len(shown["annotations"]) > 0

    # 3. split: a quarter of the images for validation
    dialog = page.open_split()
    assert dialog is not None
    qtbot.waitUntil(lambda: dialog.settings is not None, timeout=WAIT)
    dialog.val.setValue(0.25)
    dialog.test.setValue(0.0)
    dialog.seed.setValue(1)
    dialog.apply()
    qtbot.waitUntil(lambda: dialog.applied is not None, timeout=WAIT)
    splits = datasets.split_settings(ws, NAME)["splits"]
    assert splits["val"] == 3 and splits["train"] == 9

    # 4. train one short run from the generated form
    studio.show_area(1)
    training = studio.current_page()
    assert isinstance(training, TrainingPage)
    training.open_new_run()
    qtbot.waitUntil(lambda: training.dialog is not None, timeout=WAIT)
    form = training.dialog
    assert form is not None
    form.dataset_box.setCurrentText(NAME)
    for name, value in {
        "epochs": 2,
        "imgsz": 64,
        "batch": 4,
        "workers": 0,
        "mosaic": 0.0,
        "plots": False,
    }.items():
        form.set_option(name, value)
    form.device_edit.setText("cpu")
    form.try_accept()
    assert form.options is not None, form.error_label.text()
    qtbot.waitUntil(lambda: training.last_submitted is not None, timeout=WAIT)
    assert training.last_submitted is not None
    run_id = str(training.last_submitted["run"])

    def run_status() -> str:
        with ws.session() as s:
            return str(s.get(TrainingRun, run_id).status)

    qtbot.waitUntil(lambda: run_status() not in ("queued", "running"), timeout=TRAIN_WAIT)
    assert run_status() == "completed", training.log_view.toPlainText()[-2000:]
    training.refresh()
    qtbot.waitUntil(lambda: len(training.loss_chart.points("train/box_loss")) == 2, timeout=WAIT)
    assert training.log_view.toPlainText()

    # the run in Experiments
    studio.show_area(2)
    experiments = studio.current_page()
    assert isinstance(experiments, ExperimentsPage)
    qtbot.waitUntil(lambda: any(r["id"] == run_id for r in experiments.runs), timeout=WAIT)

    # 5. export ONNX through the wizard
    studio.show_area(3)
    export = studio.current_page()
    assert isinstance(export, ExportPage)
    qtbot.waitUntil(lambda: any(r["id"] == run_id for r in export.runs), timeout=WAIT)
    export_wizard = export.open_wizard(run_id)
    assert export_wizard.formats_page.formats() == ["onnx"]
    export_wizard.next()
    assert export_wizard.precision_page.precision() == "fp32"
    export_wizard.button(QWizard.WizardButton.FinishButton).click()
    qtbot.waitUntil(lambda: export.last_results is not None, timeout=TRAIN_WAIT)
    assert export.last_results is not None
    result = export.last_results[0]
    assert result["status"] == "completed", result.get("error")
    export_id = str(result["id"])
    qtbot.waitUntil(lambda: any(e["id"] == export_id for e in export.exports), timeout=WAIT)
    assert [e["id"] for e in list_exports(ws)] == [export_id]

    # 6. the local agent appears in Devices
    studio.show_area(4)
    devices = studio.current_page()
    assert isinstance(devices, DevicesPage)
    assert devices.interfaces() == ["127.0.0.1"]
    devices.timer.setInterval(300)
    agent_id = local_agent.ready["agent_id"]
    devices.discover()
    qtbot.waitUntil(lambda: devices.device(agent_id) is not None, timeout=WAIT)
    devices.timer.stop()
    devices.select_device(agent_id)

    # 7. pair with the code the device shows
    pair = devices.open_pair()
    assert pair is not None
    pair.code_edit.setText(local_agent.pairing_code())
    pair.try_accept()
    qtbot.waitUntil(lambda: bool((devices.device(agent_id) or {}).get("paired")), timeout=WAIT)

    # 8. deploy the export
    deploy = devices.open_deploy()
    assert deploy.export_box.currentData() == export_id
    assert deploy.device_box.currentData() == agent_id
    deploy.accept()
    qtbot.waitUntil(lambda: devices.history_table.rowCount() >= 1, timeout=WAIT)
    assert devices.history_table.item(0, 4).text() == "installed"

    # 9. the inference test on the device draws the boxes it returns
    image = datasets.list_items(ws, NAME, limit=1)[0]
    path = ws.blobs.path(image["sha256"])
    devices.inference.set_image(path)
    assert devices.inference.select_target("device", agent_id)
    devices.inference.conf_box.setValue(0.001)
    devices.run_inference()
    qtbot.waitUntil(
        lambda: devices.last_result is not None or ctx.last_error is not None, timeout=WAIT
    )
    assert ctx.last_error is None, ctx.last_error
    answer = devices.last_result
    assert answer is not None and answer["where"] == "device"
    drawn = devices.inference.view.box_items()
    assert len(drawn) == len(answer["detections"]) > 0
    for box, det in zip(drawn, answer["detections"], strict=True):
        assert box.xyxy() == pytest.approx(tuple(det["xyxy"]), abs=1e-3)
    assert ctx.last_error is None
