"""``outpost-agent install-service`` / ``uninstall-service``: start the agent at boot.

One file per service manager, chosen by the host:

- Linux and Jetson (systemd): ``/etc/systemd/system/outpost-agent.service`` running as the
  system user ``outpost-agent`` with its state in ``/var/lib/outpost-agent`` (or, with
  ``--user``, ``~/.config/systemd/user/outpost-agent.service`` with the per-user data folder);
  restarted on failure, sandboxed (NoNewPrivileges, ProtectSystem=strict with only the data
  folder writable, PrivateTmp, ProtectHome, kernel and control-group protection).
- macOS (launchd): a LaunchDaemon in ``/Library/LaunchDaemons`` (or, with ``--user``, a
  LaunchAgent in ``~/Library/LaunchAgents``), relaunched when it exits with an error.
- Android (Termux): ``~/.termux/boot/outpost-agent``, run by the Termux:Boot app at boot; it
  holds a wake lock and restarts the agent when it stops.

The host is read through :class:`HostProbe` so tests can fake it. ``--dry-run`` prints the
file and the commands without touching anything. The file is written atomically.
"""

from __future__ import annotations

import getpass
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from device_agent.errors import AgentError, one_line
from device_agent.paths import APP_DIR_NAME
from runtimes.fileio import atomic_write_text

SERVICE_NAME = "outpost-agent"
LAUNCHD_LABEL = "org.outpost.agent"
SYSTEM_USER = "outpost-agent"
SYSTEM_DATA_DIR = Path("/var/lib") / SERVICE_NAME
MACOS_SYSTEM_DATA_DIR = Path("/Library/Application Support") / APP_DIR_NAME
TERMUX_SHELL = "/data/data/com.termux/files/usr/bin/sh"
KINDS = ("systemd", "launchd", "termux")

Runner = Callable[[Sequence[str]], None]


class ServiceInstallError(AgentError):
    """The service could not be planned, written or enabled."""


@dataclass(frozen=True)
class HostProbe:
    """What the installer needs to know about the host (faked in tests).

    Attributes:
        system: ``sys.platform`` (``linux``, ``darwin``, ...).
        env: the environment (Termux sets ``TERMUX_VERSION`` and a ``PREFIX`` in com.termux).
        home: the user's home folder.
        uid: the effective user id (0 = root).
        user: the login name of the user installing (``SUDO_USER`` when run through sudo).
        has_systemd: whether ``systemctl`` is on PATH.
        has_user: whether the system user ``outpost-agent`` exists.
    """

    system: str
    env: Mapping[str, str]
    home: Path
    uid: int
    user: str
    has_systemd: bool
    has_user: bool

    @property
    def termux(self) -> bool:
        return "TERMUX_VERSION" in self.env or "com.termux" in self.env.get("PREFIX", "")


def probe_host() -> HostProbe:
    """The real host."""
    try:
        import pwd

        pwd.getpwnam(SYSTEM_USER)
        has_user = True
    except (ImportError, KeyError):
        has_user = False
    uid = os.geteuid() if hasattr(os, "geteuid") else 1000
    return HostProbe(
        system=sys.platform,
        env=dict(os.environ),
        home=Path.home(),
        uid=uid,
        user=os.environ.get("SUDO_USER") or getpass.getuser(),
        has_systemd=shutil.which("systemctl") is not None,
        has_user=has_user,
    )


def detect_kind(probe: HostProbe) -> str:
    """The service manager of the host: ``termux``, ``launchd`` or ``systemd``."""
    if probe.termux:
        return "termux"
    if probe.system == "darwin":
        return "launchd"
    if probe.system.startswith("linux") and probe.has_systemd:
        return "systemd"
    raise ServiceInstallError(
        f"no supported service manager on this host ({probe.system}, no systemctl); run "
        "outpost-agent serve from your own init system instead"
    )


def agent_executable() -> Path:
    """The ``outpost-agent`` next to this Python (a venv's ``bin/``), else the one on PATH."""
    beside = Path(sys.executable).parent / SERVICE_NAME
    if beside.is_file():
        return beside.absolute()
    found = shutil.which(SERVICE_NAME)
    if found:
        return Path(found).absolute()
    raise ServiceInstallError(
        "cannot find the outpost-agent executable; install it (pip install 'outpost[agent]') "
        "or pass --executable PATH"
    )


