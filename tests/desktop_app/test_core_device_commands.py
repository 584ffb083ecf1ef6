"""Desktop device commands against a real agent on 127.0.0.1: devices show, deployments,
usage (device x model table), and on-device benchmarks of an export."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from desktop_app.cli import main as outpost
from desktop_app.core import datasets, devices
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.devices import DeviceError
from desktop_app.core.exports import get_export
from desktop_app.core.models import Deployment, Device, DeviceBenchmark, UsageSample
from desktop_app.core.workspace import Workspace
from device_agent.client import AgentClient, AgentRejectedError
from device_agent.crashguard import CRASH_LOG, MARKS_FILE, CrashGuard, crash_line
from device_agent.pairing import issue_code
from device_agent.stats import UsageStats
from tests.device_agent.conftest import AgentThread
from tests.device_agent.desktop_helpers import record_device
from tests.fakes import make_image_bytes, make_package
from tests.records import record_export


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.open(tmp_path / "ws")
    yield workspace
    workspace.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    running = AgentThread(tmp_path / "agent").start()
    try:
        yield running
    finally:
        running.stop()


def _add_export(ws: Workspace, tmp_path: Path, export_id: str, version: str) -> Path:
    """An export row of model ``shapes`` with a real (fake-model) package."""
    package = make_package(tmp_path / "pkgs" / f"shapes-{version}.outpost.zip", version=version)
    return record_export(ws, package, export_id=export_id, version=version)


@pytest.fixture
def paired(ws: Workspace, agent: AgentThread, tmp_path: Path) -> tuple[str, Path]:
    """A paired device running export ``exp1`` (shapes v1); ``exp2`` (v2) is not deployed."""
    write_sample_dataset(tmp_path / "sample", count=4, size=64)
    datasets.import_yolo(ws, tmp_path / "sample", "shapes")
    package = _add_export(ws, tmp_path, "exp1", "1")
    _add_export(ws, tmp_path, "exp2", "2")
    device_id = record_device(ws, agent)
    devices.pair(ws, device_id, issue_code(agent.service.data_dir).code)
    _, client = devices.connect(ws, device_id)
    with client:
        client.upload_package(package)
    with ws.session() as s:
        for action, status in (("deploy", "installed"), ("rollback", "failed")):
            s.add(
                Deployment(
                    export_id="exp1",
                    device_id=device_id,
                    model_name="shapes",
                    status=status,
                    action=action,
                    details={"version": "1"},
                )
            )
            s.flush()
    return device_id, package


def _run(argv: list[str], ws: Workspace, capfd: pytest.CaptureFixture[str]) -> Any:
    assert outpost([*argv, "--workspace", str(ws.root), "--json"]) == 0, capfd.readouterr().err
    return json.loads(capfd.readouterr().out)


def test_devices_show(
    ws: Workspace, agent: AgentThread, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    device_id, _ = paired
    with ws.session() as s:  # seen long ago: the answer below refreshes it
        row = s.get(Device, device_id)
        assert row is not None
        row.last_seen = datetime(2020, 1, 1)
    detail = _run(["devices", "show", device_id[:6]], ws, capfd)
    assert (detail["id"], detail["paired"], detail["warning"]) == (device_id, True, None)
    with ws.session() as s:
        seen = s.get(Device, device_id).last_seen  # type: ignore[union-attr]
    assert not detail["last_seen"].startswith("2020") and seen.year > 2020
    assert detail["last_seen"] == devices._iso(seen)
    assert detail["cpu_count"] >= 1 and detail["ram_bytes"] > 0 and detail["os"]
    assert isinstance(detail["accelerators"], list)
    ort = next(r for r in detail["runtimes"] if r["key"] == "onnxruntime")
    assert "CPUExecutionProvider" in ort["available_providers"]
    assert [(m["name"], m["version"], m["runtime"]) for m in detail["models"]] == [
        ("shapes", "1", "onnxruntime")
    ]
    assert detail["last_usage"] == []

    assert abs(detail["clock_offset_s"]) < 5
    assert outpost(["devices", "show", device_id, "--workspace", str(ws.root)]) == 0
    text = capfd.readouterr().out
    assert "runtimes:" in text and "onnxruntime" in text and "shapes" in text
    assert "clock:" not in text

    # a device whose clock is 2 h 5 min behind (no NTP on the LAN): it still answers, and
    # `devices show` says so
    agent.service.replay_guard.clock = lambda: time.time() - 7500
    assert outpost(["devices", "show", device_id, "--workspace", str(ws.root)]) == 0
    captured = capfd.readouterr()
    assert "clock: 2 h 5 min behind this desktop's" in captured.out, captured.err

    agent.stop()  # off: the last known details, with a warning
    offline = devices.device_detail(ws, device_id)
    assert "cannot reach agent" in str(offline["warning"])
    assert [m["name"] for m in offline["models"]] == ["shapes"]


def test_devices_show_lists_the_runtime_crashes_the_device_remembers(
    ws: Workspace, agent: AgentThread, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """A crash the agent found at a start (its runtime died in a call of shapes 2) is shown
    by the desktop as the device's ``outpost-agent crashes`` lists it."""
    device_id, _ = paired
    data = agent.service.data_dir
    previous = CrashGuard(data)
    previous.watch_inferences()  # a process that died in a runtime call of shapes 2
    with previous.running("f" * 64, "shapes 2"):
        marks = (data / MARKS_FILE).read_bytes()
    (data / MARKS_FILE).write_bytes(marks)
    with open(data / CRASH_LOG, "a") as log:
        log.write(
            "Fatal Python error: Segmentation fault\n\n"
            f"Current thread 0x{threading.get_ident():016x} (most recent call first):\n"
        )
    assert "while it ran shapes 2 (inference)" in (CrashGuard(data).settle() or "")

    detail = _run(["devices", "show", device_id], ws, capfd)
    assert detail["not_loaded"] == {}
    assert [(c["what"], c["kind"], c["count"], c["held"]) for c in detail["crashes"]] == [
        ("shapes 2 (inference)", "inference", 1, False)
    ]
    assert outpost(["devices", "show", device_id, "--workspace", str(ws.root)]) == 0
    text = capfd.readouterr().out
    assert "runtime crashes (on the device: outpost-agent crashes):" in text
    assert (
        "shapes 2 (inference): Fatal Python error: Segmentation fault (not held: 1 crash in "
        "inferences; 2 within an hour hold it)" in text
    )


