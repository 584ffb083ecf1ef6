"""Ultralytics YOLO trainer, run as a child process: ``python -m trainers.ultralytics train --spec F``."""

FRAMEWORK = "ultralytics"
