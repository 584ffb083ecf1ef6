"""Isolated toolchain environments: missing-toolchain errors, set-up, the child-process call,
and the refusal paths of the formats that need a toolchain or hardware absent here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from exporters import toolenv
from exporters.base import ExportError, ExportRequest, try_export
from exporters.formats.coreml import CoreMlExporter, parity_not_run, zip_mlpackage
from exporters.formats.tensorrt import NEEDS_MESSAGE, TensorRtExporter, tensorrt_available
from exporters.formats.tflite import TfliteExporter
from exporters.registry import default_registry
from exporters.toolenv import Toolchain, ToolEnv


@pytest.fixture
def env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "toolenvs"
    monkeypatch.setenv(toolenv.ENV_VAR, str(root))
    return root


def _request(tmp_path: Path, precision: str = "fp32", task: str = "detect") -> ExportRequest:
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"not used: the toolchain check comes first")
    return ExportRequest(checkpoint, "ultralytics", task, 64, tmp_path / "out", precision)


def test_root_follows_the_override(env_root: Path) -> None:
    assert toolenv.toolenv_root() == env_root
    assert ToolEnv.for_name("litert").path == env_root / "litert"


def test_unknown_toolchain_is_named() -> None:
    with pytest.raises(
        ExportError, match="unknown export toolchain 'tensorflow'; choose one of litert, coreml"
    ):
        ToolEnv.for_name("tensorflow")


@pytest.mark.parametrize(
    ("exporter", "message"),
    [
        (
            TfliteExporter(),
            "tflite export needs its toolchain; run `outpost export setup litert` (installs ~1 GB once)",
        ),
        (
            CoreMlExporter(),
            "coreml export needs its toolchain; run `outpost export setup coreml` (installs ~60 MB once)",
        ),
    ],
)
def test_missing_toolchain_is_one_clear_error_and_writes_nothing(
    exporter: Any, message: str, env_root: Path, tmp_path: Path
) -> None:
    request = _request(tmp_path)
    with pytest.raises(ExportError) as err:
        try_export(exporter, request)
    assert str(err.value) == message
    assert "\n" not in str(err.value)
    assert not request.out_dir.exists()
    assert not env_root.exists()


def test_an_env_without_its_record_is_not_used(env_root: Path, tmp_path: Path) -> None:
    python = ToolEnv.for_name("litert").python
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")  # an interrupted set-up: the record is written last
    env = ToolEnv.for_name("litert")
    assert not env.exists() and env.record() is None
    with pytest.raises(ExportError, match="run `outpost export setup litert`"):
        env.require("tflite")


def test_tensorrt_refuses_without_gpu_and_tensorrt(tmp_path: Path) -> None:
    if tensorrt_available():
        pytest.skip("tensorrt is installed here; the refusal path is for machines without it")
    request = _request(tmp_path)
    with pytest.raises(ExportError) as err:
        try_export(TensorRtExporter(), request)
    assert str(err.value) == NEEDS_MESSAGE
    assert "--for-tensorrt" in str(err.value)
    assert not request.out_dir.exists()


def test_capabilities_list_the_new_formats() -> None:
    caps = {c.key: c for c in default_registry().capabilities()}
    assert caps["tflite"].runtime == "litert" and "int8" in caps["tflite"].precisions
    assert "macOS" in caps["coreml"].notes and caps["coreml"].suffix == ".mlpackage"
    assert caps["tensorrt"].needs[-1] == "tensorrt"
    assert caps["onnx-tensorrt"].runtime == "onnxruntime"
    assert toolenv.FORMAT_TOOLCHAINS == {"tflite": "litert", "coreml": "coreml"}


def test_coreml_parity_is_marked_not_run() -> None:
    reason = parity_not_run({"parity": {"status": "not_run", "reason": "macOS only"}})
    assert reason == "macOS only"
    assert parity_not_run({"validation": {"passed": True}}) is None


def test_mlpackage_ships_as_one_zip(tmp_path: Path) -> None:
    folder = tmp_path / "x.mlpackage"
    (folder / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (folder / "Manifest.json").write_text("{}")
    (folder / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x01\x02")
    archive = tmp_path / "model.mlpackage.zip"
    zip_mlpackage(folder, archive)
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == [
            "model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
            "model.mlpackage/Manifest.json",
        ]
    assert not archive.with_name(archive.name + ".tmp").exists()


@pytest.fixture
def tiny_toolchain(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A toolchain whose one module is in the standard library, and a pip that installs
    nothing (the package index is the one boundary faked): the venv, its layering over this
    environment, the import check, the record and the child call are all real."""
    spec = Toolchain(
        name="tiny",
        title="Tiny",
        packages=("tiny-package>=1.0",),
        modules=("json",),
        approx_size="~0 MB",
        purpose="tests",
    )
    monkeypatch.setitem(toolenv.TOOLCHAINS, "tiny", spec)
    calls: list[list[str]] = []

    def pip(python: Path, args: list[str], say: Any) -> None:
        assert python.exists()
        calls.append(args)

    monkeypatch.setattr(toolenv, "_pip", pip)
    return calls


