"""Save a PNG of every main view of the Studio (``make screenshots``).

Prepares a workspace that has something to show in every area: the sample dataset imported
and, with ``--train``, two runs (30 and 12 epochs at 160 px on the CPU, so the curves have
lines and the first model draws real boxes), an ONNX export of the first (validated), an evaluation and sample predictions on its
val split, and a local agent on 127.0.0.1 only (it advertises and is browsed on loopback,
never on the LAN) that is discovered, paired, given the export, benchmarked and asked for an
inference. Then it opens the Studio on that workspace, switches through the areas, tabs and
dialogs programmatically, and saves ``QWidget.grab()`` of the window (or dialog) for each
into ``--out``. Run it under a display (``make screenshots`` starts Xvfb) or with
``QT_QPA_PLATFORM=offscreen``.

    python -m desktop_app.ui.screenshots --out screenshots [--workspace DIR] [--train]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QApplication, QWidget

from desktop_app.core import datasets
from desktop_app.core.workspace import Workspace
from desktop_app.ui.context import StudioContext
from desktop_app.ui.main_window import SAMPLE_DATASET, MainWindow, create_sample_project

LOOPBACK = "127.0.0.1"
# The demo's recipe (drawn shapes at 160 px, no mosaic): the first run learns enough to draw
# real detections (mAP50 about 0.5 on the 64-image sample); the second, shorter one gives the
# comparison a second curve.
EPOCHS = {0: 30, 7: 12}
IMGSZ = 160
BENCH_ROUNDS = 3
COMPARE_CURVE = "train/box_loss"
# The views that draw predictions use a threshold below the default 0.25: a 30-epoch model's
# scores on some shapes are still low.
RAW_CONF = 0.1


@dataclass
class Prepared:
    """What :func:`prepare_workspace` made: run ids, the export, the paired device."""

    runs: list[str] = field(default_factory=list)
    export_id: str | None = None
    device_id: str | None = None
    probe_image: Path | None = None


def say(text: str) -> None:
    """One progress line on stderr (the PNG paths go to stdout)."""
    print(f"[screenshots] {text}", file=sys.stderr, flush=True)


def prepare_workspace(root: Path, train: bool) -> Workspace:
    """The workspace with the sample dataset (and, with ``train``, two tiny runs)."""
    ws = Workspace.open(root)
    if not any(d["name"] == SAMPLE_DATASET for d in datasets.list_datasets(ws)):
        create_sample_project(ws)
    if train:
        train_runs(ws)
    return ws


def train_runs(ws: Workspace) -> list[str]:
    """Two tiny runs of the sample (different seeds: a comparison with two curves)."""
    from desktop_app.core.training import TrainOptions, list_runs, run_training

    have = [r["id"] for r in list_runs(ws) if r["status"] == "completed"]
    for seed in (0, 7)[len(have) :]:
        t0 = time.monotonic()
        run = run_training(
            ws,
            TrainOptions(
                dataset=SAMPLE_DATASET,
                epochs=EPOCHS[seed],
                imgsz=IMGSZ,
                batch=8,
                workers=0,
                device="cpu",
                seed=seed,
                # small drawn shapes: mosaic would shrink them to a few pixels
                extra={"mosaic": 0.0},
            ),
        )
        have.append(str(run["id"]))
        say(f"trained {run['id']} (seed {seed}) in {time.monotonic() - t0:.0f} s")
    return have


def export_and_evaluate(ws: Workspace, run_id: str) -> str:
    """An ONNX export of the run, an evaluation on val and sample predictions; the export id."""
    from desktop_app.core import studio_ops
    from desktop_app.core.evaluation import evaluate
    from desktop_app.core.exports import export_run

    t0 = time.monotonic()
    export = export_run(ws, run_id, ["onnx"])[0]
    say(f"exported {export['id']} ({export['status']}) in {time.monotonic() - t0:.0f} s")
    evaluate(ws, run_id, SAMPLE_DATASET, None, "val")
    samples = studio_ops.predict_samples(ws, run_id, conf=RAW_CONF)
    best = max(samples, key=lambda item: len(item["annotations"]), default=None)
    if best is not None and best["annotations"]:
        # The inference test later runs on the image the model finds most in.
        suffix = Path(str(best.get("file") or "")).suffix or ".jpg"  # blobs have no suffix
        probe = Path(ws.root) / f"shots-probe{suffix}"
        probe.write_bytes(Path(best["image"]).read_bytes())
    say(f"evaluated and predicted {run_id} in {time.monotonic() - t0:.0f} s")
    return str(export["id"])


@contextmanager
def local_device(ws: Workspace, export_id: str) -> Iterator[str]:
    """A local agent on 127.0.0.1: discovered, paired, the export deployed and benchmarked.

    Yields the device id; the agent stops on exit.
    """
    from desktop_app.core import devices
    from desktop_app.core.demo import LocalAgent

    agent = LocalAgent(ws.root / "shots-agent", ws.root / "shots-agent.log")
    ready = agent.start()
    try:
        agent_id = str(ready["agent_id"])
        found = devices.discover(ws, [LOOPBACK], timeout=15.0, want_id=agent_id)
        if not any(d["id"] == agent_id for d in found):
            raise RuntimeError(f"the local agent was not found on {LOOPBACK}; see {agent.log_path}")
        devices.pair(ws, agent_id, agent.pairing_code(), [LOOPBACK])
        devices.deploy(ws, export_id, agent_id, [LOOPBACK])
        for _ in range(BENCH_ROUNDS):  # a few points on the latency-over-time chart
            devices.bench_export(ws, export_id, agent_id, 20, [LOOPBACK])
        say(f"agent {agent_id} on {LOOPBACK}: paired, deployed, benchmarked")
        yield agent_id
    finally:
        agent.stop()


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


def wait_for(
    app: QApplication, ctx: StudioContext, ready: Callable[[], bool], seconds: float = 60
) -> bool:
    """Process events until ``ready()`` (or the time is up); whether it became ready."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        if ready():
            return True
        time.sleep(0.02)
    say("gave up waiting for a view to fill; its screenshot may be incomplete")
    return False


