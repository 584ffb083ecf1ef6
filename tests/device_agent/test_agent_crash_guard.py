"""A runtime that kills the agent's process while it loads a model: the agent comes back on
the version that worked and does not load the crashing one again.

Real ``outpost-agent serve`` processes whose ONNX Runtime backend segfaults (``ctypes``
reads address 0) when the model folder holds ``crash.flag`` and ``CRASH_ON_FLAG`` is set: the
fault is injected at the runtime's boundary only; the agent's own code runs unchanged.
"""

from __future__ import annotations

import errno
import json
import signal
import sys
import threading
from pathlib import Path

import pytest

from device_agent import crashguard
from device_agent.cli import main
from device_agent.client import AgentClient, AgentRejectedError
from device_agent.crashguard import BUSY_FILE, CRASH_LOG, CRASHES_FILE, CrashGuard
from runtimes.package import write_package
from tests.device_agent.test_agent_kill_install import HEAVY, Agent, _serving, paired_data
from tests.fakes import EXPECTED, make_detect_onnx, make_image_bytes, manifest_fields

CRASHING = f"""
import ctypes, os, sys
from pathlib import Path
for name in {HEAVY!r}:
    sys.modules[name] = None
from runtimes.backends import onnxruntime as ort_backend

real_init = ort_backend.OnnxRuntimeBackend.__init__

def init(self, model_path, **kwargs):
    if os.environ.get("CRASH_ON_FLAG") and (Path(model_path).parent / "crash.flag").exists():
        ctypes.string_at(0)  # SIGSEGV inside the runtime's load
    real_init(self, model_path, **kwargs)

ort_backend.OnnxRuntimeBackend.__init__ = init
from device_agent.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
CRASH = {"CRASH_ON_FLAG": "1"}


def _package(tmp: Path, version: str, *, crashes: bool) -> Path:
    folder = tmp / f"v{version}"
    folder.mkdir()
    files = {"model.onnx": make_detect_onnx(folder / "model.onnx")}
    if crashes:
        (folder / "crash.flag").write_text("segfault on load\n")
        files["crash.flag"] = folder / "crash.flag"
    out = tmp / f"v{version}.outpost.zip"
    write_package(out, manifest_fields(version=version), files)
    return out


def _died_of_sigsegv(agent: Agent) -> None:
    assert agent.proc.wait(timeout=60) == -signal.SIGSEGV
    agent.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="faulthandler and SIGSEGV are POSIX")
def test_a_model_that_crashes_the_runtime_is_not_loaded_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, identity, desktop = paired_data(tmp_path, "crash test")
    pin = identity.key.public_raw
    good = _package(tmp_path, "1", crashes=False)
    bad = _package(tmp_path, "2", crashes=True)
    with open(tmp_path / "agent.stderr", "w") as stderr:
        agent = Agent(data, stderr, wrapper=CRASHING, env=CRASH)
        port = int(agent.url.rsplit(":", 1)[1])
        restarted: list[Agent] = []
        busy_at_death: list[bool] = []

        def service_manager() -> None:  # Restart=on-failure, as the systemd unit does
            _died_of_sigsegv(agent)
            busy_at_death.append((data / BUSY_FILE).exists())  # what it was loading
            restarted.append(Agent(data, stderr, wrapper=CRASHING, env=CRASH, port=port))

        with AgentClient(agent.url, key=desktop, agent_key=pin) as client:
            client.upload_package(good)
            assert _serving(client) == "1"
            manager = threading.Thread(target=service_manager)
            manager.start()
            # the install takes the process down; the commit, asked again once the agent is
            # back, is refused with the crash's own line
            with pytest.raises(AgentRejectedError) as first:
                client.upload_package(bad, resumable=True, backoff_s=0.5)
            manager.join(60)
        assert busy_at_death == [True]
        assert "Segmentation fault" in (data / CRASH_LOG).read_text()
        agent = restarted[0]
        try:
            assert not (data / BUSY_FILE).exists()
            assert first.value.status == 422
            assert "shapes 2 crashed the agent when it was last loaded" in str(first.value)
            assert "Segmentation fault" in str(first.value)
            with AgentClient(agent.url, key=desktop, agent_key=pin) as client:
                assert _serving(client) == "1"
                with pytest.raises(AgentRejectedError) as again:  # sent again: refused
                    client.upload_package(bad, retries=0)
                assert again.value.status == 422 and "Segmentation fault" in str(again.value)
                assert _serving(client) == "1"  # and the agent still serves
            capsys.readouterr()
            assert main(["crashes", "--forget", "--data-dir", str(data)]) == 1
            assert "is serving from" in capsys.readouterr().err  # stop it first
        finally:
            agent.kill()
        crashes = json.loads((data / CRASHES_FILE).read_text())
        assert [entry["what"] for entry in crashes.values()] == ["shapes 2 (install)"]
        assert main(["crashes", "--data-dir", str(data)]) == 0
        listed = capsys.readouterr().out
        assert "shapes 2 (install): Fatal Python error: Segmentation fault (held)" in listed

        # The same version installed where it loads, then a start where it crashes (a runtime
        # upgraded under it): the agent dies once, then starts on the previous version.
        assert main(["crashes", "--forget", "--data-dir", str(data)]) == 0
        assert capsys.readouterr().out == "forgot 1 crash; they load again when sent\n"
        assert not (data / CRASHES_FILE).exists()
        agent = Agent(data, stderr, wrapper=CRASHING)  # a runtime that loads it
        with AgentClient(agent.url, key=desktop, agent_key=pin) as client:
            client.upload_package(bad)
            assert _serving(client) == "2"
        agent.kill()
        agent = Agent(data, stderr, wrapper=CRASHING, env=CRASH, wait=False)
        _died_of_sigsegv(agent)  # at its start, loading the active version
        agent = Agent(data, stderr, wrapper=CRASHING, env=CRASH)
        try:
            with AgentClient(agent.url, key=desktop, agent_key=pin) as client:
                with pytest.raises(AgentRejectedError) as degraded:
                    client.ready()
                assert degraded.value.status == 503
                assert "crashed the agent when it was last loaded" in str(degraded.value)
                result = client.infer(make_image_bytes())
                assert (result["version"], result["detections"]) == ("1", list(EXPECTED))
        finally:
            agent.kill()


def _died_loading(guard: CrashGuard, key: str, fault: str) -> None:
    """What a process that died in ``guard.loading(key, ...)`` leaves: the busy record, and
    ``fault`` (faulthandler's text, or nothing) appended to the crash log."""
    with guard.loading(key, "m 1"):
        record = (guard.folder / BUSY_FILE).read_text()
    (guard.folder / BUSY_FILE).write_text(record)
    with open(guard.folder / CRASH_LOG, "a") as log:
        log.write(fault)


def _fault(thread: int) -> str:
    return (
        f"Fatal Python error: Aborted\n\nCurrent thread 0x{thread:016x} (most recent call first):\n"
    )


def test_a_load_cut_off_without_a_crash_is_tried_again(tmp_path: Path) -> None:
    """SIGKILL, the OOM killer or a power cut leave no fault in the log: nothing is held
    against the version. A fault in another thread (an inference) is not held either."""
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    with pytest.raises(KeyboardInterrupt), guard.loading("k", "m 1"):
        raise KeyboardInterrupt  # the block's end removes the record
    assert not (tmp_path / BUSY_FILE).exists()
    (tmp_path / CRASH_LOG).write_text("an old fault\n")  # from before: not this load's
    _died_loading(guard, "k", "")
    assert "killed, out of memory or a power cut" in (guard.settle() or "")
    assert guard.crashed("k") is None and not (tmp_path / BUSY_FILE).exists()

    _died_loading(guard, "k", _fault(threading.get_ident() + 1))
    assert "in another thread than the one loading m 1" in (guard.settle() or "")
    assert guard.crashed("k") is None
    (tmp_path / BUSY_FILE).write_text("{not json")
    assert guard.settle() is None and not (tmp_path / BUSY_FILE).exists()


def test_a_crash_is_held_for_the_runtimes_it_happened_with(tmp_path: Path) -> None:
    old = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    _died_loading(old, "k", _fault(threading.get_ident()))
    upgraded = CrashGuard(tmp_path, fingerprint="onnxruntime==2")  # upgraded before the start
    line = upgraded.settle()
    assert line == "the runtime crashed the agent while it loaded m 1 (Fatal Python error: Aborted)"
    assert upgraded.crashed("k") is None  # the upgrade may have mended it
    assert old.crashed("k") == "Fatal Python error: Aborted"


def test_a_disk_that_refuses_writes_does_not_stop_a_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    _died_loading(guard, "k", _fault(threading.get_ident()))
    (tmp_path / CRASH_LOG).write_text((tmp_path / CRASH_LOG).read_text() + "x" * (2 << 20))

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(crashguard, "atomic_write_text", refuse)
    assert "crashed the agent" in (guard.settle() or "")
    assert guard.crashed("k") == "Fatal Python error: Aborted"  # held in memory meanwhile
    assert (tmp_path / BUSY_FILE).exists()  # kept: the crash is written once it can be
    loaded = []
    with guard.loading("other", "m 2"):
        loaded.append(True)
    assert loaded == [True]
    monkeypatch.undo()
    restarted = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    restarted.settle()
    assert restarted.crashed("k") == "Fatal Python error: Aborted"
    assert (tmp_path / CRASH_LOG).stat().st_size == 0  # read, and cut once over 1 MiB
