"""Devices: agents discovered live on the LAN, pairing, deployment, latency, deployment
history, usage, and an inference test panel (a device or this computer).

Discovery browses only the interfaces in the Studio settings (every interface when the
list is empty); every call to a device goes through ``desktop_app.core.devices`` or
``studio_ops`` off the UI thread.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from sqlalchemy import select

from desktop_app.core import devices as core_devices
from desktop_app.core import studio_ops
from desktop_app.core.exports import list_exports
from desktop_app.core.models import DeviceBenchmark
from desktop_app.ui.canvas import AnnotatedImageView
from desktop_app.ui.charts import BarChart, LineChart
from desktop_app.ui.context import StudioContext, error_text
from device_agent import DEFAULT_PORT
from device_agent.crashguard import crash_line

DISCOVERY_MS = 4000
DISCOVERY_TIMEOUT_S = 1.5
DEVICE_COLUMNS = ("name", "id", "address", "platform", "arch", "agent", "paired", "last seen")
LATENCY_COLUMNS = ("device", "model", "format", "runtime", "runs", "p50 ms", "p90 ms", "p99 ms")
USAGE_COLUMNS = (
    "device",
    "model",
    "version",
    "requests",
    "errors",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "req/s",
    "collected",
)
HISTORY_COLUMNS = ("when", "model", "export", "action", "status", "runtime", "fallback", "message")


def fallback_text(fallback: Any) -> str:
    """A device's runtime fallback as ``wanted → using`` (see
    :func:`desktop_app.core.devices.fallback_summary`), or ""."""
    return core_devices.fallback_summary(fallback, "→")


LOCAL = "local"


def _table(columns: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _fill(table: QTableWidget, rows: list[list[Any]]) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if isinstance(value, float):
                text = f"{value:.2f}"
            else:
                text = "" if value is None else str(value)
            table.setItem(r, c, QTableWidgetItem(text))


class _OneFieldDialog(QDialog):
    """A help text, one line to fill in, a red line saying what is wrong with it, and
    OK (named ``ok_text``) / Cancel; OK accepts only what :meth:`problem` finds no fault with."""

    def __init__(self, title: str, help_html: str, ok_text: str, parent: QWidget | None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.edit = QLineEdit()
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #d62728;")
        help_text = QLabel(help_html)
        help_text.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok_text)
        self.buttons.accepted.connect(self.try_accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for widget in (help_text, self.edit, self.error_label, self.buttons):
            layout.addWidget(widget)

    def text(self) -> str:
        """What was entered, without surrounding blanks."""
        return self.edit.text().strip()

    def problem(self) -> str | None:
        """What is wrong with :meth:`text`; None when it may be accepted."""
        return None

    def try_accept(self) -> None:
        """Accept the entry; otherwise say what is wrong."""
        problem = self.problem()
        if problem is not None:
            self.error_label.setText(problem)
            return
        self.accept()


class PairDialog(_OneFieldDialog):
    """Enter the 6-digit code that ``outpost-agent pair`` shows on the device."""

    def __init__(self, device: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(
            f"Pair with {device['name']}",
            "On the device run <b>outpost-agent pair</b> and enter the 6-digit code it shows "
            f"(device id {device['id'][:16]}…).",
            "Pair",
            parent,
        )
        self.device = device
        self.code_edit = self.edit
        self.code_edit.setInputMask("999999")
        self.code_edit.setPlaceholderText("123456")

    def code(self) -> str:
        """The digits entered."""
        return self.text()

    def problem(self) -> str | None:
        code = self.code()
        return (
            None if len(code) == 6 and code.isdigit() else "Enter the 6 digits shown on the device."
        )


class AddDeviceDialog(_OneFieldDialog):
    """Enter an agent's address, for a device that mDNS does not reach."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(
            "Add a device by address",
            "Where discovery does not find the device (another subnet, a VPN, a network that "
            "drops multicast), give the address <b>outpost-agent serve</b> listens on: "
            f"HOST or HOST:PORT (port {DEFAULT_PORT} when omitted). Pair it next.",
            "Add",
            parent,
        )
        self.address_edit = self.edit
        self.address_edit.setPlaceholderText(f"192.168.1.20:{DEFAULT_PORT}")

    def address(self) -> str:
        return self.text()

    def problem(self) -> str | None:
        """None for an address that reads as HOST[:PORT]; else what is wrong with it."""
        try:
            core_devices.parse_address(self.address())
        except core_devices.DeviceError as exc:
            return str(exc)
        return None


