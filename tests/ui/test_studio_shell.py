"""The Studio shell: areas and shortcuts, settings, the jobs panel (with a tiny job kind)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QProgressBar, QPushButton

from desktop_app.core import jobs
from desktop_app.core.executors import Launch
from desktop_app.core.jobs import JobInfo, JobManager

pytestmark = pytest.mark.gui

AREAS = ["Datasets", "Training", "Experiments", "Export", "Devices"]


def test_shell_lists_areas_and_switches_by_shortcut(qtbot: Any, studio: Any) -> None:
    assert studio.area_titles() == AREAS
    for i in (2, 5, 3, 4, 1):
        qtbot.keyClick(studio, Qt.Key(Qt.Key.Key_0 + i), Qt.KeyboardModifier.ControlModifier)
        assert studio.stack.currentIndex() == i - 1
        assert studio.sidebar.currentRow() == i - 1
        assert studio.current_page().title == AREAS[i - 1]
    studio.sidebar.setCurrentRow(2)
    assert studio.stack.currentIndex() == 2
    shortcuts = {a.shortcut().toString() for a in studio.actions()}
    assert {"Ctrl+O", "Ctrl+I", "Ctrl+Z", "Ctrl+Shift+Z", "Del", "F5"} <= shortcuts


def test_status_bar_shows_busy_while_work_runs(qtbot: Any, studio: Any) -> None:
    seen: list[int] = []
    studio.ctx.busy.connect(seen.append)
    studio.ctx.run(sum, [1, 2])
    qtbot.waitUntil(lambda: bool(seen) and seen[-1] == 0, timeout=10_000)
    assert max(seen) >= 1
    assert studio.busy_bar.isHidden()


def test_settings_dialog_saves_interfaces_and_device_defaults(
    qtbot: Any, studio_config: Path
) -> None:
    from desktop_app.ui.settings import SettingsDialog, StudioSettings

    settings = StudioSettings.load()
    assert settings.discovery_interfaces == []  # default: every interface
    dialog = SettingsDialog(settings, interfaces=["127.0.0.1", "10.1.2.3"])
    qtbot.addWidget(dialog)
    dialog.all_interfaces.setChecked(False)
    dialog.interfaces.item(0).setCheckState(Qt.CheckState.Checked)
    dialog.activate.setChecked(False)
    dialog.runtime.setCurrentText("openvino")
    dialog.workspace_edit.setText("/tmp/elsewhere")
    dialog.accept()
    saved = json.loads(studio_config.read_text())
    assert saved["discovery_interfaces"] == ["127.0.0.1"]
    assert saved["activate_after_deploy"] is False
    assert saved["runtime_preference"] == "openvino"
    again = StudioSettings.load()
    assert again.discovery_interfaces == ["127.0.0.1"]
    assert again.workspace == "/tmp/elsewhere"


def test_open_workspace_switches_and_is_remembered(
    qtbot: Any, studio: Any, tmp_path: Path, studio_config: Path
) -> None:
    other = tmp_path / "other-ws"
    studio.open_workspace(other)
    assert studio.ctx.root == other.resolve() or studio.ctx.root == other
    qtbot.waitUntil(lambda: studio.datasets_page.list.count() == 0, timeout=10_000)
    saved = json.loads(studio_config.read_text())
    assert saved["recent_workspaces"][0] == str(other.resolve())


@dataclass
class SleepKind:
    """A job kind whose child reports one epoch of three and then sleeps (until cancelled)."""

    root: Path

    def prepare(self, ws: Any, job: JobInfo) -> Launch:
        code = (
            "import json, time\n"
            "print(json.dumps({'v': 1, 'event': 'train_start', 'epochs': 3}), flush=True)\n"
            "print(json.dumps({'v': 1, 'event': 'epoch_end', 'epoch': 1, 'epochs': 3,"
            " 'metrics': {}}), flush=True)\n"
            "time.sleep(120)\n"
        )
        folder = self.root / job.id
        return Launch(
            job_id=job.id,
            command=[sys.executable, "-c", code],
            events_path=folder / "events.jsonl",
            log_path=folder / "job.log",
        )

    def record(
        self, ws: Any, job: JobInfo, event: dict[str, Any], progress: dict[str, Any]
    ) -> None:
        return None

    def finish(self, ws: Any, job: JobInfo, status: str, error: str | None) -> None:
        return None


def test_jobs_panel_shows_progress_and_cancels(qtbot: Any, sample_ws: Any, tmp_path: Path) -> None:
    from desktop_app.ui.context import StudioContext
    from desktop_app.ui.jobs_panel import JobsPanel

    ctx = StudioContext(sample_ws)
    manager = JobManager(sample_ws, resources=["cpu"], kinds={"sleep": SleepKind(tmp_path)})
    panel = JobsPanel(ctx, manager=manager, poll_ms=100)
    qtbot.addWidget(panel)
    job_id = jobs.submit(sample_ws, "sleep", {}, resource="cpu")
    try:

        def epoch_shown() -> bool:
            row = panel.row_of(job_id)
            if row < 0:
                return False
            bar = panel.table.cellWidget(row, 3)
            return isinstance(bar, QProgressBar) and bar.format() == "epoch 1/3"

        qtbot.waitUntil(epoch_shown, timeout=30_000)
        row = panel.row_of(job_id)
        assert panel.table.item(row, 2).text() == "running"
        bar = panel.table.cellWidget(row, 3)
        assert (bar.value(), bar.maximum()) == (1, 3)
        button = panel.table.cellWidget(row, 6)
        assert isinstance(button, QPushButton)
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(
            lambda: jobs.get_job(sample_ws, job_id).status == "cancelled", timeout=30_000
        )
        qtbot.waitUntil(
            lambda: (
                panel.row_of(job_id) >= 0
                and panel.table.item(panel.row_of(job_id), 2).text() == "cancelled"
            ),
            timeout=10_000,
        )
        assert panel.table.cellWidget(panel.row_of(job_id), 6) is None
    finally:
        panel.timer.stop()
        ctx.wait()
        if jobs.get_job(sample_ws, job_id).status in jobs.ACTIVE:
            manager.cancel(job_id, grace_s=2)
        manager.close()


def test_format_eta() -> None:
    from desktop_app.ui.jobs_panel import format_eta

    assert format_eta(None) == ""
    assert format_eta(42.4) == "42s"
    assert format_eta(185) == "3m 05s"
    assert format_eta(3720) == "1h 02m"


def test_first_start_creates_the_sample_project(
    qtbot: Any, tmp_path: Path, studio_config: Path
) -> None:
    from desktop_app.core import datasets
    from desktop_app.ui.app import WorkspacePicker, build_window
    from desktop_app.ui.settings import StudioSettings

    picker = WorkspacePicker(tmp_path / "default-ws")
    qtbot.addWidget(picker)
    assert picker.workspace() == tmp_path / "default-ws"
    assert picker.sample.isChecked()
    settings = StudioSettings.load()
    window = build_window(picker.workspace(), settings, create_sample=True)
    qtbot.addWidget(window)
    try:
        ws = window.ctx.workspace
        qtbot.waitUntil(
            lambda: [d["name"] for d in window.datasets_page.datasets] == ["sample"],
            timeout=60_000,
        )
        assert datasets.list_datasets(ws)[0]["images"] == 64
        saved = json.loads(studio_config.read_text())
        assert saved["workspace"] == str((tmp_path / "default-ws").resolve())
    finally:
        window.jobs_panel.stop()
        window.ctx.wait()
        window.ctx.workspace.close()


def test_cli_studio_without_pyside6_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from desktop_app import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "PySide6" else real(name, *a, **k),
    )
    assert cli.main(["studio"]) == 1
    assert "outpost studio needs PySide6: pip install 'outpost[gui]'" in capsys.readouterr().err