def check_executable(path: Path) -> None:
    """ServiceInstallError unless ``path`` is an executable file (what the service will run)."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        problem = "does not exist" if not path.exists() else "is not an executable file"
        raise ServiceInstallError(
            f"--executable {path} {problem}; pass the agent's outpost-agent (the bin/ of its "
            "venv), or leave --executable out to use the one beside this Python"
        )


@dataclass(frozen=True)
class ServicePlan:
    """A service file and the commands that enable (or remove) it."""

    kind: str
    user_mode: bool
    path: Path
    content: str
    data_dir: Path
    mode: int = 0o644
    before: list[list[str]] = field(default_factory=list)  # run before writing the file
    enable: list[list[str]] = field(default_factory=list)
    disable: list[list[str]] = field(default_factory=list)
    after_remove: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self, *, uninstall: bool = False) -> str:
        """The file and the commands, as ``--dry-run`` prints them."""
        lines: list[str] = []
        if not uninstall:
            lines += [f"# {self.path} (mode {self.mode:o})", self.content.rstrip("\n"), ""]
        lines.append("# commands:")
        lines += [shlex.join(c) for c in self.commands(uninstall=uninstall)]
        lines += [f"# {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def commands(self, *, uninstall: bool = False) -> list[list[str]]:
        """The commands install (or uninstall) runs, with ``write``/``rm`` for the file."""
        if uninstall:
            return [*self.disable, ["rm", "-f", str(self.path)], *self.after_remove]
        return [*self.before, ["write", str(self.path)], *self.enable]

    def to_json(self, *, uninstall: bool = False) -> dict[str, object]:
        """What ``--dry-run --json`` prints: the file (to install), the commands and notes."""
        record: dict[str, object] = {
            "dry_run": True,
            "action": "uninstall" if uninstall else "install",
            "kind": self.kind,
            "user": self.user_mode,
            "path": str(self.path),
            "data_dir": str(self.data_dir),
            "commands": self.commands(uninstall=uninstall),
            "notes": self.notes,
        }
        if not uninstall:
            record["mode"] = f"{self.mode:o}"
            record["content"] = self.content
        return record


def _serve_args(
    executable: Path, data_dir: Path, port: int | None, interface: str | None
) -> list[str]:
    args = [str(executable), "serve", "--data-dir", str(data_dir)]
    if interface:
        args += ["--interface", interface]
    if port is not None:
        args += ["--port", str(port)]
    return args


def _systemd_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "/._-:=+,@" for c in arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _under_home(path: Path) -> bool:
    parts = path.absolute().parts
    return len(parts) > 1 and parts[1] in ("home", "root", "Users")


def systemd_unit(
    args: Sequence[str], data_dir: Path, *, user_mode: bool, run_as: str = SYSTEM_USER
) -> str:
    """The unit file text. A venv in a home folder keeps ProtectHome=read-only (it must run)."""
    exec_start = " ".join(_systemd_quote(a) for a in args)
    lines = [
        "[Unit]",
        "Description=Outpost device agent (model serving, discovery, latency reporting)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "RestartSec=3",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=20",
        "Environment=PYTHONUNBUFFERED=1",
        "NoNewPrivileges=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "RestrictSUIDSGID=yes",
    ]
    if not user_mode:
        home = "read-only" if any(_under_home(Path(a)) for a in args[:1]) else "yes"
        lines[lines.index("Type=simple") + 1 : lines.index("Type=simple") + 1] = [
            f"User={run_as}",
            f"Group={run_as}",
        ]
        lines += [
            f"StateDirectory={data_dir.name}"
            if data_dir.parent == Path("/var/lib")
            else f"# data folder: {data_dir}",
            "ProtectSystem=strict",
            f"ReadWritePaths={_systemd_quote(str(data_dir))}",
            f"ProtectHome={home}",
            "PrivateTmp=yes",
            "PrivateDevices=no",  # accelerators (/dev/nvidia*, /dev/dri) stay reachable
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectHostname=yes",
            "RestrictRealtime=yes",
            "RestrictNamespaces=yes",
            "SystemCallArchitectures=native",
        ]
    lines += ["", "[Install]", f"WantedBy={'default.target' if user_mode else 'multi-user.target'}"]
    return "\n".join(lines) + "\n"


def launchd_plist(args: Sequence[str], data_dir: Path, *, run_as: str | None) -> str:
    """The launchd property list (XML)."""
    logs = data_dir / "logs"
    plist: dict[str, object] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": list(args),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # relaunch when it fails, not after a clean stop
        "ThrottleInterval": 10,
        "ProcessType": "Background",
        "WorkingDirectory": str(data_dir),
        "StandardOutPath": str(logs / "agent.out.log"),
        "StandardErrorPath": str(logs / "agent.err.log"),
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
    }
    if run_as:
        plist["UserName"] = run_as
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML).decode("utf-8")


def termux_script(args: Sequence[str], data_dir: Path) -> str:
    """The Termux:Boot script: a wake lock, then the agent restarted whenever it stops."""
    command = shlex.join(args)
    log = shlex.quote(str(data_dir / "agent.log"))
    return (
        f"#!{TERMUX_SHELL}\n"
        "# Outpost device agent, started by Termux:Boot (written by outpost-agent install-service).\n"
        "termux-wake-lock\n"
        f"mkdir -p {shlex.quote(str(data_dir))}\n"
        "(\n"
        "  while true; do\n"
        f"    {command} >>{log} 2>&1\n"
        f'    echo "outpost-agent stopped ($?); restarting in 5 s" >>{log}\n'
        "    sleep 5\n"
        "  done\n"
        ") &\n"
    )


def plan_service(
    probe: HostProbe,
    *,
    user_mode: bool = False,
    executable: Path | None = None,
    data_dir: Path | None = None,
    port: int | None = None,
    interface: str | None = None,
    kind: str | None = None,
) -> ServicePlan:
    """The file and commands for this host (nothing is written).

    Args:
        probe: the host.
        user_mode: a per-user service (systemd ``--user``, a launchd LaunchAgent); Termux
            services are always per-user.
        executable: the ``outpost-agent`` to run (default: :func:`agent_executable`).
        data_dir: the agent's state folder (default: per mode and platform).
        port: the agent's TCP port (default: the agent's own).
        interface: listen and advertise on this address only.
        kind: force ``systemd``, ``launchd`` or ``termux`` instead of detecting it.

    Raises:
        ServiceInstallError: no supported service manager, or a system service asked by a
            non-root user.
    """
    kind = kind or detect_kind(probe)
    if kind not in KINDS:
        raise ServiceInstallError(
            f"unknown service kind {kind!r}; choose one of {', '.join(KINDS)}"
        )
    exe = executable or agent_executable()
    if kind == "termux":
        user_mode = True
    if not user_mode and probe.uid != 0:
        raise ServiceInstallError(
            "a system service needs root: run it with sudo, or pass --user for a per-user service"
        )
    if kind == "systemd":
        return _plan_systemd(probe, exe, data_dir, port, interface, user_mode)
    if kind == "launchd":
        return _plan_launchd(probe, exe, data_dir, port, interface, user_mode)
    return _plan_termux(probe, exe, data_dir, port, interface)


def _user_data_dir(probe: HostProbe, kind: str) -> Path:
    if kind == "launchd":
        return probe.home / "Library" / "Application Support" / APP_DIR_NAME
    base = probe.env.get("XDG_DATA_HOME") or str(probe.home / ".local" / "share")
    return Path(base) / APP_DIR_NAME


def _plan_systemd(
    probe: HostProbe,
    exe: Path,
    data_dir: Path | None,
    port: int | None,
    interface: str | None,
    user_mode: bool,
) -> ServicePlan:
    unit = f"{SERVICE_NAME}.service"
    if user_mode:
        data = data_dir or _user_data_dir(probe, "systemd")
        config = Path(probe.env.get("XDG_CONFIG_HOME") or probe.home / ".config")
        ctl = ["systemctl", "--user"]
        return ServicePlan(
            kind="systemd",
            user_mode=True,
            path=config / "systemd" / "user" / unit,
            content=systemd_unit(_serve_args(exe, data, port, interface), data, user_mode=True),
            data_dir=data,
            enable=[[*ctl, "daemon-reload"], [*ctl, "enable", "--now", unit]],
            disable=[[*ctl, "disable", "--now", unit]],
            after_remove=[[*ctl, "daemon-reload"]],
            notes=[
                f"to start it at boot without logging in: sudo loginctl enable-linger {probe.user}",
                f"logs: journalctl --user -u {unit} -f",
                f"pair: {exe} pair --data-dir {data}",
            ],
        )
    data = data_dir or SYSTEM_DATA_DIR
    before: list[list[str]] = []
    if not probe.has_user:
        before.append(
            [
                "useradd",
                "--system",
                "--home-dir",
                str(data),
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ]
        )
    before += [
        ["install", "-d", "-o", SYSTEM_USER, "-g", SYSTEM_USER, "-m", "0750", str(data)],
        ["chown", "-R", f"{SYSTEM_USER}:{SYSTEM_USER}", str(data)],  # models installed before
    ]
    return ServicePlan(
        kind="systemd",
        user_mode=False,
        path=Path("/etc/systemd/system") / unit,
        content=systemd_unit(_serve_args(exe, data, port, interface), data, user_mode=False),
        data_dir=data,
        before=before,
        enable=[["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", unit]],
        disable=[["systemctl", "disable", "--now", unit]],
        after_remove=[["systemctl", "daemon-reload"]],
        notes=[
            f"logs: journalctl -u {unit} -f",
            f"pair: sudo -u {SYSTEM_USER} {exe} pair --data-dir {data}",
            f"the data folder {data} is kept on uninstall (models, identity, pairings)",
        ],
    )


def _plan_launchd(
    probe: HostProbe,
    exe: Path,
    data_dir: Path | None,
    port: int | None,
    interface: str | None,
    user_mode: bool,
) -> ServicePlan:
    plist_name = f"{LAUNCHD_LABEL}.plist"
    if user_mode:
        data = data_dir or _user_data_dir(probe, "launchd")
        path = probe.home / "Library" / "LaunchAgents" / plist_name
        domain = f"gui/{probe.uid}"
        run_as = None
    else:
        data = data_dir or MACOS_SYSTEM_DATA_DIR
        path = Path("/Library/LaunchDaemons") / plist_name
        domain = "system"
        run_as = probe.user
    return ServicePlan(
        kind="launchd",
        user_mode=user_mode,
        path=path,
        content=launchd_plist(_serve_args(exe, data, port, interface), data, run_as=run_as),
        data_dir=data,
        before=[["mkdir", "-p", str(data / "logs")]]
        + ([] if user_mode else [["chown", "-R", probe.user, str(data)]]),
        enable=[
            ["launchctl", "bootstrap", domain, str(path)],
            ["launchctl", "enable", f"{domain}/{LAUNCHD_LABEL}"],
        ],
        disable=[["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"]],
        notes=[
            f"logs: {data / 'logs'}",
            f"pair: {exe} pair --data-dir {shlex.quote(str(data))}",
        ],
    )


def _plan_termux(
    probe: HostProbe, exe: Path, data_dir: Path | None, port: int | None, interface: str | None
) -> ServicePlan:
    data = data_dir or _user_data_dir(probe, "termux")
    path = probe.home / ".termux" / "boot" / SERVICE_NAME
    return ServicePlan(
        kind="termux",
        user_mode=True,
        path=path,
        content=termux_script(_serve_args(exe, data, port, interface), data),
        data_dir=data,
        mode=0o755,
        notes=[
            "install the Termux:Boot app (F-Droid) and open it once so Android lets it run at boot",
            f"start it now without rebooting: {path}",
            f"logs: {data / 'agent.log'}",
            f"pair: {exe} pair --data-dir {data}",
        ],
    )


def run_command(command: Sequence[str]) -> None:
    """Run one command; a failure raises with its first line of stderr."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False)  # noqa: S603
    except OSError as exc:
        raise ServiceInstallError(f"cannot run {command[0]}: {one_line(exc)}") from None
    if done.returncode != 0:
        reason = one_line(done.stderr or done.stdout or f"exit {done.returncode}")
        raise ServiceInstallError(f"{shlex.join(command)} failed: {reason}")


