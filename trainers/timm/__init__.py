"""timm image classification trainer, run as a child process: ``python -m trainers.timm train --spec F``."""

FRAMEWORK = "timm"
