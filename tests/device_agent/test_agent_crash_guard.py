"""A runtime that kills the agent's process while it loads a model, or on a frame: the agent
comes back on the version that worked and does not load the crashing one again (an inference
crash holds a version from the second within an hour).

Real ``outpost-agent serve`` processes whose ONNX Runtime backend segfaults (``ctypes``
reads address 0) when the model folder holds ``crash.flag`` and ``CRASH_ON_FLAG`` is set (in
its load), or holds ``frame-crash.flag`` and ``CRASH_ON_FRAME`` is set (in a runtime call on an
inference worker, not in the install's self-test): the fault is injected at the runtime's
boundary only; the agent's own code runs unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent import crashguard
from device_agent.cli import main
from device_agent.client import AgentClient, AgentRejectedError
from device_agent.crashguard import (
    BUSY_FILE,
    CRASH_LOG,
    CRASHES_FILE,
    INFERENCE_CRASH_WINDOW_S,
    MARKS_FILE,
    CrashGuard,
)
from device_agent.errors import AgentUnreachableError, InstallError
from device_agent.store import InstalledModel, ModelStore
from runtimes.package import write_package
from tests.device_agent.test_agent_kill_install import HEAVY, Agent, _serving, paired_data
from tests.fakes import EXPECTED, make_detect_onnx, make_image_bytes, manifest_fields

CRASHING = f"""
import ctypes, os, sys, threading
from pathlib import Path
for name in {HEAVY!r}:
    sys.modules[name] = None
from runtimes.backends import onnxruntime as ort_backend

real_init = ort_backend.OnnxRuntimeBackend.__init__

real_run = ort_backend.OnnxRuntimeBackend.run

def init(self, model_path, **kwargs):
    if os.environ.get("CRASH_ON_FLAG") and (Path(model_path).parent / "crash.flag").exists():
        ctypes.string_at(0)  # SIGSEGV inside the runtime's load
    self.frame_crash = (Path(model_path).parent / "frame-crash.flag").exists()
    real_init(self, model_path, **kwargs)

def run(self, tensor):
    serving = threading.current_thread().name.startswith("outpost-infer")
    if os.environ.get("CRASH_ON_FRAME") and self.frame_crash and serving:
        ctypes.string_at(0)  # SIGSEGV inside the runtime's call, on a served frame
    return real_run(self, tensor)

ort_backend.OnnxRuntimeBackend.__init__ = init
ort_backend.OnnxRuntimeBackend.run = run
from device_agent.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
CRASH = {"CRASH_ON_FLAG": "1"}
FRAME_CRASH = {"CRASH_ON_FRAME": "1"}
LOADED_ABORT = "when it was last loaded (Fatal Python error: Aborted)"


def _package(tmp: Path, version: str, *, crashes: bool, flag: str = "crash.flag") -> Path:
    folder = tmp / f"v{version}"
    folder.mkdir()
    files = {"model.onnx": make_detect_onnx(folder / "model.onnx")}
    if crashes:
        (folder / flag).write_text("segfault\n")
        files[flag] = folder / flag
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


def _active(client: AgentClient) -> str | None:
    return next(m["active"] for m in client.models() if m["name"] == "shapes")