def test_a_devices_troubles_are_shown_printable_cut_and_bounded() -> None:
    """What a device says went wrong reaches a terminal and the Studio: no escape codes, no
    endless lists, and a crash time that is not a time does not stop the command."""
    shown = devices._problems(
        {
            "not_loaded": {f"m{i}": "why \x1b[31mred\x07 \x9b2J" + "x" * 5000 for i in range(100)},
            "crashes": [{"what": "m 1\x1b[2J", "reason": "Fatal", "state": "held", "count": True}]
            + [{"what": "m", "at": at} for at in (1e20, -1.0, float("nan"), float("inf"), True)],
        }
    )
    assert len(shown["not_loaded"]) == devices.MAX_SHOWN_NOT_LOADED
    why = shown["not_loaded"]["m0"]
    assert why.startswith("why [31mred 2J") and len(why) == 1000
    first, *odd = shown["crashes"]
    assert (first["what"], first["count"]) == ("m 1[2J", None)
    assert [c["at"] for c in odd] == [None] * 5
    assert crash_line({"what": "m", "at": 1e20}) == "?  m: ? (?)"
    assert crash_line({"what": "m", "at": float("nan")}).startswith("?  m")


def test_deployments_list_and_history(
    ws: Workspace, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    device_id, _ = paired
    latest = _run(["deployments", "list"], ws, capfd)
    assert [(r["model"], r["action"], r["status"]) for r in latest] == [
        ("shapes", "rollback", "failed")
    ]
    assert _run(["deployments", "list", "--device", device_id], ws, capfd) == latest
    history = _run(["deployments", "history", "--device", device_id], ws, capfd)
    assert [r["action"] for r in history] == ["rollback", "deploy"]
    assert history[1]["details"] == {"version": "1"} and history[1]["export"] == "exp1"
    assert _run(["deployments", "history", "--device", device_id, "--model", "x"], ws, capfd) == []


def test_usage_table_pulls_and_stores(
    ws: Workspace, agent: AgentThread, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    device_id, _ = paired
    assert _run(["usage"], ws, capfd) == []  # nothing pulled yet
    _, client = devices.connect(ws, device_id)
    with client:
        for _ in range(3):
            client.infer_model("shapes", make_image_bytes())
    rows = _run(["usage", "--pull"], ws, capfd)  # every paired device
    assert len(rows) == 1
    row = rows[0]
    assert (row["device"], row["model"], row["version"], row["runtime"]) == (
        device_id,
        "shapes",
        "1",
        "onnxruntime",
    )
    assert (row["requests"], row["errors"], row["throughput_rps"]) == (3, 0, 0.05)
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]

    agent.stop()  # stored rows still show without the device
    assert _run(["usage", "--no-pull", "--device", device_id], ws, capfd) == rows
    stale = devices.usage_report(ws, pull=True)
    assert "cannot reach agent" in str(stale[0]["warning"])
    assert outpost(["usage", "--workspace", str(ws.root)]) == 0
    assert "throughput_rps" in capfd.readouterr().out


def test_a_model_without_requests_has_no_latency_rather_than_zero(
    ws: Workspace, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    device_id, _ = paired
    (row,) = _run(["usage", "--pull"], ws, capfd)
    assert (row["model"], row["requests"]) == ("shapes", 0)
    assert (row["p50_ms"], row["p90_ms"], row["p99_ms"]) == (None, None, None)
    (shown,) = devices.device_detail(ws, device_id)["last_usage"]
    assert shown["p50_ms"] is None
    assert outpost(["usage", "--workspace", str(ws.root)]) == 0
    table = capfd.readouterr().out.splitlines()
    header, line = table[0].split(), table[1].split()
    assert "p50_ms" in header and line.count("0.000") == 1  # its throughput; latency blank


def test_usage_survives_a_deactivated_model_and_an_agent_restart(
    ws: Workspace, agent: AgentThread, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """A model that served and was then deactivated is still pulled (its format is gone on
    the device); counts pulled before an agent restart are carried into the totals."""
    device_id, _ = paired
    _, client = devices.connect(ws, device_id)
    with client:
        for _ in range(3):
            client.infer_model("shapes", make_image_bytes())
        with pytest.raises(AgentRejectedError):
            client.infer_model("shapes", b"not an image")
        client.deactivate("shapes")
    (row,) = _run(["usage", "--pull"], ws, capfd)
    assert (row["model"], row["format"], row["requests"], row["errors"]) == ("shapes", "-", 4, 1)
    assert row["p50_ms"] is not None
    # a restart: the agent counts from 0 again, since a new start time
    agent.service.stats = UsageStats(clock=lambda: time.time() + 3600)
    (row,) = _run(["usage", "--pull"], ws, capfd)
    assert (row["requests"], row["errors"]) == (4, 1)  # carried, none served since
    assert row["p50_ms"] is None  # no latency measured in this run
    _, client = devices.connect(ws, device_id)
    with client:
        client.activate("shapes")
        with pytest.raises(AgentRejectedError):
            client.infer_model("shapes", b"still not an image")
    for _ in range(2):  # pulls after the restart carry once, not each time
        (row,) = _run(["usage", "--pull"], ws, capfd)
        assert (row["requests"], row["errors"]) == (5, 2)
        assert row["p50_ms"] is None  # the one request of this run failed: no latency


def test_usage_counts_follow_agent_runs_not_their_start_times(
    ws: Workspace, paired: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs started in the same second (or from the same saved clock) are two runs; an
    answer of an earlier run that arrives after a newer one's is not counted again."""
    device_id, _ = paired
    answers: list[dict[str, Any]] = []

    def stats(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return answers.pop(0)

    monkeypatch.setattr(AgentClient, "stats", stats)
    latency = {"p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0}
    totals = []
    for run, since, requests in (
        ("r1", "2026-01-01T00:00:00+00:00", 10),
        ("r2", "2026-01-01T00:00:00+00:00", 3),  # restarted within the same second
        ("r3", "2026-01-01T00:05:00+00:00", 5),
        ("r2", "2026-01-01T00:00:00+00:00", 4),  # a late answer of the run before
        ("r3", "2026-01-01T00:05:00+00:00", 6),
    ):
        model = {"format": "onnx", "runtime": "onnxruntime", "requests": requests, "errors": 0}
        answers.append(
            {"since": since, "run": run, "models": {"shapes": {**model, "latency_ms": latency}}}
        )
        devices.pull_usage(ws, device_id)
        (row,) = devices.usage_report(ws, device_id)
        totals.append(row["requests"])
    assert totals == [10, 13, 18, 18, 19]


def test_usage_history_is_bounded_per_device_and_model(
    ws: Workspace, paired: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    device_id, _ = paired
    monkeypatch.setattr(devices, "USAGE_HISTORY", 3)
    model = {"format": "onnx", "runtime": "onnxruntime", "errors": 0, "latency_ms": {}}
    pulls = iter(range(1, 6))

    def stats(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        n = next(pulls)
        models = {"shapes": {**model, "requests": n}}
        if n <= 2:  # a second model, pulled twice only: its two samples stay
            models["cars"] = {**model, "requests": 10 * n}
        return {"since": "2026-01-01T00:00:00+00:00", "run": "r1", "models": models}

    monkeypatch.setattr(AgentClient, "stats", stats)
    for _ in range(5):
        devices.pull_usage(ws, device_id)
    with ws.session() as s:
        kept = s.scalars(select(UsageSample).order_by(UsageSample.id)).all()
        assert [(k.model_name, k.requests) for k in kept] == [
            ("cars", 10),
            ("cars", 20),
            ("shapes", 3),
            ("shapes", 4),
            ("shapes", 5),
        ]
        latest = {u.model_name: u.requests for u in devices._latest_usage(s, device_id)}
        assert latest == {"shapes": 5, "cars": 20}


def test_usage_of_a_device_that_is_off_shows_what_was_pulled_and_exits_1(
    ws: Workspace, agent: AgentThread, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    device_id, _ = paired
    assert outpost(["usage", "--workspace", str(ws.root)]) == 0
    assert "no usage pulled yet: pair a device, then outpost usage --pull" in capfd.readouterr().err
    _run(["usage", "--pull"], ws, capfd)
    agent.stop()
    assert outpost(["usage", "--device", device_id, "--workspace", str(ws.root)]) == 1
    out, err = capfd.readouterr()
    assert "shapes" in out  # the last pulled figures
    assert err.startswith("warning: cannot reach agent") and "its last pulled usage is shown" in err
    assert "if it moved to another address or port, find it again" in err


def test_bench_records_a_device_benchmark(
    ws: Workspace, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    device_id, _ = paired
    table = _run(["bench", "exp1", "--device", device_id, "--runs", "4"], ws, capfd)
    assert len(table) == 1
    row = table[0]
    assert (row["device"], row["export"], row["model"], row["runs"]) == (
        device_id,
        "exp1",
        "shapes",
        4,
    )
    assert (row["format"], row["runtime"], row["input"]) == (
        "onnx",
        "onnxruntime",
        "synthetic 64x64",
    )
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    with ws.session() as s:
        stored = s.query(DeviceBenchmark).one()
        assert stored.details["warmup"] == 3 and stored.details["version"] == "1"

    assert _run(["bench", "exp1"], ws, capfd) == table  # the table, without a new run
    with pytest.raises(devices.DeviceError, match="deploy it first"):
        devices.bench_export(ws, "exp2", device_id, runs=2)
    with pytest.raises(devices.DeviceError, match="--runs must be from 1"):
        devices.bench_export(ws, "exp1", device_id, runs=0)
    assert _run(["bench", "exp2"], ws, capfd) == []


def test_a_deploy_that_fails_midway_is_recorded_as_failed(
    ws: Workspace, paired: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only a refusal: a push that breaks off for another reason (here the package is gone
    once the device answered) is in the history as failed, with its reason."""
    device_id, _ = paired
    exp = get_export(ws, "exp2")
    package = ws.resolve(str(exp.package_path))
    real_connect = devices.connect

    def connect_then_lose_the_package(*args: Any, **kwargs: Any) -> Any:
        connected = real_connect(*args, **kwargs)
        package.unlink()
        return connected

    monkeypatch.setattr(devices, "connect", connect_then_lose_the_package)
    with pytest.raises(DeviceError, match="deploying export exp2 to device .* failed: cannot read"):
        devices.deploy(ws, "exp2", device_id)
    with ws.session() as s:
        last = s.scalars(select(Deployment).order_by(Deployment.id.desc())).first()
        assert last is not None
        assert (last.action, last.status, last.export_id) == ("deploy", "failed", "exp2")
        assert "cannot read" in str(last.message)


def test_an_action_names_the_export_the_device_serves_after_it(
    ws: Workspace, paired: tuple[str, Path], tmp_path: Path
) -> None:
    """A package's version is its export's id: after a rollback or an activate, the history
    names the export now serving (not the last one deployed), with its runtime."""
    device_id, _ = paired
    for export_id in ("expa", "expb"):
        _add_export(ws, tmp_path, export_id, export_id)
        devices.deploy(ws, export_id, device_id)
    devices.model_action(ws, device_id, "shapes", "rollback")

    def last() -> Deployment:
        with ws.session() as s:
            row = s.scalars(select(Deployment).order_by(Deployment.id.desc())).first()
            assert row is not None
            s.expunge(row)
            return row

    row = last()
    assert (row.action, row.status, row.export_id) == ("rollback", "active", "expa")
    assert row.details["version"] == "expa" and row.details["runtime"] == "onnxruntime"
    assert row.details["format"] == "onnx"
    devices.model_action(ws, device_id, "shapes", "activate", version="expb")
    assert (last().action, last().export_id) == ("activate", "expb")
    with pytest.raises(DeviceError):
        devices.model_action(ws, device_id, "shapes", "activate", version="expa-gone")
    assert (last().status, last().export_id) == ("failed", "expb")  # the last one deployed
    # expa is kept on the device for a rollback: benching it needs no second upload
    with pytest.raises(DeviceError, match="it is on the device: outpost devices activate .* expa"):
        devices.bench_export(ws, "expa", device_id, runs=2)


def test_deploy_says_what_runs_it_and_bench_of_a_deactivated_model_says_activate(
    ws: Workspace, paired: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    device_id, _ = paired
    assert outpost(["deploy", "exp2", "--device", device_id, "--workspace", str(ws.root)]) == 0
    out = capfd.readouterr().out.strip()
    assert (
        out == f"deployed shapes (exp2) to {device_id}: onnx on onnxruntime (CPUExecutionProvider)"
    )
    devices.model_action(ws, device_id, "shapes", "deactivate")
    with pytest.raises(DeviceError) as err:
        devices.bench_export(ws, "exp2", device_id, runs=2)
    assert f"it is on the device: outpost devices activate {device_id} shapes --version 2" in str(
        err.value
    )


def test_a_version_names_its_export_only_when_the_export_is_of_that_model(
    ws: Workspace, paired: tuple[str, Path], tmp_path: Path
) -> None:
    device_id, _ = paired
    package = make_package(tmp_path / "pkgs" / "cars-1.outpost.zip", name="cars")
    record_export(ws, package, export_id="carsexp", version="carsexp", model_name="cars")
    assert devices._export_for(ws, device_id, "cars", "carsexp") == "carsexp"
    # a shapes version that happens to read as the cars export's id is not that export
    assert devices._export_for(ws, device_id, "shapes", "carsexp") == "exp1"


def test_a_deploy_cut_off_by_ctrl_c_is_recorded_and_says_what_to_do(
    ws: Workspace,
    paired: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    device_id, _ = paired
    real_connect = devices.connect

    def connect_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        dev, client = real_connect(*args, **kwargs)

        def interrupted(*_args: Any, **_kwargs: Any) -> Any:
            raise KeyboardInterrupt

        client.upload_package = interrupted
        return dev, client

    monkeypatch.setattr(devices, "connect", connect_then_ctrl_c)
    code = outpost(["deploy", "exp2", "--device", device_id, "--workspace", str(ws.root)])
    assert code == 130
    err = capfd.readouterr().err.strip()
    assert err.startswith("interrupted; the device serves what it did before")
    assert f"outpost devices show {device_id}" in err and "\n" not in err
    with ws.session() as s:
        row = s.scalars(select(Deployment).order_by(Deployment.id.desc())).first()
        assert row is not None
        assert (row.action, row.status, row.export_id) == ("deploy", "failed", "exp2")
        assert row.message == "interrupted on the desktop"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_push_shows_its_progress_on_a_terminal_only() -> None:
    from desktop_app.cli import TransferProgress

    now = {"t": 0.0}
    terminal = _Terminal()
    progress = TransferProgress(terminal, "sent", clock=lambda: now["t"])
    assert progress.shown
    mib = 1 << 20
    progress(0, 40 * mib)
    progress(mib, 40 * mib)  # within half a second: not redrawn
    now["t"] = 0.6
    progress(10 * mib, 40 * mib)
    progress(40 * mib, 40 * mib)  # the end is always drawn
    progress.end()
    assert terminal.getvalue() == (
        "\rsent 0.0 of 40.0 MiB (0 %)\rsent 10.0 of 40.0 MiB (25 %)"
        "\rsent 40.0 of 40.0 MiB (100 %)\n"
    )
    log = io.StringIO()  # a log file or a pipe: nothing
    quiet = TransferProgress(log, "sent")
    assert not quiet.shown
    quiet.end()
    assert log.getvalue() == ""
