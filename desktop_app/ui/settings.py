"""Studio settings: workspace location, discovery interfaces, device defaults.

Stored as JSON in the user's config dir (``<user config dir>/outpost/studio.json``;
``OUTPOST_STUDIO_CONFIG`` names another file), written under a temp name and renamed.
Discovery interfaces: an empty list means every interface (the default for real users);
otherwise only the listed addresses are browsed (e.g. ``["127.0.0.1"]``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QWidget,
)

from runtimes.fileio import atomic_write_text

CONFIG_ENV = "OUTPOST_STUDIO_CONFIG"
RUNTIME_CHOICES = ("auto", "onnxruntime", "openvino", "tflite", "coreml", "torchscript")


def settings_path() -> Path:
    """Where the settings live: ``$OUTPOST_STUDIO_CONFIG`` or the user config dir."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("outpost", appauthor=False)) / "studio.json"


@dataclass
class StudioSettings:
    """What the Studio remembers between starts."""

    workspace: str | None = None
    recent_workspaces: list[str] = field(default_factory=list)
    discovery_interfaces: list[str] = field(default_factory=list)  # empty: all interfaces
    activate_after_deploy: bool = True
    runtime_preference: str = "auto"

    @classmethod
    def load(cls, path: Path | None = None) -> StudioSettings:
        """Read the settings; missing or unreadable files give the defaults."""
        p = path or settings_path()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        out = cls()
        if isinstance(data.get("workspace"), str):
            out.workspace = data["workspace"]
        for key in ("recent_workspaces", "discovery_interfaces"):
            value = data.get(key)
            if isinstance(value, list):
                setattr(out, key, [str(v) for v in value])
        if isinstance(data.get("activate_after_deploy"), bool):
            out.activate_after_deploy = data["activate_after_deploy"]
        if data.get("runtime_preference") in RUNTIME_CHOICES:
            out.runtime_preference = str(data["runtime_preference"])
        return out

    def save(self, path: Path | None = None) -> Path:
        """Write the settings (temp name, fsync, rename)."""
        p = path or settings_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps(asdict(self), indent=2) + "\n")
        return p

    def remember_workspace(self, root: Path | str) -> None:
        """Make ``root`` the current workspace and the first of the recent ones."""
        text = str(Path(root).expanduser().resolve())
        self.workspace = text
        self.recent_workspaces = [text, *[r for r in self.recent_workspaces if r != text]][:10]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_interfaces() -> list[str]:
    """The IPv4 addresses of this machine's interfaces (loopback first)."""
    from PySide6.QtNetwork import QAbstractSocket, QNetworkInterface

    out: list[str] = []
    for iface in QNetworkInterface.allInterfaces():
        for entry in iface.addressEntries():
            ip = entry.ip()
            if ip.protocol() == QAbstractSocket.NetworkLayerProtocol.IPv4Protocol:
                out.append(ip.toString())
    return sorted(set(out), key=lambda a: (not a.startswith("127."), a))


class SettingsDialog(QDialog):
    """Edit :class:`StudioSettings`; OK saves them."""

    def __init__(
        self,
        settings: StudioSettings,
        parent: QWidget | None = None,
        path: Path | None = None,
        interfaces: list[str] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        self.path = path
        self.workspace_edit = QLineEdit(settings.workspace or "")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.workspace_edit, 1)
        row.addWidget(browse)
        self.all_interfaces = QCheckBox("Every network interface")
        self.all_interfaces.setChecked(not settings.discovery_interfaces)
        self.interfaces = QListWidget()
        known = interfaces if interfaces is not None else local_interfaces()
        for addr in sorted(
            set(known) | set(settings.discovery_interfaces),
            key=lambda a: (not a.startswith("127."), a),
        ):
            item = QListWidgetItem(addr)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(
                Qt.CheckState.Checked
                if addr in settings.discovery_interfaces
                else Qt.CheckState.Unchecked
            )
            self.interfaces.addItem(item)
        self.interfaces.setEnabled(not self.all_interfaces.isChecked())
        self.all_interfaces.toggled.connect(lambda on: self.interfaces.setEnabled(not on))
        self.activate = QCheckBox("Activate a model on the device after deploying it")
        self.activate.setChecked(settings.activate_after_deploy)
        self.runtime = QComboBox()
        self.runtime.addItems(list(RUNTIME_CHOICES))
        self.runtime.setCurrentText(settings.runtime_preference)
        self.note = QLabel("A new workspace location takes effect when it is opened.")
        self.note.setWordWrap(True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Workspace", row)
        form.addRow("", self.note)
        form.addRow("Device discovery", self.all_interfaces)
        form.addRow("", self.interfaces)
        form.addRow("Deploy", self.activate)
        form.addRow("Preferred runtime", self.runtime)
        form.addRow(buttons)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Workspace folder", self.workspace_edit.text()
        )
        if path:
            self.workspace_edit.setText(path)

    def values(self) -> StudioSettings:
        """The settings as edited (not saved)."""
        chosen = []
        if not self.all_interfaces.isChecked():
            for i in range(self.interfaces.count()):
                item = self.interfaces.item(i)
                if item.checkState() == Qt.CheckState.Checked:
                    chosen.append(item.text())
        ws = self.workspace_edit.text().strip() or None
        return StudioSettings(
            workspace=ws,
            recent_workspaces=list(self.settings.recent_workspaces),
            discovery_interfaces=chosen,
            activate_after_deploy=self.activate.isChecked(),
            runtime_preference=self.runtime.currentText(),
        )

    def accept(self) -> None:
        new = self.values()
        self.settings.workspace = new.workspace
        self.settings.discovery_interfaces = new.discovery_interfaces
        self.settings.activate_after_deploy = new.activate_after_deploy
        self.settings.runtime_preference = new.runtime_preference
        self.settings.save(self.path)
        super().accept()