def test_setup_builds_a_layered_env_and_runs_children(
    tiny_toolchain: list[list[str]], env_root: Path
) -> None:
    env = ToolEnv.for_name("tiny")
    said: list[str] = []
    record = env.setup(echo=said.append)
    assert tiny_toolchain == [["install", "--no-input", "tiny-package>=1.0"]]
    assert env.exists() and record["toolchain"] == "tiny"
    assert isinstance(record["size_mb"], float) and record["setup_seconds"] >= 0
    stored = json.loads(env.record_file.read_text())
    assert stored["packages"]["numpy"]  # the main environment's packages are visible
    assert "tiny-package" in said[0] and "ready" in said[-1]
    assert [p.name for p in env_root.iterdir()] == ["tiny"]  # no staging folder left
    # The child runs in the toolenv's interpreter and sees the project and the main env.
    out = env.call(
        "exporters.toolenv:probe_child", {"modules": ["numpy", "exporters.base"]}, what="tiny"
    )
    assert out["prefix"] == str(env.path)
    assert out["prefix"] != sys.prefix
    assert set(out["modules"]) == {"numpy", "exporters.base"}
    # A failing child becomes one error line carrying the child's own message.
    with pytest.raises(
        ExportError, match="tiny export failed: ModuleNotFoundError: No module named 'nope_xyz'"
    ):
        env.call("exporters.toolenv:probe_child", {"modules": ["nope_xyz"]}, what="tiny")
    # Set-up again reuses the env (and checks it still imports).
    assert env.setup()["created_at"] == record["created_at"]
    assert env.status()["ready"] is True


def test_failed_setup_leaves_nothing(
    tiny_toolchain: list[list[str]], env_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pip(python: Path, args: list[str], say: Any) -> None:
        raise ExportError("pip could not install the toolchain: no matching distribution")

    monkeypatch.setattr(toolenv, "_pip", pip)
    env = ToolEnv.for_name("tiny")
    with pytest.raises(ExportError, match="pip could not install"):
        env.setup()
    assert list(env_root.iterdir()) == []
    assert not env.exists()


def test_cli_lists_toolchains(env_root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from desktop_app.cli import main

    code = main(["--json", "export", "setup"])
    rows = json.loads(capfd.readouterr().out)
    assert code in (0, None)
    assert {r["toolchain"]: r["ready"] for r in rows} == {"litert": False, "coreml": False}
    assert all(r["path"].startswith(str(env_root)) for r in rows)


def test_cli_capabilities_show_toolchains(capfd: pytest.CaptureFixture[str]) -> None:
    from desktop_app.cli import main

    main(["--json", "export", "--capabilities"])
    caps = {c["key"]: c for c in json.loads(capfd.readouterr().out)}
    assert caps["tflite"]["toolchain"] == "litert"
    assert caps["coreml"]["toolchain"] == "coreml"
    assert "toolchain" not in caps["onnx"]
