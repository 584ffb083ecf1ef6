"""Devices page against a real agent process on 127.0.0.1: it appears by mDNS, pairs with
the code it shows, takes a deployment, answers inference (boxes drawn), latency and usage."""

# ruff: noqa: F811 - the fixtures imported from fixtures_s2 are test parameters
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from desktop_app.core import devices as core_devices
from desktop_app.ui.devices_page import HISTORY_COLUMNS, DevicesPage
from tests.fakes import EXPECTED
from tests.ui.fixtures_s2 import (  # noqa: F401 - fixtures
    add_fake_export,
    local_agent,
    s2_ctx,
    seed_runs,
    write_image,
)

pytestmark = pytest.mark.gui

LOOPBACK = ["127.0.0.1"]


def _page(qtbot: Any, ctx: Any) -> DevicesPage:
    page = DevicesPage(ctx)
    page.set_interfaces(LOOPBACK)
    page.timer.setInterval(300)
    qtbot.addWidget(page)
    page.resize(1000, 700)
    page.show()
    return page


def test_interfaces_come_from_settings(qtbot: Any, s2_ctx: Any) -> None:
    page = DevicesPage(s2_ctx)
    qtbot.addWidget(page)
    s2_ctx.settings.discovery_interfaces = []
    assert page.interfaces() is None  # every interface: the default for real users
    s2_ctx.settings.discovery_interfaces = ["127.0.0.1"]
    assert page.interfaces() == ["127.0.0.1"]
    page.set_interfaces(["10.9.8.7"])
    assert page.interfaces() == ["10.9.8.7"]


def test_discover_pair_deploy_infer_on_a_real_agent(
    qtbot: Any, s2_ctx: Any, local_agent: Any, tmp_path: Path
) -> None:
    ws = s2_ctx.workspace
    agent_id = local_agent.ready["agent_id"]
    page = _page(qtbot, s2_ctx)

    # the agent appears live (the discovery timer browses 127.0.0.1 only)
    qtbot.waitUntil(lambda: page.device(agent_id) is not None, timeout=30_000)
    page.timer.stop()
    row = next(i for i, d in enumerate(page.devices) if d["id"] == agent_id)
    assert page.device_table.item(row, 1).text() == agent_id
    assert page.device_table.item(row, 6).text() == "no"
    page.select_device(agent_id)

    # a wrong code is refused with a one-line message; the device stays unpaired
    dialog = page.open_pair()
    assert dialog is not None
    dialog.code_edit.setText("12345")
    dialog.try_accept()
    assert "6 digits" in dialog.error_label.text()
    code = local_agent.pairing_code()
    wrong = "000000" if code != "000000" else "111111"
    dialog.code_edit.setText(wrong)
    dialog.try_accept()
    qtbot.waitUntil(lambda: s2_ctx.last_error is not None, timeout=20_000)
    assert "refused pairing" in s2_ctx.last_error
    assert not core_devices.get_device(ws, agent_id).info.get("pinned_key")

    # the right code pairs
    dialog = page.open_pair()
    assert dialog is not None
    dialog.code_edit.setText(local_agent.pairing_code())
    dialog.try_accept()
    qtbot.waitUntil(lambda: bool((page.device(agent_id) or {}).get("paired")), timeout=20_000)
    assert "paired with" in page.status_label.text()

    # deploy a (fake-detector) export
    seed_runs(ws)
    add_fake_export(ws, "exp-devices1", "run-alpha")
    page.refresh()
    qtbot.waitUntil(lambda: any(e["id"] == "exp-devices1" for e in page.exports), timeout=10_000)
    deploy = page.open_deploy()
    assert deploy.export_box.currentData() == "exp-devices1"
    assert deploy.device_box.currentData() == agent_id
    deploy.accept()
    qtbot.waitUntil(lambda: page.history_table.rowCount() >= 1, timeout=60_000)
    assert page.history_table.item(0, 3).text() == "deploy"
    assert page.history_table.item(0, 4).text() == "installed"
    qtbot.waitUntil(lambda: bool(page.detail and page.detail["models"]), timeout=20_000)
    assert page.detail is not None and page.detail["models"][0]["name"] == "shapes"

    # inference on the device: one drawn box per returned detection
    image = write_image(tmp_path / "probe.png")
    page.inference.set_image(image)
    assert page.inference.select_target("device", agent_id)
    page.run_inference()
    qtbot.waitUntil(lambda: page.last_result is not None, timeout=30_000)
    result = page.last_result
    assert result is not None and result["where"] == "device"
    boxes = page.inference.view.box_items()
    assert len(boxes) == len(result["detections"]) == len(EXPECTED)
    assert [b.class_name for b in boxes] == [e["class_name"] for e in EXPECTED]
    assert boxes[0].xyxy() == pytest.approx(tuple(EXPECTED[0]["xyxy"]), abs=0.5)

    # the same image locally, through the export's package
    page.last_result = None
    assert page.inference.select_target("local", "exp-devices1")
    page.run_inference()
    qtbot.waitUntil(lambda: page.last_result is not None, timeout=30_000)
    assert page.last_result is not None and page.last_result["where"] == "local"
    assert len(page.inference.view.box_items()) == len(EXPECTED)

    # latency on the device, then usage pulled back
    page.bench_selected()
    qtbot.waitUntil(lambda: page.latency_table.rowCount() == 1, timeout=60_000)
    assert float(page.latency_table.item(0, 5).text()) > 0
    assert page.latency_chart.data()[0][1] > 0
    page.pull_usage()
    qtbot.waitUntil(lambda: page.usage_table.rowCount() >= 1, timeout=30_000)
    assert int(page.usage_table.item(0, 3).text()) >= 1  # requests: the inference above


