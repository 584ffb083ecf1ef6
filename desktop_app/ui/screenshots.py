"""Save a PNG of every main view of the Studio (``make screenshots``).

Prepares a workspace (the sample dataset imported, and with ``--train`` one tiny run: imgsz
64, one epoch, on the CPU), opens the Studio on it, switches through the areas and the
Datasets tabs and dialogs programmatically, and saves ``QWidget.grab()`` of the window (or
dialog) for each into ``--out``. Run it under a display (``make screenshots`` starts Xvfb)
or with ``QT_QPA_PLATFORM=offscreen``.

    python -m desktop_app.ui.screenshots --out screenshots [--workspace DIR] [--train]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtWidgets import QApplication, QWidget

from desktop_app.core import datasets
from desktop_app.core.workspace import Workspace
from desktop_app.ui.context import StudioContext
from desktop_app.ui.main_window import SAMPLE_DATASET, MainWindow, create_sample_project


def prepare_workspace(root: Path, train: bool) -> Workspace:
    """The workspace with the sample dataset (and one tiny training run when asked)."""
    ws = Workspace.open(root)
    if not any(d["name"] == SAMPLE_DATASET for d in datasets.list_datasets(ws)):
        create_sample_project(ws)
    if train:
        from desktop_app.core.training import TrainOptions, list_runs, run_training

        if not list_runs(ws):
            run_training(ws, TrainOptions(dataset=SAMPLE_DATASET, epochs=1, imgsz=64, device="cpu"))
    return ws


def settle(app: QApplication, ctx: StudioContext, seconds: float = 0.6) -> None:
    """Let background work finish and the window repaint."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        app.processEvents()
        if ctx.pool.activeThreadCount() == 0:
            break
        time.sleep(0.02)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def take_all(window: MainWindow, out: Path, app: QApplication) -> list[Path]:
    """Switch through the views and save one PNG each; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = window.ctx
    saved: list[Path] = []

    def shot(name: str, widget: QWidget | None = None) -> None:
        settle(app, ctx)
        path = out / f"{name}.png"
        (widget or window).grab().save(str(path))
        saved.append(path)

    page = window.datasets_page
    window.show_area(0)
    settle(app, ctx)
    images = page.images
    if images.model.rowCount():
        images.grid.setCurrentIndex(images.model.index(1 if images.model.rowCount() > 1 else 0))
        settle(app, ctx)
        for row in range(min(images.model.rowCount(), 40)):
            images.grid.model().data(images.model.index(row), 1)  # DecorationRole
        images.loader.wait(20_000)
    shot("01-datasets-images")
    images.set_editing(True)
    if images.view.box_items():
        images.view.select(0)
    shot("02-datasets-editor")
    images.set_editing(False)
    steps: list[tuple[str, QWidget]] = [
        ("03-datasets-versions", page.versions),
        ("04-datasets-qa", page.qa),
        ("05-datasets-statistics", page.stats),
    ]
    for name, tab in steps:
        page.tabs.setCurrentWidget(tab)
        shot(name)
    page.tabs.setCurrentWidget(images)
    split = page.open_split()
    if split is not None:
        shot("06-split-dialog", split)
        split.close()
    for i, title in enumerate(window.area_titles()[1:], start=1):
        window.show_area(i)
        shot(f"{i + 6:02d}-{title.lower()}")
    settings = window.open_settings()
    shot("11-settings", settings)
    settings.close()
    window.show_area(0)
    with tempfile.TemporaryDirectory(prefix="outpost-shots-src-") as tmp:
        src = Path(tmp) / "shapes"
        datasets.write_sample_dataset(src, seed=5, count=24)
        wizard = page.open_import(src)
        wizard.next()
        shot("12-import-wizard-preview", wizard)
        wizard.close()
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Save a PNG of every main Studio view")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--train", action="store_true", help="train one tiny run first")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    root = args.workspace or Path(tempfile.mkdtemp(prefix="outpost-shots-")) / "ws"
    os.environ.setdefault("OUTPOST_STUDIO_CONFIG", str(root / "studio-settings.json"))
    app = QApplication.instance() or QApplication(["outpost-screenshots"])
    assert isinstance(app, QApplication)
    ws = prepare_workspace(root, args.train)
    ctx = StudioContext(ws)
    # device discovery browses loopback only: a screenshot run never multicasts on the LAN
    ctx.settings.discovery_interfaces = ["127.0.0.1"]
    window = MainWindow(ctx)
    window.resize(1440, 900)
    window.show()
    close: Callable[[], bool] = window.close
    try:
        saved = take_all(window, args.out, app)
    finally:
        close()
        ctx.wait()
        ws.close()
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
