"""The job protocol: spec loading with environment overrides, events, exit codes."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.protocol import (
    EXIT_FAILURE,
    PROTOCOL_VERSION,
    EventWriter,
    ProtocolError,
    ReportingError,
    SpecError,
    encode_event,
    load_spec,
    parse_event,
)

BASE = {"model": "yolo11n.yaml", "data": "/d/data.yaml", "run_dir": "/r", "config_dir": "/c"}


def _spec(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({**BASE, **fields}))
    return path


def test_load_spec_defaults(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path), env={})
    assert spec.v == PROTOCOL_VERSION and spec.epochs == 10 and spec.device == "auto"


def test_env_overrides_spec(tmp_path: Path) -> None:
    env = {"OUTPOST_JOB_EPOCHS": "3", "OUTPOST_JOB_DEVICE": "cpu", "OUTPOST_JOB_PLOTS": "true"}
    spec = load_spec(_spec(tmp_path, epochs=50), env=env)
    assert (spec.epochs, spec.device, spec.plots) == (3, "cpu", True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"epochs": 0}, "'epochs'"),
        ({"imgsz": 10}, "'imgsz'"),
        ({"unknown_key": 1}, "'unknown_key'"),
        ({"v": 7}, "version 7"),
    ],
)
def test_bad_spec_names_the_field(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(_spec(tmp_path, **fields), env={})


def test_missing_and_malformed_spec(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.json", env={})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(bad, env={})


def test_event_roundtrip_and_non_finite_values() -> None:
    line = encode_event("epoch_end", epoch=2, metrics={"a": 1.5, "b": math.nan, "c": math.inf})
    assert "\n" not in line
    event = parse_event(line)
    assert event == {
        "v": 1,
        "event": "epoch_end",
        "epoch": 2,
        "metrics": {"a": 1.5, "b": None, "c": None},
    }


@pytest.mark.parametrize("line", ["hello", "[1, 2]", '{"v": 1}', '{"v": 9, "event": "x"}'])
def test_parse_event_rejects_non_events(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_event(line)


def test_event_writer_flushes_and_reports_failure() -> None:
    buf = io.StringIO()
    EventWriter(buf).emit("log", message="hi")
    assert json.loads(buf.getvalue()) == {"v": 1, "event": "log", "message": "hi"}
    closed = io.StringIO()
    closed.close()
    with pytest.raises(ReportingError):
        EventWriter(closed).emit("log", message="x")


def test_child_reports_bad_spec_as_event_and_exit_1(tmp_path: Path) -> None:
    spec = _spec(tmp_path, epochs=-1)
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.ultralytics", "train", "--spec", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_FAILURE
    events = [parse_event(line) for line in proc.stdout.splitlines() if line.strip()]
    assert events[-1]["event"] == "error" and "epochs" in events[-1]["message"]