class DeployDialog(QDialog):
    """Pick an export and a paired device; activate it at once or leave it staged."""

    def __init__(
        self,
        exports: list[dict[str, Any]],
        devices: list[dict[str, Any]],
        device_id: str | None = None,
        activate: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Deploy an export")
        self.export_box = QComboBox()
        for e in exports:
            star = " ★" if e.get("default") else ""
            self.export_box.addItem(
                f"{e['id']}  {e['format']} {e['precision']}  (run {e['run_id']}){star}", e["id"]
            )
        self.device_box = QComboBox()
        for d in devices:
            self.device_box.addItem(f"{d['name']}  {d['address']}:{d['port']}", d["id"])
        if device_id is not None and self.device_box.findData(device_id) >= 0:
            self.device_box.setCurrentIndex(self.device_box.findData(device_id))
        self.activate_box = QCheckBox("Activate it now (otherwise staged)")
        self.activate_box.setChecked(activate)
        form = QFormLayout()
        form.addRow("Export", self.export_box)
        form.addRow("Device", self.device_box)
        form.addRow(self.activate_box)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Deploy")
        ok = bool(exports) and bool(devices)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        if not ok:
            layout.addWidget(QLabel("Deploying needs a completed export and a paired device."))
        layout.addWidget(self.buttons)

    def request(self) -> dict[str, Any]:
        """``{"export", "device", "activate"}`` as chosen."""
        return {
            "export": self.export_box.currentData(),
            "device": self.device_box.currentData(),
            "activate": self.activate_box.isChecked(),
        }


class InferencePanel(QWidget):
    """Drop an image (or pick one), choose a device or this computer, see the boxes."""

    run_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.image_path: Path | None = None
        self.pick_button = QPushButton("Pick image…")
        self.image_label = QLabel("Drop an image here or pick one.")
        self.target_box = QComboBox()
        self.conf_box = QDoubleSpinBox()
        self.conf_box.setRange(0.001, 1.0)
        self.conf_box.setDecimals(3)
        self.conf_box.setSingleStep(0.05)
        self.conf_box.setValue(0.25)
        self.run_button = QPushButton("Run")
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.view = AnnotatedImageView()
        row = QHBoxLayout()
        row.addWidget(self.pick_button)
        row.addWidget(self.image_label, 1)
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("Run on"))
        row2.addWidget(self.target_box, 2)
        row2.addWidget(QLabel("Confidence ≥"))
        row2.addWidget(self.conf_box)
        row2.addWidget(self.run_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addLayout(row2)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.result_label)
        self.pick_button.clicked.connect(self._pick)
        self.run_button.clicked.connect(self.run_requested.emit)

    def set_targets(self, devices: list[dict[str, Any]], exports: list[dict[str, Any]]) -> None:
        """Targets: each paired device's active model, and each completed export locally."""
        current = self.target_box.currentData()
        self.target_box.clear()
        for d in devices:
            if d.get("paired"):
                self.target_box.addItem(f"device {d['name']} (active model)", ("device", d["id"]))
        for e in exports:
            if e["status"] == "completed":
                self.target_box.addItem(
                    f"this computer: {e['id']} {e['format']} {e['precision']}", (LOCAL, e["id"])
                )
        if current is not None:
            for index in range(self.target_box.count()):
                if self.target_box.itemData(index) == current:
                    self.target_box.setCurrentIndex(index)

    def select_target(self, kind: str, ref: str) -> bool:
        """Choose a target by kind (``device`` or ``local``) and id; False when absent."""
        for index in range(self.target_box.count()):
            if tuple(self.target_box.itemData(index)) == (kind, ref):
                self.target_box.setCurrentIndex(index)
                return True
        return False

    def target(self) -> tuple[str, str] | None:
        """The chosen ``(kind, id)``."""
        data = self.target_box.currentData()
        return (str(data[0]), str(data[1])) if data else None

    def set_image(self, path: Path | str) -> None:
        """Show an image (boxes cleared until the next run)."""
        self.image_path = Path(path)
        self.image_label.setText(self.image_path.name)
        self.view.set_image(self.image_path)
        self.view.set_annotations([])
        self.result_label.clear()

    def show_result(self, result: dict[str, Any]) -> None:
        """Draw the detections of one run; a classifier's classes are listed instead."""
        annotations = studio_ops.to_annotations(result["detections"])
        self.view.set_annotations(annotations)
        timing = result.get("timing") or {}
        total = timing.get("total")
        if not isinstance(total, (int, float)):
            total = sum(float(v) for v in timing.values() if isinstance(v, (int, float)))
        where = f"device {result.get('device')}" if result["where"] == "device" else "this computer"
        classes = result.get("classification") or []
        what = (
            "classes "
            + ", ".join(f"{c['class_name']} {float(c['confidence']):.2f}" for c in classes)
            if classes
            else f"{len(annotations)} detections"
        )
        self.result_label.setText(
            f"{what} from {result.get('model')} on {where}"
            + (f" in {total:.1f} ms" if total else "")
        )

    def _pick(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Pick an image", "", "Images (*.jpg *.jpeg *.png *.bmp *.webp)"
        )
        if path:
            self.set_image(path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt API
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt API
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.set_image(url.toLocalFile())
                event.acceptProposedAction()
                return


def runtime_text(runtime: Any) -> str:
    """One runtime an agent reports, as ``onnxruntime 1.32.0 (onnx)``; an unavailable one
    says so."""
    if not isinstance(runtime, dict):
        return str(runtime)
    name = runtime.get("key") or runtime.get("name") or "?"
    version = f" {runtime['version']}" if runtime.get("version") else ""
    formats = ", ".join(str(f) for f in runtime.get("formats") or [])
    text = f"{name}{version}" + (f" ({formats})" if formats else "")
    if runtime.get("available") is False:
        text += " — unavailable" + (f": {runtime['reason']}" if runtime.get("reason") else "")
    return text


def _load(ctx: StudioContext) -> dict[str, Any]:
    ws = ctx.workspace
    return {
        "devices": core_devices.list_devices(ws),
        "exports": list_exports(ws),
        "usage": core_devices.usage_report(ws),
    }


def _load_device(
    ctx: StudioContext, device_id: str, interfaces: list[str] | None
) -> dict[str, Any]:
    ws = ctx.workspace
    detail = core_devices.device_detail(ws, device_id, interfaces)
    latency: list[dict[str, Any]] = []
    seen: set[str] = set()
    for d in core_devices.list_deployments(ws, device_id):
        if d["export"] and d["export"] not in seen:
            seen.add(d["export"])
            latency += [
                row
                for row in core_devices.bench_table(ws, d["export"])
                if row["device"] == detail["id"]
            ]
    return {
        "detail": detail,
        "history": core_devices.deployment_history(ws, device_id),
        "latency": latency,
        "bench_history": bench_history(ws, detail["id"]),
    }


def bench_history(ws: Any, device_id: str) -> list[dict[str, Any]]:
    """Every on-device benchmark recorded for a device, oldest first: ``{"model",
    "format", "runtime", "p50_ms", "p90_ms", "created_at"}`` each (the latency chart)."""
    with ws.session() as s:
        rows = s.scalars(
            select(DeviceBenchmark)
            .where(DeviceBenchmark.device_id == device_id)
            .order_by(DeviceBenchmark.created_at, DeviceBenchmark.id)
        ).all()
        return [
            {
                "model": b.model_name,
                "format": b.format,
                "runtime": b.runtime,
                "p50_ms": float(b.p50_ms),
                "p90_ms": float(b.p90_ms),
                "created_at": b.created_at.isoformat() if b.created_at else None,
            }
            for b in rows
        ]


def latency_series(history: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """The latency chart's series: per model and format, p50 and p90 against the
    benchmark's number on the device (1 = its oldest benchmark)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for number, b in enumerate(history, start=1):
        name = f"{b['model']} ({b['format']})"
        series.setdefault(f"{name} p50", []).append((float(number), float(b["p50_ms"])))
        series.setdefault(f"{name} p90", []).append((float(number), float(b["p90_ms"])))
    return series


def _bench(
    ctx: StudioContext, export_id: str, device_id: str, interfaces: list[str] | None
) -> dict[str, Any]:
    return core_devices.bench_export(ctx.workspace, export_id, device_id, 20, interfaces)


def _infer(
    ctx: StudioContext,
    target: tuple[str, str],
    image: Path,
    conf: float,
    interfaces: list[str] | None,
) -> dict[str, Any]:
    kind, ref = target
    if kind == LOCAL:
        return studio_ops.infer_locally(ctx.workspace, ref, image, conf=conf)
    return studio_ops.infer_on_device(ctx.workspace, ref, image, conf=conf, interfaces=interfaces)


class DevicesPage(QWidget):
    """Agents on the LAN and everything done with them."""

    title = "Devices"
    topics = ("devices", "exports")
    devices_changed = Signal()

    def __init__(self, ctx: StudioContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.devices: list[dict[str, Any]] = []
        self.exports: list[dict[str, Any]] = []
        self.detail: dict[str, Any] | None = None
        self.last_result: dict[str, Any] | None = None
        self.pair_dialog: PairDialog | None = None
        self.add_dialog: AddDeviceDialog | None = None
        self.deploy_dialog: DeployDialog | None = None
        self._interfaces: list[str] | None = None
        self._discovering = False
        self._selected: str | None = None

        self.discover_button = QPushButton("Discover")
        self.add_button = QPushButton("Add by address…")
        self.pair_button = QPushButton("Pair…")
        self.deploy_button = QPushButton("Deploy…")
        self.bench_button = QPushButton("Benchmark")
        self.usage_button = QPushButton("Pull usage")
        self.status_label = QLabel()
        bar = QHBoxLayout()
        for button in (
            self.discover_button,
            self.add_button,
            self.pair_button,
            self.deploy_button,
            self.bench_button,
            self.usage_button,
        ):
            bar.addWidget(button)
        bar.addStretch(1)
        bar.addWidget(self.status_label)

        self.device_table = _table(DEVICE_COLUMNS)
        self.detail_label = QLabel("Select a device.")
        self.detail_label.setWordWrap(True)
        self.detail_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.detail_label.setMargin(8)
        self.detail_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.latency_table = _table(LATENCY_COLUMNS)
        self.latency_chart = BarChart("p50 latency (ms) per model")
        self.latency_history = LineChart(
            "Latency over the device's benchmarks", "benchmark (oldest → newest)", "ms"
        )
        self.history_table = _table(HISTORY_COLUMNS)
        self.usage_table = _table(USAGE_COLUMNS)
        self.usage_chart = BarChart("Requests per device and model", color="#2ca02c")
        self.inference = InferencePanel()

        latency_charts = QSplitter(Qt.Orientation.Horizontal)
        latency_charts.addWidget(self.latency_chart)
        latency_charts.addWidget(self.latency_history)
        latency = QSplitter(Qt.Orientation.Vertical)
        latency.addWidget(self.latency_table)
        latency.addWidget(latency_charts)
        latency.setStretchFactor(1, 2)
        usage = QSplitter(Qt.Orientation.Vertical)
        usage.addWidget(self.usage_table)
        usage.addWidget(self.usage_chart)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.detail_label, "Details")
        self.tabs.addTab(latency, "Latency")
        self.tabs.addTab(self.history_table, "Deployments")
        self.tabs.addTab(usage, "Usage")
        self.tabs.addTab(self.inference, "Inference test")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.device_table)
        split.addWidget(self.tabs)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(split, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(DISCOVERY_MS)
        self.timer.timeout.connect(self.discover)
        self.discover_button.clicked.connect(self.discover)
        self.add_button.clicked.connect(self.open_add)
        self.pair_button.clicked.connect(self.open_pair)
        self.deploy_button.clicked.connect(self.open_deploy)
        self.bench_button.clicked.connect(self.bench_selected)
        self.usage_button.clicked.connect(self.pull_usage)
        self.device_table.itemSelectionChanged.connect(self._selection_changed)
        self.inference.run_requested.connect(self.run_inference)
        ctx.changed.connect(self._on_changed)
        self._update_buttons()

    # --- settings ------------------------------------------------------------------------------

    def set_interfaces(self, interfaces: list[str] | None) -> None:
        """Browse only these addresses (None: what the Studio settings say)."""
        self._interfaces = list(interfaces) if interfaces is not None else None

    def interfaces(self) -> list[str] | None:
        """The interfaces to browse: set here, else the settings' (None: every interface)."""
        if self._interfaces is not None:
            return list(self._interfaces) or None
        return list(self.ctx.settings.discovery_interfaces) or None

    def _activate_default(self) -> bool:
        return bool(self.ctx.settings.activate_after_deploy)

    # --- loading -------------------------------------------------------------------------------

    def _on_changed(self, topic: str) -> None:
        if topic in self.topics:
            self.refresh()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.timer.start()

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 - Qt API
        super().hideEvent(event)
        self.timer.stop()

    def refresh(self) -> None:
        """Reload known devices, exports and usage; then the selected device's details."""
        self.ctx.run(_load, self.ctx, on_done=self._show)
        if self._selected is not None:
            self.load_device(self._selected)

    def discover(self) -> None:
        """Browse for agents once (off the UI thread); new ones appear in the table."""
        if self._discovering:
            return
        self._discovering = True

        def done(found: list[dict[str, Any]]) -> None:
            self._discovering = False
            self.status_label.setText(f"{len(found)} agent(s) answered")
            self.ctx.run(_load, self.ctx, on_done=self._show)

        def failed(exc: BaseException) -> None:
            self._discovering = False
            self.status_label.setText(f"discovery: {error_text(exc)}")

        self.ctx.run(
            core_devices.discover,
            self.ctx.workspace,
            self.interfaces(),
            DISCOVERY_TIMEOUT_S,
            on_done=done,
            on_error=failed,
        )

    def _show(self, data: dict[str, Any]) -> None:
        before = {d["id"] for d in self.devices}
        self.devices = data["devices"]
        self.exports = data["exports"]
        self.device_table.blockSignals(True)
        _fill(
            self.device_table,
            [
                [
                    d["name"],
                    d["id"],
                    f"{d['address']}:{d['port']}",
                    d.get("platform"),
                    d.get("arch"),
                    d.get("version"),
                    "yes" if d["paired"] else "no",
                    d.get("last_seen"),
                ]
                for d in self.devices
            ],
        )
        for row, d in enumerate(self.devices):
            if d["id"] == self._selected:
                self.device_table.selectRow(row)
        self.device_table.blockSignals(False)
        self._show_usage(data["usage"])
        self.inference.set_targets(self.devices, self.exports)
        self._update_buttons()
        if {d["id"] for d in self.devices} != before:
            self.devices_changed.emit()

    def _show_usage(self, usage: list[dict[str, Any]]) -> None:
        _fill(
            self.usage_table,
            [
                [
                    u["device_name"],
                    u["model"],
                    u.get("version"),
                    u["requests"],
                    u["errors"],
                    u["p50_ms"],
                    u["p90_ms"],
                    u["p99_ms"],
                    u["throughput_rps"],
                    u.get("collected_at"),
                ]
                for u in usage
            ],
        )
        self.usage_chart.set_data(
            [(f"{u['device_name']}/{u['model']}", float(u["requests"])) for u in usage]
        )

    def device(self, device_id: str) -> dict[str, Any] | None:
        """A known device's row."""
        return next((d for d in self.devices if d["id"] == device_id), None)

    def select_device(self, device_id: str) -> None:
        """Select a device and load its details."""
        for row, d in enumerate(self.devices):
            if d["id"] == device_id:
                self.device_table.selectRow(row)
        if self._selected != device_id:
            self._selected = device_id
            self.load_device(device_id)
        self._update_buttons()

    def _selection_changed(self) -> None:
        rows = {i.row() for i in self.device_table.selectedIndexes()}
        if rows and min(rows) < len(self.devices):
            self.select_device(self.devices[min(rows)]["id"])

    def load_device(self, device_id: str) -> None:
        """Ask the device (when paired) for its details; load its history and latency."""
        self.ctx.run(
            _load_device,
            self.ctx,
            device_id,
            self.interfaces(),
            on_done=self._show_device,
            on_error=lambda exc: self.detail_label.setText(error_text(exc)),
        )

    def _show_device(self, data: dict[str, Any]) -> None:
        detail = data["detail"]
        if detail["id"] != self._selected:
            return
        self.detail = detail
        runtimes = ", ".join(runtime_text(r) for r in detail["runtimes"]) or "unknown"
        models = (
            ", ".join(
                f"{m['name']} v{m.get('version')} ({m.get('runtime')})"
                + (
                    f" <b>fallback: {html.escape(fallback_text(m.get('fallbacks')))}</b>"
                    if fallback_text(m.get("fallbacks"))
                    else ""
                )
                for m in detail["models"]
            )
            or "none"
        )
        ram = detail.get("ram_bytes")
        lines = [
            f"<b>{detail['name']}</b> — {detail['address']}:{detail['port']}"
            f" — {'paired' if detail['paired'] else 'not paired'}",
            f"OS {detail.get('os') or detail.get('platform')} {detail.get('arch') or ''}, "
            f"CPU {detail.get('cpu_model') or '?'} ×{detail.get('cpu_count') or '?'}, "
            f"RAM {f'{ram / 2**30:.1f} GiB' if isinstance(ram, (int, float)) else '?'}",
            f"Accelerators: {', '.join(map(str, detail['accelerators'])) or 'none'}",
            f"Runtimes: {runtimes}",
            f"Models: {models}",
        ]
        note = core_devices.clock_note(detail.get("clock_offset_s"))
        if note:
            lines.append(html.escape(note[0].upper() + note[1:], quote=False))
        for name, why in (detail.get("not_loaded") or {}).items():
            lines.append(f"<b>Not served: {html.escape(name)}</b> — {html.escape(why)}")
        for crash in detail.get("crashes") or []:  # as outpost-agent crashes lists them
            lines.append(f"<b>Runtime crash:</b> {html.escape(crash_line(crash))}")
        if detail.get("warning"):
            lines.append(f"<i>{detail['warning']}</i>")
        self.detail_label.setText("<br>".join(lines))
        _fill(
            self.history_table,
            [
                [
                    h["created_at"],
                    h["model"],
                    h["export"],
                    h["action"],
                    h["status"],
                    h.get("runtime"),
                    fallback_text(h.get("fallback")),
                    h["message"],
                ]
                for h in data["history"]
            ],
        )
        latency = data["latency"]
        _fill(
            self.latency_table,
            [
                [
                    b["device_name"],
                    b["model"],
                    b["format"],
                    b["runtime"],
                    b["runs"],
                    b["p50_ms"],
                    b["p90_ms"],
                    b["p99_ms"],
                ]
                for b in latency
            ],
        )
        self.latency_chart.set_data(
            [(f"{b['model']} ({b['format']})", float(b["p50_ms"])) for b in latency]
        )
        self.latency_history.clear()
        for name, points in latency_series(data.get("bench_history") or []).items():
            self.latency_history.set_series(name, points)
        self._update_buttons()

    def _update_buttons(self) -> None:
        dev = self.device(self._selected) if self._selected else None
        self.pair_button.setEnabled(dev is not None)
        self.deploy_button.setEnabled(any(d["paired"] for d in self.devices))
        self.bench_button.setEnabled(
            bool(dev and dev["paired"] and self.detail and self.detail["models"])
        )

    # --- pairing and deployment -------------------------------------------------------------------

    def open_add(self) -> AddDeviceDialog:
        """Ask for a device's address, then record it (selected, ready to pair)."""
        dialog = AddDeviceDialog(self)
        dialog.accepted.connect(lambda: self.add_device(dialog.address()))
        self.add_dialog = dialog
        dialog.open()
        return dialog

    def add_device(self, address: str) -> None:
        """Record the agent at ``address`` (off the UI thread) and select it."""
        self.status_label.setText(f"asking {address} …")

        def done(result: dict[str, Any]) -> None:
            state = "paired" if result["paired"] else "not paired yet: Pair… next"
            self.status_label.setText(f"added {result['name']} ({result['id'][:12]}); {state}")
            self._selected = result["id"]
            self.ctx.changed.emit("devices")

        def failed(exc: BaseException) -> None:
            self.status_label.setText(error_text(exc))
            self.ctx.show_error(exc, self)

        self.ctx.run(
            core_devices.add_device, self.ctx.workspace, address, on_done=done, on_error=failed
        )

    def open_pair(self) -> PairDialog | None:
        """Ask for the selected device's pairing code, then pair."""
        dev = self.device(self._selected) if self._selected else None
        if dev is None:
            return None
        dialog = PairDialog(dev, self)
        dialog.accepted.connect(lambda: self.pair(dev["id"], dialog.code()))
        self.pair_dialog = dialog
        dialog.open()
        return dialog

    def pair(self, device_id: str, code: str) -> None:
        """Pair with a device using the code it shows."""
        self.status_label.setText("pairing …")

        def done(result: dict[str, Any]) -> None:
            self.status_label.setText(
                f"paired with {result['name']} (key {result['fingerprint'][:16]}…)"
            )
            self.ctx.changed.emit("devices")

        def failed(exc: BaseException) -> None:
            self.status_label.setText(error_text(exc))
            self.ctx.show_error(exc, self)

        self.ctx.run(
            core_devices.pair,
            self.ctx.workspace,
            device_id,
            code,
            self.interfaces(),
            on_done=done,
            on_error=failed,
        )

    def open_deploy(self) -> DeployDialog:
        """Pick an export and a paired device, then deploy."""
        exports = [e for e in reversed(self.exports) if e["status"] == "completed"]
        paired = [d for d in self.devices if d["paired"]]
        dialog = DeployDialog(exports, paired, self._selected, self._activate_default(), self)
        dialog.accepted.connect(lambda: self.deploy(dialog.request()))
        self.deploy_dialog = dialog
        dialog.open()
        return dialog

    def deploy(self, request: dict[str, Any]) -> None:
        """Upload an export to a device (resumable chunks, off the UI thread)."""
        self.status_label.setText(f"deploying {request['export']} …")

        def done(result: dict[str, Any]) -> None:
            state = "active" if result["activated"] else "staged"
            text = f"deployed {result['model']} to {result['device'][:12]} ({state})"
            fallback = result.get("fallback")
            if fallback:  # never silent: the device does not run it on what was wanted
                text += (
                    f" — WARNING: wanted {fallback.get('wanted')}, uses {fallback.get('using')}: "
                    f"{fallback.get('reason')}"
                )
            self.status_label.setText(text)
            self.ctx.changed.emit("devices")

        def failed(exc: BaseException) -> None:
            self.status_label.setText(error_text(exc))
            self.ctx.show_error(exc, self)

        self.ctx.run(
            core_devices.deploy,
            self.ctx.workspace,
            request["export"],
            request["device"],
            self.interfaces(),
            activate=bool(request["activate"]),
            on_done=done,
            on_error=failed,
        )

    def bench_selected(self) -> None:
        """Time the selected device's newest deployed export on it (20 runs)."""
        if self._selected is None:
            return
        device_id = self._selected

        def pick_and_bench(ctx: StudioContext) -> dict[str, Any]:
            deployments = core_devices.list_deployments(ctx.workspace, device_id)
            # a deploy, or an activate or rollback (which name the export serving after it)
            installed = [
                d for d in deployments if d["status"] in ("installed", "active") and d["export"]
            ]
            if not installed:
                raise core_devices.DeviceError(
                    "nothing deployed on this device yet; deploy an export first"
                )
            return _bench(ctx, str(installed[0]["export"]), device_id, self.interfaces())

        def done(_row: dict[str, Any]) -> None:
            self.load_device(device_id)

        self.ctx.run(pick_and_bench, self.ctx, on_done=done)

    def pull_usage(self) -> None:
        """Ask every paired device for its usage, then show it."""

        def done(rows: list[dict[str, Any]]) -> None:
            self._show_usage(rows)
            warned = [r for r in rows if r.get("warning")]
            self.status_label.setText(
                f"usage of {len(rows)} model(s)"
                + (f"; {len(warned)} device(s) did not answer" if warned else "")
            )

        self.ctx.run(
            core_devices.usage_report,
            self.ctx.workspace,
            pull=True,
            interfaces=self.interfaces(),
            on_done=done,
        )

    # --- inference test ---------------------------------------------------------------------------

    def run_inference(self) -> None:
        """Run the panel's image on its target; the boxes are drawn when it answers."""
        target = self.inference.target()
        image = self.inference.image_path
        if target is None or image is None:
            self.inference.result_label.setText("Pick an image and a target first.")
            return
        self.inference.run_button.setEnabled(False)
        self.inference.result_label.setText("running …")

        def done(result: dict[str, Any]) -> None:
            self.inference.run_button.setEnabled(True)
            self.last_result = result
            self.inference.show_result(result)

        def failed(exc: BaseException) -> None:
            self.inference.run_button.setEnabled(True)
            self.inference.result_label.setText(error_text(exc))
            self.ctx.show_error(exc, self)

        self.ctx.run(
            _infer,
            self.ctx,
            target,
            image,
            float(self.inference.conf_box.value()),
            self.interfaces(),
            on_done=done,
            on_error=failed,
        )
