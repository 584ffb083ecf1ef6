"""GUI test fixtures: offscreen Qt, a temp workspace with the sample dataset, a Studio window."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from desktop_app.core import datasets  # noqa: E402
from desktop_app.core.workspace import Workspace  # noqa: E402

SAMPLE_COUNT = 12
SAMPLE_SIZE = 96


@pytest.fixture(scope="session")
def sample_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small YOLO sample dataset on disk (written once per session)."""
    out = tmp_path_factory.mktemp("sample") / "shapes"
    datasets.write_sample_dataset(out, seed=3, count=SAMPLE_COUNT, size=SAMPLE_SIZE)
    return out


@pytest.fixture
def studio_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Studio settings live in the test's temp folder, never in the user's config dir."""
    path = tmp_path / "config" / "studio.json"
    monkeypatch.setenv("OUTPOST_STUDIO_CONFIG", str(path))
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace.open(tmp_path / "ws")
    yield ws
    ws.close()


@pytest.fixture
def sample_ws(workspace: Workspace, sample_source: Path) -> Workspace:
    """The temp workspace with the sample imported as dataset ``shapes``."""
    datasets.import_dataset(workspace, sample_source, "shapes")
    return workspace


@pytest.fixture
def studio(qtbot: Any, sample_ws: Workspace, studio_config: Path) -> Iterator[Any]:
    """A Studio main window over the sample workspace (not leading jobs: no worker starts)."""
    from desktop_app.core.jobs import JobManager
    from desktop_app.ui.context import StudioContext
    from desktop_app.ui.jobs_panel import JobsPanel
    from desktop_app.ui.main_window import MainWindow

    ctx = StudioContext(sample_ws)
    ctx.settings.discovery_interfaces = ["127.0.0.1"]  # never browse the machine's LAN
    manager = JobManager(sample_ws, resources=["cpu"])
    panel = JobsPanel(ctx, manager=manager, poll_ms=200)
    window = MainWindow(ctx, settings_path=studio_config, jobs_panel=panel)
    qtbot.addWidget(window)
    window.show()
    yield window
    panel.stop()
    ctx.wait()
    manager.close()
