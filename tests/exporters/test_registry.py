"""The exporter registry: the formats, their capability records, and clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.base import (
    Capability,
    ExportArtifact,
    Exporter,
    ExportError,
    ExportRequest,
    try_export,
)
from exporters.registry import default_registry


def test_registry_lists_onnx_torchscript_openvino() -> None:
    caps = {c.key: c for c in default_registry().capabilities()}
    assert {"onnx", "torchscript", "openvino"} <= set(caps)
    assert caps["openvino"].precisions == ("fp32", "fp16", "int8")
    assert caps["openvino"].runtime == "openvino" and "openvino" in caps["openvino"].needs
    assert caps["openvino"].extra == "openvino"
    assert caps["torchscript"].runtime == "torchscript"


def test_unknown_format_names_the_choices() -> None:
    with pytest.raises(ExportError, match="unknown export format 'tflitex'.*torchscript"):
        default_registry().get("tflitex")


class _NeedsMissing(Exporter):
    capability = Capability(
        key="fake",
        title="Fake",
        frameworks=("ultralytics",),
        tasks=("detect",),
        precisions=("fp32",),
        runtime="none",
        suffix=".fake",
        needs=("outpost_no_such_toolchain",),
        extra="fake",
    )

    def export(self, request: ExportRequest) -> ExportArtifact:  # pragma: no cover
        raise AssertionError("must not run")


def test_absent_toolchain_fails_before_any_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"x")
    out = tmp_path / "build"
    request = ExportRequest(ckpt, "ultralytics", "detect", 64, out)
    with pytest.raises(
        ExportError, match=r"fake export needs outpost_no_such_toolchain.*outpost\[fake\]"
    ):
        try_export(_NeedsMissing(), request)
    assert not out.exists()


def test_unsupported_precision_is_refused(tmp_path: Path) -> None:
    exporter = default_registry().get("torchscript")
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ExportError, match="no int8 precision"):
        try_export(
            exporter, ExportRequest(ckpt, "ultralytics", "detect", 64, tmp_path / "o", "int8")
        )