def take_all(
    window: MainWindow, out: Path, app: QApplication, prepared: Prepared | None = None
) -> list[Path]:
    """Switch through the views and save one PNG each; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = window.ctx
    prepared = prepared or Prepared()
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

    # Training: the first run selected, its curves and (cleaned) log
    window.show_area(1)
    training = window.training_page
    if prepared.runs:
        training.select_run(prepared.runs[0])
        wait_for(app, ctx, lambda: bool(training.loss_chart.series_names()))
    shot("07-training")

    # Experiments: both runs compared, then the first run's evaluation
    window.show_area(2)
    experiments = window.experiments_page
    wait_for(app, ctx, lambda: len(experiments.runs) >= len(prepared.runs))
    if len(prepared.runs) >= 2:
        experiments.select_runs(prepared.runs[:2])
        experiments.compare_selected()
        wait_for(app, ctx, lambda: experiments.comparison is not None)
        experiments.tabs.setCurrentIndex(0)
        # a loss curve: two barely trained runs differ there, not in mAP
        if experiments.metric_box.findText(COMPARE_CURVE) >= 0:
            experiments.metric_box.setCurrentText(COMPARE_CURVE)
    shot("08-experiments-compare")
    if prepared.runs:
        experiments.select_runs([prepared.runs[0]])
        wait_for(app, ctx, lambda: "Loading" not in experiments.eval_label.text())
        experiments.tabs.setCurrentIndex(2)
        for index, name in enumerate(("per-class", "confusion", "pr-curves", "samples")):
            experiments.eval_tabs.setCurrentIndex(index)
            if name == "samples" and experiments.sample_list.count():
                experiments.sample_list.setCurrentRow(_row_with_most_boxes(experiments.sample_list))
            shot(f"09-experiments-evaluation-{name}")
    else:
        shot("09-experiments-evaluation")

    window.show_area(3)
    export_page = window.export_page
    if prepared.export_id is not None:
        export_id = prepared.export_id
        wait_for(app, ctx, lambda: any(e["id"] == export_id for e in export_page.exports))
        export_page.select_export(export_id)
    shot("10-export")

    # Devices: the paired local agent selected; every tab; an inference with boxes
    window.show_area(4)
    devices = window.devices_page
    devices.timer.stop()
    if prepared.device_id is not None:
        device_id = prepared.device_id
        wait_for(app, ctx, lambda: devices.device(device_id) is not None)
        devices.select_device(device_id)
        wait_for(app, ctx, lambda: devices.detail is not None and bool(devices.detail["models"]))
    for index, name in enumerate(("details", "latency", "deployments", "usage")):
        devices.tabs.setCurrentIndex(index)
        shot(f"11-devices-{name}")
    if prepared.device_id is not None and prepared.probe_image is not None:
        devices.tabs.setCurrentWidget(devices.inference)
        devices.inference.set_image(prepared.probe_image)
        devices.inference.select_target("device", prepared.device_id)
        devices.inference.conf_box.setValue(RAW_CONF)
        devices.run_inference()
        wait_for(app, ctx, lambda: devices.last_result is not None)
        devices.pull_usage()
        settle(app, ctx)
        shot("11-devices-inference")
        devices.tabs.setCurrentIndex(3)
        shot("11-devices-usage")

    settings = window.open_settings()
    shot("12-settings", settings)
    settings.close()
    window.show_area(0)
    with tempfile.TemporaryDirectory(prefix="outpost-shots-src-") as tmp:
        src = Path(tmp) / "shapes"
        datasets.write_sample_dataset(src, seed=5, count=24)
        wizard = page.open_import(src)
        wizard.next()
        shot("13-import-wizard-preview", wizard)
        wizard.close()

    # Pre-labelling with the export: the dialog, then the proposals under review
    dialog = page.open_prelabel()
    if dialog is not None:
        wait_for(app, ctx, lambda: dialog.loaded, seconds=20)
        if dialog.packages:
            dialog.all_radio.setChecked(True)
            dialog.conf_spin.setValue(RAW_CONF)
            shot("14-prelabel-dialog", dialog)
            dialog.start()
            wait_for(app, ctx, lambda: dialog.outcome is not None)
            wait_for(app, ctx, lambda: images.item is not None, seconds=20)
            shot("15-prelabel-review")
        else:
            shot("14-prelabel-dialog", dialog)
            dialog.close()
    return saved


def _row_with_most_boxes(widget: Any) -> int:
    """The sample list's row whose label ("name (N boxes)") counts the most boxes."""
    counts = []
    for row in range(widget.count()):
        match = re.search(r"\((\d+) box", widget.item(row).text())
        counts.append(int(match.group(1)) if match else 0)
    return max(range(len(counts)), key=counts.__getitem__) if counts else 0