def test_a_device_added_by_address_appears_selected_and_pairs(
    qtbot: Any, s2_ctx: Any, local_agent: Any
) -> None:
    agent_id, port = local_agent.ready["agent_id"], local_agent.ready["port"]
    page = _page(qtbot, s2_ctx)
    page.timer.stop()  # no discovery: the address alone finds it

    dialog = page.open_add()
    dialog.address_edit.setText("10.0.0.1:99999")
    dialog.try_accept()
    assert "from 1 to 65535" in dialog.error_label.text()
    assert dialog.result() != dialog.DialogCode.Accepted
    dialog.address_edit.setText(f"127.0.0.1:{port}")
    dialog.try_accept()
    qtbot.waitUntil(lambda: page.device(agent_id) is not None, timeout=20_000)
    assert page._selected == agent_id
    row = next(i for i, d in enumerate(page.devices) if d["id"] == agent_id)
    assert page.device_table.item(row, 2).text() == f"127.0.0.1:{port}"
    assert page.device_table.item(row, 6).text() == "no"
    assert "Pair… next" in page.status_label.text()

    pair = page.open_pair()
    assert pair is not None
    pair.code_edit.setText(local_agent.pairing_code())
    pair.try_accept()
    qtbot.waitUntil(lambda: (page.device(agent_id) or {}).get("paired") is True, timeout=20_000)


def test_an_address_where_no_agent_answers_is_reported(qtbot: Any, s2_ctx: Any) -> None:
    page = _page(qtbot, s2_ctx)
    page.timer.stop()
    page.add_device("127.0.0.1:9")  # the discard port: nothing listens there
    qtbot.waitUntil(lambda: s2_ctx.last_error is not None, timeout=20_000)
    assert "cannot reach agent at http://127.0.0.1:9" in s2_ctx.last_error
    assert page.devices == []


def test_inference_without_an_image_says_what_to_do(qtbot: Any, s2_ctx: Any) -> None:
    page = _page(qtbot, s2_ctx)
    page.timer.stop()
    page.run_inference()
    assert "Pick an image" in page.inference.result_label.text()


def test_local_inference_refuses_a_non_image(qtbot: Any, s2_ctx: Any, tmp_path: Path) -> None:
    seed_runs(s2_ctx.workspace)
    add_fake_export(s2_ctx.workspace, "exp-local1", "run-alpha")
    page = _page(qtbot, s2_ctx)
    page.timer.stop()
    page.refresh()
    qtbot.waitUntil(lambda: page.inference.target_box.count() == 1, timeout=10_000)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    page.inference.set_image(text)
    page.run_inference()
    qtbot.waitUntil(lambda: s2_ctx.last_error is not None, timeout=10_000)
    assert "is not an image" in s2_ctx.last_error
    assert page.inference.run_button.isEnabled()


def _detail(**fields: Any) -> dict[str, Any]:
    """A device's details as the page gets them (``core_devices.device_detail``)."""
    base = {
        "id": "d1",
        "name": "jetson",
        "address": "10.0.0.7",
        "port": 8765,
        "paired": True,
        "runtimes": [],
        "models": [],
        "accelerators": [],
        "warning": None,
    }
    return {**base, **fields}


def test_a_device_clock_that_is_off_is_named_in_its_details(qtbot: Any, s2_ctx: Any) -> None:
    page = _page(qtbot, s2_ctx)
    page._selected = "d1"
    detail = _detail(clock_offset_s=-7500.0)
    page._show_device({"detail": detail, "history": [], "latency": [], "bench_history": []})
    assert "Clock: 2 h 5 min behind this desktop's" in page.detail_label.text()
    page._show_device({"detail": {**detail, "clock_offset_s": 2.0}, "history": [], "latency": []})
    assert "Clock:" not in page.detail_label.text()


def test_a_model_not_served_and_a_runtime_crash_are_shown_in_the_details(
    qtbot: Any, s2_ctx: Any
) -> None:
    page = _page(qtbot, s2_ctx)
    page._selected = "d1"
    detail = _detail(
        not_loaded={"shapes": "shapes 2 crashed the agent in 2 inferences within an hour <x>"},
        crashes=[
            {
                "what": "shapes 2 (inference)",
                "reason": "Fatal Python error: Segmentation fault",
                "state": "held: 2 crashes",
                "at": 1_796_000_000.0,
            }
        ],
    )
    page._show_device({"detail": detail, "history": [], "latency": [], "bench_history": []})
    text = page.detail_label.text()
    assert "<b>Not served: shapes</b> — shapes 2 crashed the agent in 2 inferences" in text
    assert "&lt;x&gt;" in text  # the device's words, escaped
    assert (
        "<b>Runtime crash:</b> 2026-11-30 00:53:20 UTC  shapes 2 (inference): Fatal Python "
        "error: Segmentation fault (held: 2 crashes)" in text
    )