@pytest.mark.skipif(sys.platform == "win32", reason="faulthandler and SIGSEGV are POSIX")
def test_a_version_that_crashes_on_frames_gives_way_to_the_one_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version that passed its self-test but whose runtime segfaults on served frames: one
    crash is counted (the agent comes back on it), the second holds it, and the agent comes
    back on the version before, serving, instead of dying at every frame."""
    data, identity, desktop = paired_data(tmp_path, "frame crash test")
    pin = identity.key.public_raw
    good = _package(tmp_path, "1", crashes=False)
    bad = _package(tmp_path, "2", crashes=True, flag="frame-crash.flag")
    with open(tmp_path / "agent.stderr", "w") as stderr:
        agent = Agent(data, stderr, wrapper=CRASHING, env=FRAME_CRASH)
        with AgentClient(agent.url, key=desktop, agent_key=pin) as client:
            client.upload_package(good)
            assert client.upload_package(bad)["version"] == "2"  # its warm-up: no crash there
            assert (data / MARKS_FILE).is_file()
            with pytest.raises(AgentUnreachableError):
                client.infer(make_image_bytes())  # a frame: the runtime takes the agent down
        _died_of_sigsegv(agent)

        agent = Agent(data, stderr, wrapper=CRASHING, env=FRAME_CRASH)  # systemd's restart
        with AgentClient(agent.url, key=desktop, agent_key=pin) as client:
            assert client.ready()["status"] == "ready" and _active(client) == "2"  # one crash
            capsys.readouterr()
            assert main(["crashes", "--data-dir", str(data)]) == 0
            assert (
                "shapes 2 (inference): Fatal Python error: Segmentation fault (not held: 1 crash "
                "in inferences; 2 within an hour hold it)" in capsys.readouterr().out
            )
            with pytest.raises(AgentUnreachableError):
                client.infer(make_image_bytes())
        _died_of_sigsegv(agent)

        agent = Agent(data, stderr, wrapper=CRASHING, env=FRAME_CRASH)
        try:
            with AgentClient(agent.url, key=desktop, agent_key=pin) as client:
                with pytest.raises(AgentRejectedError) as degraded:
                    client.ready()  # loud: the active version is not the one serving
                assert degraded.value.status == 503
                assert "shapes 2 crashed the agent in 2 inferences within an hour" in str(
                    degraded.value
                )
                assert "Segmentation fault" in str(degraded.value)
                result = client.infer(make_image_bytes())
                assert (result["version"], result["detections"]) == ("1", list(EXPECTED))
                info = client.info()  # what the desktop's `devices show` prints
                assert "in 2 inferences within an hour" in info["not_loaded"]["shapes"]
                assert [(c["what"], c["state"]) for c in info["crashes"]] == [
                    ("shapes 2 (inference)", "held: 2 crashes")
                ]
                with pytest.raises(AgentRejectedError) as again:  # sent again: refused
                    client.upload_package(bad, retries=0)
                assert again.value.status == 422
                assert "in 2 inferences within an hour" in str(again.value)
                assert client.infer(make_image_bytes())["version"] == "1"
        finally:
            agent.kill()
    assert main(["crashes", "--data-dir", str(data)]) == 0
    assert "shapes 2 (inference): Fatal Python error: Segmentation fault (held: 2 crashes)" in (
        capsys.readouterr().out
    )


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
    assert old.crashed("k") == LOADED_ABORT


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
    assert guard.crashed("k") == LOADED_ABORT  # held in memory meanwhile
    assert (tmp_path / BUSY_FILE).exists()  # kept: the crash is written once it can be
    loaded = []
    with guard.loading("other", "m 2"):
        loaded.append(True)
    assert loaded == [True]
    monkeypatch.undo()
    restarted = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    restarted.settle()
    assert restarted.crashed("k") == LOADED_ABORT
    assert (tmp_path / CRASH_LOG).stat().st_size == 0  # read, and cut once over 1 MiB


def _died_running(guard: CrashGuard, key: str, fault: str, *, at: float | None = None) -> None:
    """What a process that died in ``guard.running(key, ...)`` leaves: its marks (taken
    inside the block, with ``at`` as the call's start when given) and ``fault`` appended to
    the crash log."""
    guard.watch_inferences()
    with guard.running(key, "m 2"):
        marks = bytearray((guard.folder / MARKS_FILE).read_bytes())
    if at is not None:
        slot = crashguard.MARKS_HEADER_BYTES
        crashguard.MARKS_SLOT.pack_into(marks, slot, 1, threading.get_ident(), at, len(key), 3)
    (guard.folder / MARKS_FILE).write_bytes(marks)
    with open(guard.folder / CRASH_LOG, "a") as log:
        log.write(fault)


@contextlib.contextmanager
def _call_in_another_thread(guard: CrashGuard, key: str, what: str) -> Iterator[int]:
    """A runtime call of ``what`` on another thread for as long as the block runs; that
    thread's ident."""
    inside, done = threading.Event(), threading.Event()
    idents: list[int] = []

    def call() -> None:
        idents.append(threading.get_ident())
        with guard.running(key, what):
            inside.set()
            done.wait(10)

    worker = threading.Thread(target=call)
    worker.start()
    inside.wait(10)
    try:
        yield idents[0]
    finally:
        done.set()
        worker.join(10)


def test_a_crash_in_an_inference_holds_its_version_from_the_second_within_an_hour(
    tmp_path: Path,
) -> None:
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    _died_running(guard, "k", _fault(threading.get_ident()), at=1000.0)
    restarted = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    assert restarted.settle() == (
        "the runtime crashed the agent while it ran m 2 (inference) (Fatal Python error: "
        "Aborted); a second crash within an hour stops it from being loaded"
    )
    assert restarted.crashed("k") is None  # one fault in weeks of frames does not drop it
    assert not (tmp_path / MARKS_FILE).exists()  # read once
    assert restarted.settle() is None

    # the second, more than an hour later: still one at a time
    _died_running(
        restarted, "k", _fault(threading.get_ident()), at=1001.0 + INFERENCE_CRASH_WINDOW_S
    )
    restarted = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    assert "a second crash within an hour" in (restarted.settle() or "")
    assert restarted.crashed("k") is None
    # a third, within the hour of the second: held
    _died_running(
        restarted, "k", _fault(threading.get_ident()), at=1002.0 + INFERENCE_CRASH_WINDOW_S
    )
    restarted = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    assert restarted.settle() == (
        "the runtime crashed the agent again while it ran m 2 (inference) (Fatal Python error: "
        "Aborted): it is not loaded again with these runtimes"
    )
    assert restarted.crashed("k") == (
        "in 2 inferences within an hour (Fatal Python error: Aborted)"
    )
    assert [(c["kind"], c["count"], c["held"]) for c in restarted.remembered()] == [
        ("inference", 3, True)
    ]
    assert CrashGuard(tmp_path, fingerprint="onnxruntime==2").crashed("k") is None


def test_only_a_crash_in_a_running_inference_counts_against_its_version(tmp_path: Path) -> None:
    """Killed mid-inference (no fault), a fault in a thread that runs no inference, or a fault
    in a runtime's own thread while two versions were running: nothing is counted. A fault
    in a runtime's own thread while one version alone was running is that version's."""
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    _died_running(guard, "k", "")  # SIGKILL, the OOM killer
    assert guard.settle() is None and guard.remembered() == []
    _died_running(guard, "k", _fault(threading.get_ident() + 1))
    assert guard.settle() is None and guard.remembered() == []

    guard.watch_inferences()  # a finished inference leaves nothing running
    with guard.running("k", "m 2"):
        pass
    (tmp_path / CRASH_LOG).write_text(_fault(threading.get_ident()))
    assert guard.settle() is None and guard.remembered() == []

    native = "Fatal Python error: Segmentation fault\n\n<no Python frame>\n"
    _died_running(guard, "k", native)
    assert "while it ran m 2 (inference)" in (guard.settle() or "")
    assert [c["count"] for c in guard.remembered()] == [1]

    guard.watch_inferences()
    with _call_in_another_thread(guard, "j", "m 3"), guard.running("k", "m 2"):
        marks = (tmp_path / MARKS_FILE).read_bytes()
    (tmp_path / MARKS_FILE).write_bytes(marks)
    with open(tmp_path / CRASH_LOG, "a") as log:
        log.write(native)
    assert guard.settle() is None  # which of the two: not known
    assert [c["count"] for c in guard.remembered()] == [1]


def test_a_load_crash_is_told_apart_from_an_inference_crash_at_the_same_time(
    tmp_path: Path,
) -> None:
    """A process that died with a load and an inference under way: the thread that took the
    fault says which one crashed."""
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    guard.watch_inferences()
    with (
        _call_in_another_thread(guard, "served", "m 1") as serving,
        guard.loading("new", "m 2 (install)"),
    ):
        busy = (tmp_path / BUSY_FILE).read_text()
        marks = (tmp_path / MARKS_FILE).read_bytes()
    (tmp_path / BUSY_FILE).write_text(busy)
    (tmp_path / MARKS_FILE).write_bytes(marks)
    with open(tmp_path / CRASH_LOG, "a") as log:
        log.write(_fault(serving))  # the inference's thread took it
    line = CrashGuard(tmp_path, fingerprint="onnxruntime==1").settle()
    assert line is not None and "while it ran m 1 (inference)" in line
    assert not (tmp_path / BUSY_FILE).exists()
    assert [c["key"] for c in guard.remembered()] == ["served"]


def _crash_in_a_call(model: InstalledModel, fault: str) -> None:
    """What a process that died in one of ``model``'s runtime calls leaves."""
    folder = model.guard.folder if model.guard is not None else None
    assert folder is not None
    with model.running():
        marks = (folder / MARKS_FILE).read_bytes()
    (folder / MARKS_FILE).write_bytes(marks)
    with open(folder / CRASH_LOG, "a") as log:
        log.write(fault)


def test_a_version_installed_for_a_provider_is_held_for_that_provider(tmp_path: Path) -> None:
    """Its calls are marked with the key its install checked (the package and the provider
    asked for, in any case), as are its loads at a start: after two crashes on frames the
    next start serves the version before; the same package for the same provider is refused,
    without one (the fastest) it is another try."""
    good, bad = _package(tmp_path, "1", crashes=False), _package(tmp_path, "2", crashes=False)
    data = tmp_path / "data"
    store = ModelStore(data)
    store.load()
    store.install(good)
    model = store.install(bad, provider="CPUExecutionProvider")
    assert model.crash_key == f"{hashlib.sha256(bad.read_bytes()).hexdigest()}/cpuexecutionprovider"
    for serving_after in ("2", "1"):
        store.guard.watch_inferences()  # as serve does
        _crash_in_a_call(store.get("shapes"), _fault(threading.get_ident()))
        store = ModelStore(data)
        store.load()
        assert store.get("shapes").version == serving_after
    assert "crashed the agent in 2 inferences within an hour" in store.not_loaded["shapes"]
    with pytest.raises(InstallError, match="in 2 inferences within an hour"):
        store.install(bad, provider="cpuExecutionProvider")
    assert store.get("shapes").version == "1"
    assert store.install(bad).version == "2"  # the fastest provider: another try
    assert store.get("shapes").version == "2"


def test_slots_go_to_versions_not_threads(tmp_path: Path) -> None:
    """More versions than slots over a run: a slot not in a call is given to the next, so the
    one in a call now is always marked."""
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    guard.watch_inferences()
    for i in range(crashguard.MARKS_SLOTS + 6):
        with guard.running(f"key-{i}", f"m {i}"):
            pass
    with guard.running("last", "m last"):
        marks = crashguard._read_marks(tmp_path / MARKS_FILE)
    assert marks is not None
    assert [(m["key"], m["what"]) for m in marks[2]] == [("last", "m last")]


def test_a_damaged_crash_list_does_not_stop_a_start(tmp_path: Path) -> None:
    (tmp_path / CRASHES_FILE).write_text(
        json.dumps({"k": {"kind": "inference", "times": None, "runtimes": "onnxruntime==1"}})
    )
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    assert guard.crashed("k") is None
    assert [(c["kind"], c["count"], c["held"]) for c in guard.remembered()] == [
        ("inference", 1, False)
    ]


def test_a_fault_in_a_runtimes_own_thread_during_a_load_and_calls_holds_neither(
    tmp_path: Path,
) -> None:
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    guard.watch_inferences()
    with guard.running("served", "m 1"), guard.loading("new", "m 2 (install)"):
        busy = (tmp_path / BUSY_FILE).read_text()
        marks = (tmp_path / MARKS_FILE).read_bytes()
    (tmp_path / BUSY_FILE).write_text(busy)
    (tmp_path / MARKS_FILE).write_bytes(marks)
    with open(tmp_path / CRASH_LOG, "a") as log:
        log.write("Fatal Python error: Segmentation fault\n\n<no Python frame>\n")
    line = CrashGuard(tmp_path, fingerprint="onnxruntime==1").settle()
    assert line is not None and "which one did it is not known, so neither is held" in line
    assert guard.remembered() == []
    assert not (tmp_path / BUSY_FILE).exists() and not (tmp_path / MARKS_FILE).exists()


def test_an_inference_crash_that_cannot_be_written_is_read_again_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    _died_running(guard, "k", _fault(threading.get_ident()))

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(crashguard, "atomic_write_text", refuse)
    full = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    assert "while it ran m 2 (inference)" in (full.settle() or "")
    assert (tmp_path / MARKS_FILE).exists()  # kept: nothing else holds the crash
    monkeypatch.undo()
    restarted = CrashGuard(tmp_path, fingerprint="onnxruntime==1")
    assert "while it ran m 2 (inference)" in (restarted.settle() or "")
    assert [c["count"] for c in restarted.remembered()] == [1]
    assert not (tmp_path / MARKS_FILE).exists()
