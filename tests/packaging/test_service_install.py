"""``outpost-agent install-service``: each service file generated, checked and installed."""

from __future__ import annotations

import json
import plistlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from device_agent import service_install as si
from device_agent.cli import main

ROOT = Path(__file__).resolve().parents[2]


def probe(tmp_path: Path, system: str = "linux", **kwargs: object) -> si.HostProbe:
    fields: dict[str, object] = {
        "system": system,
        "env": {},
        "home": tmp_path / "home",
        "uid": 1000,
        "user": "ada",
        "has_systemd": True,
        "has_user": False,
    }
    fields.update(kwargs)
    return si.HostProbe(**fields)  # type: ignore[arg-type]


def fake_exe(tmp_path: Path) -> Path:
    exe = tmp_path / "venv with space" / "bin" / "outpost-agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def test_the_platform_chooses_the_service_manager(tmp_path: Path) -> None:
    assert si.detect_kind(probe(tmp_path)) == "systemd"
    assert si.detect_kind(probe(tmp_path, "darwin")) == "launchd"
    termux = probe(tmp_path, env={"PREFIX": "/data/data/com.termux/files/usr"})
    assert si.detect_kind(termux) == "termux"
    with pytest.raises(si.ServiceInstallError, match="no supported service manager"):
        si.detect_kind(probe(tmp_path, has_systemd=False))


def test_a_system_service_needs_root(tmp_path: Path) -> None:
    with pytest.raises(
        si.ServiceInstallError, match="needs root: run it with sudo, or pass --user"
    ):
        si.plan_service(probe(tmp_path), executable=fake_exe(tmp_path))


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        cwd=unit.parent,
    )


@pytest.mark.parametrize("user_mode", [False, True])
def test_systemd_unit_is_sandboxed_and_verifies(tmp_path: Path, user_mode: bool) -> None:
    exe = fake_exe(tmp_path)
    data = tmp_path / "state"
    plan = si.plan_service(
        probe(tmp_path, uid=0 if not user_mode else 1000),
        user_mode=user_mode,
        executable=exe,
        data_dir=data,
        port=9000,
    )
    lines = plan.content.splitlines()
    assert f'ExecStart="{exe}" serve --data-dir {data} --port 9000' in lines
    assert "Restart=on-failure" in lines and "NoNewPrivileges=yes" in lines
    if user_mode:
        assert plan.path == tmp_path / "home/.config/systemd/user/outpost-agent.service"
        assert "WantedBy=default.target" in lines and "User=outpost-agent" not in lines
        assert plan.enable[-1] == [
            "systemctl",
            "--user",
            "enable",
            "--now",
            "outpost-agent.service",
        ]
    else:
        assert plan.path == Path("/etc/systemd/system/outpost-agent.service")
        for option in ("ProtectSystem=strict", f"ReadWritePaths={data}", "PrivateTmp=yes"):
            assert option in lines
        assert "User=outpost-agent" in lines and "WantedBy=multi-user.target" in lines
        assert plan.before[0][0] == "useradd"  # the probe says the user does not exist yet
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "units" / "outpost-agent.service"
    unit.parent.mkdir()
    unit.write_text(plan.content)
    done = _verify(unit)
    assert done.returncode == 0, done.stderr
    assert "outpost-agent.service" not in done.stderr  # no warning about our unit


def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "outpost-agent.service"
    unit.write_text("[Service]\nExecStart=relative/outpost-agent serve\n")
    assert _verify(unit).returncode != 0


def test_a_venv_in_a_home_folder_stays_readable(tmp_path: Path) -> None:
    args = ["/home/ada/.venv/bin/outpost-agent", "serve"]
    unit = si.systemd_unit(args, si.SYSTEM_DATA_DIR, user_mode=False)
    assert "ProtectHome=read-only" in unit.splitlines()
    unit = si.systemd_unit(["/usr/local/bin/outpost-agent"], si.SYSTEM_DATA_DIR, user_mode=False)
    assert "ProtectHome=yes" in unit.splitlines()


def test_the_shipped_unit_is_the_generated_one() -> None:
    args = ["/usr/local/bin/outpost-agent", "serve", "--data-dir", str(si.SYSTEM_DATA_DIR)]
    shipped = (ROOT / "packaging/systemd/outpost-agent.service").read_text()
    assert shipped == si.systemd_unit(args, si.SYSTEM_DATA_DIR, user_mode=False)


@pytest.mark.parametrize("user_mode", [False, True])
def test_launchd_plist_round_trips(tmp_path: Path, user_mode: bool) -> None:
    exe = fake_exe(tmp_path)
    plan = si.plan_service(
        probe(tmp_path, "darwin", uid=0 if not user_mode else 501),
        user_mode=user_mode,
        executable=exe,
        interface="192.168.1.20",
    )
    plist = plistlib.loads(plan.content.encode("utf-8"))
    assert plist["Label"] == si.LAUNCHD_LABEL
    assert plist["ProgramArguments"] == [
        str(exe),
        "serve",
        "--data-dir",
        str(plan.data_dir),
        "--interface",
        "192.168.1.20",
    ]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    if user_mode:
        assert plan.path == tmp_path / "home/Library/LaunchAgents/org.outpost.agent.plist"
        assert plan.enable[0] == ["launchctl", "bootstrap", "gui/501", str(plan.path)]
        assert "UserName" not in plist
    else:
        assert plan.path == Path("/Library/LaunchDaemons/org.outpost.agent.plist")
        assert plist["UserName"] == "ada"
        assert plan.enable[0][:3] == ["launchctl", "bootstrap", "system"]