def install(plan: ServicePlan, runner: Runner = run_command) -> dict[str, object]:
    """Run the preparation, write the file (atomically, with its mode), enable it."""
    for command in plan.before:
        runner(command)
    try:
        atomic_write_text(plan.path, plan.content)
        os.chmod(plan.path, plan.mode)
    except OSError as exc:
        raise ServiceInstallError(
            f"cannot write {plan.path}: {one_line(exc)}; run with sudo or pass --user"
        ) from None
    for command in plan.enable:
        runner(command)
    return {
        "installed": str(plan.path),
        "kind": plan.kind,
        "user": plan.user_mode,
        "data_dir": str(plan.data_dir),
        "notes": plan.notes,
    }


def uninstall(plan: ServicePlan, runner: Runner = run_command) -> dict[str, object]:
    """Stop and disable the service, remove its file; the data folder is kept."""
    warnings: list[str] = []
    if plan.path.exists():
        for command in plan.disable:
            try:
                runner(command)
            except ServiceInstallError as exc:  # not running, not loaded: removal goes on
                warnings.append(str(exc))
    try:
        plan.path.unlink(missing_ok=True)
    except OSError as exc:
        raise ServiceInstallError(
            f"cannot remove {plan.path}: {one_line(exc)}; run with sudo or pass --user"
        ) from None
    for command in plan.after_remove:
        runner(command)
    return {
        "removed": str(plan.path),
        "kind": plan.kind,
        "data_dir_kept": str(plan.data_dir),
        "warnings": warnings,
    }