def test_a_runtime_fallback_is_shown_in_the_details_and_the_history(
    qtbot: Any, s2_ctx: Any
) -> None:
    """Never silent in the Studio either: the model line and the history row say what the
    device wanted and what it runs on."""
    page = _page(qtbot, s2_ctx)
    page._selected = "d1"
    fallback = {
        "wanted": "CUDAExecutionProvider",
        "using": "CPUExecutionProvider",
        "reason": "CUDAExecutionProvider is not available on this device",
    }
    detail = _detail(
        models=[
            {"name": "shapes", "version": "e1", "runtime": "onnxruntime", "fallbacks": fallback}
        ]
    )
    history = [
        {
            "created_at": "2026-11-28T05:00:00+00:00",
            "model": "shapes",
            "export": "e1",
            "action": "deploy",
            "status": "installed",
            "runtime": "onnxruntime",
            "fallback": fallback,
            "message": None,
        }
    ]
    page._show_device({"detail": detail, "history": history, "latency": [], "bench_history": []})
    assert "fallback: CUDAExecutionProvider → CPUExecutionProvider" in page.detail_label.text()
    column = HISTORY_COLUMNS.index("fallback")
    assert page.history_table.item(0, column).text() == (
        "CUDAExecutionProvider → CPUExecutionProvider"
    )
    assert page.history_table.item(0, HISTORY_COLUMNS.index("runtime")).text() == "onnxruntime"


def test_the_inference_test_names_a_classifiers_classes_and_the_total_time(
    qtbot: Any, s2_ctx: Any
) -> None:
    page = _page(qtbot, s2_ctx)
    page.timer.stop()
    timing = {"decode": 1.0, "preprocess": 0.5, "inference": 8.0, "postprocess": 0.5}
    result = {
        "where": "device",
        "device": "d1",
        "model": "fruit",
        "task": "classify",
        "detections": [],
        "classification": [
            {"class_id": 2, "class_name": "pear", "confidence": 0.81},
            {"class_id": 0, "class_name": "apple", "confidence": 0.12},
        ],
        "timing": {**timing, "total": 10.0, "wait": 0.3},
    }
    page.inference.show_result(result)
    assert page.inference.result_label.text() == (
        "classes pear 0.81, apple 0.12 from fruit on device d1 in 10.0 ms"
    )
    page.inference.show_result({**result, "classification": [], "timing": timing})
    assert page.inference.result_label.text() == "0 detections from fruit on device d1 in 10.0 ms"


def test_the_inference_test_draws_masks_and_keypoints(
    qtbot: Any, s2_ctx: Any, tmp_path: Path
) -> None:
    import numpy as np

    from runtimes.detections import mask_to_rle

    page = _page(qtbot, s2_ctx)
    page.timer.stop()
    page.inference.set_image(write_image(tmp_path / "probe.png"))  # 64 x 64
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:50] = True
    mask[12, 20] = False
    keypoints = [[22.0, 14.0, 0.9], [40.0, 20.0, 0.2], [30.0, 25.0, 0.8]]  # one barely seen
    detections = [
        {"class_id": 1, "class_name": "square", "confidence": 0.8, "xyxy": [20, 10, 50, 30],
         "mask": mask_to_rle(mask)},
        {"class_id": 0, "class_name": "person", "confidence": 0.7, "xyxy": [15, 8, 45, 30],
         "keypoints": keypoints},
        {"class_id": 0, "class_name": "odd", "confidence": 0.6, "xyxy": [1, 1, 5, 5],
         "mask": {"size": [64, 64], "counts": [5]}},  # malformed: the box alone is drawn
    ]  # fmt: skip
    page.inference.show_result({"where": "local", "model": "m", "detections": detections})
    segment, pose, odd = page.inference.view.box_items()
    assert segment.mask_item is not None and not segment.keypoint_items
    assert (segment.mask_item.pos().x(), segment.mask_item.pos().y()) == (20.0, 10.0)
    drawn = segment.mask_item.pixmap().toImage()
    assert (drawn.width(), drawn.height()) == (30, 20)
    assert drawn.pixelColor(0, 2).alpha() == 0 and drawn.pixelColor(5, 5).alpha() > 0
    assert pose.mask_item is None
    assert [(d.pos().x(), d.pos().y()) for d in pose.keypoint_items] == [(22.0, 14.0), (30.0, 25.0)]
    assert odd.mask_item is None and odd.xyxy() == (1.0, 1.0, 5.0, 5.0)
    assert page.inference.result_label.text() == "3 detections from m on this computer"
