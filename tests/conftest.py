"""Test-wide settings: offscreen Qt, the offline recipe, and no mDNS off loopback."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