def prepare_all(root: Path, train: bool) -> tuple[Workspace, Prepared]:
    """The workspace and, with ``train``, the runs, export and evaluation (no agent yet)."""
    ws = prepare_workspace(root, False)
    prepared = Prepared()
    if train:
        prepared.runs = train_runs(ws)
        prepared.export_id = export_and_evaluate(ws, prepared.runs[0])
        probes = sorted(Path(ws.root).glob("shots-probe.*"))
        if not probes:  # the model found nothing on val: a fresh sample image instead
            with tempfile.TemporaryDirectory(prefix="outpost-shots-probe-") as tmp:
                datasets.write_sample_dataset(Path(tmp), seed=11, count=1)
                first = sorted(Path(tmp).rglob("*.jpg"))[0]
                probes = [ws.root / f"shots-probe{first.suffix}"]
                probes[0].write_bytes(first.read_bytes())
        prepared.probe_image = probes[0]
    return ws, prepared


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Save a PNG of every main Studio view")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument(
        "--train",
        action="store_true",
        help="train two tiny runs, export, evaluate and deploy to a local agent first",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    root = args.workspace or Path(tempfile.mkdtemp(prefix="outpost-shots-")) / "ws"
    os.environ.setdefault("OUTPOST_STUDIO_CONFIG", str(root / "studio-settings.json"))
    app = QApplication.instance() or QApplication(["outpost-screenshots"])
    assert isinstance(app, QApplication)
    t0 = time.monotonic()
    ws, prepared = prepare_all(root, args.train)
    with device_if_exported(prepared, ws) as device_id:
        prepared.device_id = device_id
        ctx = StudioContext(ws)
        # device discovery browses loopback only: a screenshot run never multicasts on the LAN
        ctx.settings.discovery_interfaces = [LOOPBACK]
        window = MainWindow(ctx)
        window.resize(1440, 900)
        window.show()
        close: Callable[[], bool] = window.close
        try:
            saved = take_all(window, args.out, app, prepared)
        finally:
            close()
            ctx.wait()
    ws.close()
    for path in saved:
        print(path)
    say(f"{len(saved)} screenshots in {time.monotonic() - t0:.0f} s")
    return 0


@contextmanager
def device_if_exported(prepared: Prepared, ws: Workspace) -> Iterator[str | None]:
    """The local device when there is an export to deploy, else nothing."""
    if prepared.export_id is None:
        yield None
        return
    with local_device(ws, prepared.export_id) as device_id:
        yield device_id


if __name__ == "__main__":
    sys.exit(main())