def test_termux_boot_script_is_valid_shell(tmp_path: Path) -> None:
    exe = fake_exe(tmp_path)
    termux = probe(tmp_path, env={"TERMUX_VERSION": "0.118"})
    plan = si.plan_service(termux, executable=exe)  # Termux: always per user, no root
    assert plan.path == tmp_path / "home/.termux/boot/outpost-agent" and plan.mode == 0o755
    assert plan.content.startswith(f"#!{si.TERMUX_SHELL}\n")
    assert "termux-wake-lock" in plan.content and "while true" in plan.content
    script = tmp_path / "boot.sh"
    script.write_text(plan.content)
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_install_writes_the_file_then_enables_it(tmp_path: Path) -> None:
    ran: list[list[str]] = []
    plan = si.plan_service(probe(tmp_path), user_mode=True, executable=fake_exe(tmp_path))

    def runner(command: Sequence[str]) -> None:
        ran.append(list(command))
        if command[-1] == "outpost-agent.service":
            assert plan.path.is_file()  # enabled only once written

    result = si.install(plan, runner)
    assert plan.path.read_text() == plan.content
    assert ran == plan.enable and result["installed"] == str(plan.path)
    removed = si.uninstall(plan, runner)
    assert not plan.path.exists() and removed["removed"] == str(plan.path)
    assert ran[-2:] == [*plan.disable, *plan.after_remove]


def test_a_failed_enable_names_the_command(tmp_path: Path) -> None:
    plan = si.plan_service(probe(tmp_path), user_mode=True, executable=fake_exe(tmp_path))
    bad = si.ServicePlan(**{**plan.__dict__, "enable": [["false"]]})
    with pytest.raises(si.ServiceInstallError, match="^false failed: exit 1$"):
        si.install(bad)


def test_uninstall_goes_on_when_the_service_is_not_running(tmp_path: Path) -> None:
    plan = si.plan_service(probe(tmp_path), user_mode=True, executable=fake_exe(tmp_path))
    plan.path.parent.mkdir(parents=True)
    plan.path.write_text(plan.content)
    bad = si.ServicePlan(**{**plan.__dict__, "disable": [["false"]], "after_remove": []})
    result = si.uninstall(bad)
    assert not plan.path.exists() and result["warnings"] == ["false failed: exit 1"]


def test_cli_dry_run_prints_file_and_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(si, "probe_host", lambda: probe(tmp_path))
    exe = fake_exe(tmp_path)
    code = main(["install-service", "--user", "--dry-run", "--executable", str(exe)])
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "Restart=on-failure" in out and "systemctl --user enable --now outpost-agent.service" in out
    )
    assert not (tmp_path / "home").exists()  # nothing written
    assert main(["uninstall-service", "--user", "--dry-run", "--executable", str(exe)]) == 0
    assert "systemctl --user disable --now outpost-agent.service" in capsys.readouterr().out


def test_cli_dry_run_json_is_one_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(si, "probe_host", lambda: probe(tmp_path))
    exe = fake_exe(tmp_path)
    assert main(["install-service", "--user", "--dry-run", "--json", "--executable", str(exe)]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["dry_run"] is True and planned["action"] == "install"
    assert planned["kind"] == "systemd" and planned["user"] is True
    assert "Restart=on-failure" in planned["content"] and planned["mode"] == "644"
    assert ["systemctl", "--user", "enable", "--now", "outpost-agent.service"] in planned[
        "commands"
    ]
    assert ["write", planned["path"]] in planned["commands"]
    assert not (tmp_path / "home").exists()  # nothing written
    argv = ["uninstall-service", "--user", "--dry-run", "--json", "--executable", str(exe)]
    assert main(argv) == 0
    removal = json.loads(capsys.readouterr().out)
    assert removal["action"] == "uninstall" and "content" not in removal
    assert ["rm", "-f", planned["path"]] in removal["commands"]


@pytest.mark.parametrize("what", ["missing", "not executable"])
def test_cli_refuses_an_executable_it_could_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    monkeypatch.setattr(si, "probe_host", lambda: probe(tmp_path))
    exe = tmp_path / "outpost-agent"
    if what == "not executable":
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o644)
    argv = ["install-service", "--user", "--dry-run", "--executable", str(exe)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    problem = "does not exist" if what == "missing" else "is not an executable file"
    assert err.startswith(f"outpost-agent: --executable {exe} {problem}; pass the agent's")
    assert err.count("\n") == 1


def test_cli_refuses_a_system_service_without_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(si, "probe_host", lambda: probe(tmp_path))
    assert main(["install-service", "--executable", str(fake_exe(tmp_path))]) == 1
    assert "needs root" in capsys.readouterr().err
