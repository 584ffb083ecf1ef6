"""The exporter registry: built-in formats registered explicitly, third parties by entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

from exporters.base import Capability, Exporter, ExportError
from exporters.formats.coreml import CoreMlExporter
from exporters.formats.onnx import OnnxExporter
from exporters.formats.openvino import OpenVinoExporter
from exporters.formats.tensorrt import OnnxForTensorRtExporter, TensorRtExporter
from exporters.formats.tflite import TfliteExporter
from exporters.formats.torchscript import TorchScriptExporter

ENTRY_POINT_GROUP = "outpost.exporters"


class ExporterRegistry:
    def __init__(self) -> None:
        self._exporters: dict[str, Exporter] = {}

    def register(self, exporter: Exporter) -> None:
        key = exporter.capability.key
        if key in self._exporters:
            raise ValueError(f"exporter {key!r} is already registered")
        self._exporters[key] = exporter

    def get(self, key: str) -> Exporter:
        try:
            return self._exporters[key]
        except KeyError:
            raise ExportError(
                f"unknown export format {key!r}; choose one of {', '.join(self._exporters)}"
            ) from None

    def capabilities(self) -> list[Capability]:
        return [e.capability for e in self._exporters.values()]


def default_registry() -> ExporterRegistry:
    registry = ExporterRegistry()
    registry.register(OnnxExporter())
    registry.register(TorchScriptExporter())
    registry.register(OpenVinoExporter())
    registry.register(TfliteExporter())
    registry.register(CoreMlExporter())
    registry.register(TensorRtExporter())
    registry.register(OnnxForTensorRtExporter())
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        registry.register(ep.load()())
    return registry
