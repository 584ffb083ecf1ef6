"""One process at a time on a data folder, offline installs, and storage that refuses writes.

A second agent on a folder another serves from is refused (it would delete the first's
uploads and rename its model folders); so is ``install-package`` beside a running agent (the
agent would keep serving what it loaded while the command said "installed"). A disk that
fills during an install answers 507 with what to do, on the HTTP API and on the command line.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from device_agent.cli import main
from device_agent.client import AgentRejectedError
from device_agent.errors import StorageFullError
from device_agent.lock import DataDirBusyError, DataDirLock
from device_agent.store import ModelStore
from runtimes.package import PackageReader
from tests.device_agent.conftest import AgentThread
from tests.fakes import make_package

AGENT = [sys.executable, "-m", "device_agent"]


def _serve(data_dir: Path) -> subprocess.Popen[str]:
    """``outpost-agent serve`` on loopback, without mDNS; returns once it says it is ready."""
    proc = subprocess.Popen(
        [*AGENT, "serve", "--interface", "127.0.0.1", "--port", "0", "--no-mdns"]
        + ["--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert json.loads(line)["event"] == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def test_a_second_agent_on_the_same_folder_is_refused_and_starts_once_it_is_free(
    tmp_path: Path,
) -> None:
    """In one process or two: the refusal names the holder's pid and URL and what to do;
    nothing the first agent holds is touched; the lock goes with the first agent."""
    data_dir = tmp_path / "agent"
    first = AgentThread(data_dir).start()
    upload = data_dir / "tmp" / "upload-inflight"
    upload.parent.mkdir(exist_ok=True)
    upload.write_bytes(b"half a package")  # what a second start would have swept away
    second = AgentThread(data_dir)
    try:
        second.thread.start()
        with pytest.raises(DataDirBusyError) as busy:
            asyncio.run_coroutine_threadsafe(second.service.async_start(), second.loop).result(60)
        message = str(busy.value)
        assert f"pid {os.getpid()}" in message and first.url in message
        assert "stop it first, or give this one its own --data-dir" in message
        assert upload.exists()
    finally:
        first.stop()
    try:
        asyncio.run_coroutine_threadsafe(second.service.async_start(), second.loop).result(60)
        assert second.service.port
    finally:
        second.stop()


def test_serve_on_a_folder_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    first = _serve(data_dir)
    try:
        done = subprocess.run(
            [*AGENT, "serve", "--interface", "127.0.0.1", "--port", "0", "--no-mdns"]
            + ["--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1 and done.stdout == ""
        lines = done.stderr.strip().splitlines()
        # a start that failed says why and nothing else (no "agent ... stopped" first)
        assert lines == [
            f"outpost-agent: another agent (pid {first.pid}) is serving from {data_dir} at "
            + lines[0].split(" at ", 1)[1]
        ]
        assert "stop it first" in lines[0]
        assert first.poll() is None
    finally:
        _stop(first)


def test_install_package_beside_a_running_agent_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    first = _serve(data_dir)
    try:
        done = subprocess.run(
            [*AGENT, "install-package", str(package), "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.count("\n") == 1
        assert f"an agent (pid {first.pid}) is serving from {data_dir}" in done.stderr
        assert "outpost deploy EXPORT --device ID" in done.stderr
        assert not (data_dir / "models" / "shapes").exists()
    finally:
        _stop(first)
    # once the agent has stopped, the same command installs, and the agent serves it
    done = subprocess.run(
        [*AGENT, "install-package", str(package), "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "shapes"
    again = _serve(data_dir)
    _stop(again)


def test_an_agent_waits_its_turn_while_an_install_holds_the_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    with DataDirLock(data_dir, "install-package"):
        agent = AgentThread(data_dir)
        agent.thread.start()
        try:
            with pytest.raises(DataDirBusyError, match="install-package .* is installing into"):
                asyncio.run_coroutine_threadsafe(agent.service.async_start(), agent.loop).result(60)
        finally:
            agent.stop()


def test_install_package_prints_its_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain text keeps what --json says under "warnings" (here: staging the version that is
    already active stages nothing)."""
    data_dir = tmp_path / "agent"
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    assert main(["install-package", str(package), "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert main(["install-package", str(package), "--data-dir", str(data_dir), "--inactive"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "installed shapes 1 (onnx, staged)"
    assert any(
        line.startswith("  warning: ") and "already the active version; nothing to stage" in line
        for line in out[1:]
    )
    assert not (data_dir / "agent.lock").read_bytes()  # released, and its record cleared


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_install_package_of_no_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    path = tmp_path / "pkgs"
    if what == "folder":
        path.mkdir()
    assert main(["install-package", str(path), "--data-dir", str(tmp_path / "agent")]) == 1
    err = capsys.readouterr().err
    reason = "is a folder" if what == "folder" else "does not exist"
    assert err == f"outpost-agent: {path} {reason}; pass the .outpost.zip file to install\n"


def test_sigterm_during_install_package_leaves_no_staging_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service manager's SIGTERM mid-install ends with 143 and takes the staging folder
    (and the first install's empty model folder) with it, as Ctrl-C does."""
    data_dir = tmp_path / "agent"
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    real_extract = PackageReader.extract
    seen: list[Path] = []

    def extract_then_terminated(self: PackageReader, dest: Path) -> Path:
        done = real_extract(self, dest)
        seen.append(done)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (the main) thread
        return done

    monkeypatch.setattr(PackageReader, "extract", extract_then_terminated)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        main(["install-package", str(package), "--data-dir", str(data_dir)])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert seen and not seen[0].exists()
    assert not (data_dir / "models" / "shapes").exists()
    assert signal.getsignal(signal.SIGTERM) == previous
    DataDirLock(data_dir, "serve").acquire()  # released on the way out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["info", "--data-dir", ""], "argument --data-dir: must name a folder, got ''"),
        (["serve", "--data-dir", " "], "argument --data-dir: must name a folder"),
        (["pair", "--data-dir", "FILE"], "is a file, not a folder; name a folder"),
        (["install-package", "x.zip", "--data-dir", "FILE"], "is a file, not a folder"),
    ],
)
def test_a_data_dir_that_is_no_folder_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    """Not the current folder for "", not "permissions" advice for a file."""
    file = tmp_path / "agent.txt"
    file.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        main([str(file) if a == "FILE" else a for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert file.read_text() == "not a folder"


# --- storage that refuses an install ------------------------------------------------


def _disk_full(self: PackageReader, dest: Path) -> Path:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_full_during_an_install_is_507_and_the_old_version_serves(
    start_agent: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = start_agent()
    first = make_package(tmp_path / "pkgs" / "shapes-1.outpost.zip")
    second = make_package(tmp_path / "pkgs" / "shapes-2.outpost.zip", version="2")
    with agent.client() as client:
        client.upload_package(first)
        monkeypatch.setattr(PackageReader, "extract", _disk_full)
        with pytest.raises(AgentRejectedError) as full:
            client.upload_package(second)
        assert full.value.status == 507
        message = full.value.message
        assert message.startswith("cannot install shapes 2: the device ran out of disk space in ")
        assert "MiB free now" in message and "free some space" in message
        assert message.endswith(", and retry")
        assert [m.version for m in agent.service.store.models()] == ["1"]
        assert not list((agent.service.data_dir / "models" / "shapes").glob(".staging-*"))


def test_a_disk_full_during_install_package_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = make_package(tmp_path / "shapes-1.outpost.zip")
    monkeypatch.setattr(PackageReader, "extract", _disk_full)
    assert main(["install-package", str(package), "--data-dir", str(tmp_path / "agent")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("outpost-agent: cannot install shapes 1: the device ran out of disk")
    assert err.count("\n") == 1 and "free some space" in err


def test_a_read_only_store_refuses_a_switch_with_507(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Activate, deactivate, roll back and uninstall say what the storage did, too."""
    store = ModelStore(tmp_path / "agent")
    store.load()
    store.install(make_package(tmp_path / "shapes-1.outpost.zip"))

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ModelStore, "_write_active", read_only)
    with pytest.raises(StorageFullError, match="found its storage read-only") as refused:
        store.deactivate("shapes")
    assert "cannot deactivate shapes: the device found its storage read-only in" in str(
        refused.value
    )
    assert [m.name for m in store.models()] == ["shapes"]
