"""``outpost-agent``: run the agent in the foreground, show its identity, or make a pairing code.

``serve`` prints one JSON line on stdout once it answers (``{"event": "ready", ...}``);
everything else goes to stderr. Bad input ends with a one-line reason and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from device_agent import DEFAULT_PORT, __version__
from device_agent.identity import load_or_create_identity
from device_agent.pairing import CODE_TTL_S, Pairing, issue_code
from device_agent.paths import default_data_dir
from device_agent.protocol_version import LOCAL as PROTOCOL_RANGE
from runtimes.errors import OutpostError
from runtimes.pipes import quiet_on_closed_pipe

if TYPE_CHECKING:
    from device_agent.service import AgentService

log = logging.getLogger("device_agent")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0 = any free port), got {value}")
    return value


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an IPv4 address of this machine (e.g. 192.168.1.20), got {text!r}"
        ) from None


def _data_dir(text: str) -> Path:
    """A ``--data-dir``: a folder (made on first use), never "" (the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"must name a folder, got {text!r}; leave --data-dir out for {default_data_dir()}"
        )
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; name a folder")
    return path


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=_data_dir, help=f"state folder (default {default_data_dir()})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="outpost-agent",
        description="Outpost device agent: serves models pushed from the desktop.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"outpost-agent {__version__} (protocol {PROTOCOL_RANGE})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = sub.add_parser("serve", help="run the agent in the foreground until SIGINT/SIGTERM")
    serve.add_argument(
        "--interface", type=_ipv4, help="listen and advertise on this address only (default: all)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT}; 0 = any free)",
    )
    _add_data_dir(serve)
    serve.add_argument(
        "--no-mdns",
        action="store_true",
        help="do not advertise by mDNS (reach the agent by address)",
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--max-concurrency",
        type=_positive,
        help="inferences run at once (default: the CPU count); up to 4x as many wait, "
        "more are refused with 503",
    )
    serve.add_argument(
        "--max-queue",
        type=_non_negative,
        help="inference requests that may wait beside those running (default: 4x "
        "--max-concurrency); more are refused with 503 and Retry-After",
    )
    info = sub.add_parser("info", help="print this agent's id (created on first use)")
    _add_data_dir(info)
    info.add_argument("--json", action="store_true", help="print id, name and data folder as JSON")
    pair = sub.add_parser(
        "pair",
        help=f"print a one-time pairing code for a desktop (single use, valid {CODE_TTL_S // 60} min)",
    )
    _add_data_dir(pair)
    pair.add_argument("--json", action="store_true", help="print code, id and expiry as JSON")
    unpair = sub.add_parser(
        "unpair",
        help="revoke paired desktops (a running agent stops trusting them at once); "
        "without --all or --key, list them",
    )
    _add_data_dir(unpair)
    which = unpair.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="revoke every paired desktop")
    which.add_argument(
        "--key",
        action="append",
        metavar="FINGERPRINT",
        help="revoke the desktop with this key fingerprint (or a unique prefix; repeatable)",
    )
    unpair.add_argument("--json", action="store_true", help="print the desktops as JSON")
    _add_keys_parser(sub)
    _add_service_parsers(sub)
    crashes = sub.add_parser(
        "crashes",
        help="list the packages that crashed the agent while it loaded them, or in inferences "
        "(not loaded again with the same runtimes); --forget to try them again",
    )
    _add_data_dir(crashes)
    crashes.add_argument(
        "--forget", action="store_true", help="forget them all (the agent must be stopped)"
    )
    crashes.add_argument("--json", action="store_true", help="print them as JSON")
    offline = sub.add_parser(
        "install-package",
        help="install a .outpost.zip into the agent's store from a file (offline bundles); "
        "a running agent serves it after a restart",
    )
    offline.add_argument("package", type=Path, help="the .outpost.zip")
    _add_data_dir(offline)
    offline.add_argument("--inactive", action="store_true", help="stage it; keep serving the old")
    offline.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _install_package(args: argparse.Namespace) -> int:
    """Install a package file into the store, holding the data folder's lock (refused while
    an agent serves from it: that agent would go on serving what it loaded)."""
    from device_agent.crashguard import enable_crash_log
    from device_agent.lock import DataDirLock
    from device_agent.store import ModelStore

    package = args.package.absolute()
    if not package.is_file():
        reason = "is a folder" if package.is_dir() else "does not exist"
        raise OutpostError(f"{package} {reason}; pass the .outpost.zip file to install")
    data_dir = args.data_dir or default_data_dir()
    with DataDirLock(data_dir, "install-package"), _sigterm_as_interrupt():
        enable_crash_log(data_dir)  # as serve does: a crash in the load is known at the start
        store = ModelStore(data_dir)
        store.load()
        model = store.install(package, activate=not args.inactive)
    result = model.install_result()
    if args.json:
        print(json.dumps(result))
        return 0
    state = "staged" if args.inactive else "active"
    print(f"installed {model.name} {model.version} ({model.format}, {state})")
    for warning in result["warnings"]:
        print(f"  warning: {warning}")
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a service manager) ends the command with exit 143 by raising
    SystemExit, so an install stopped that way removes its staging folder on the way out
    (the default action would kill it on the spot)."""

    def interrupt(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave the default
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _add_service_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``install-service`` / ``uninstall-service`` (device_agent/service_install.py)."""
    for name, text in (
        ("install-service", "start the agent at boot: systemd, launchd or Termux:Boot"),
        ("uninstall-service", "stop the boot service and remove its file (data is kept)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--user", action="store_true", help="a per-user service (no root; Termux always)"
        )
        p.add_argument(
            "--dry-run", action="store_true", help="print the file and commands; change nothing"
        )
        p.add_argument("--kind", choices=["systemd", "launchd", "termux"], help="skip detection")
        p.add_argument("--data-dir", type=_data_dir, help="state folder (default: per platform)")
        p.add_argument("--executable", type=Path, help="the outpost-agent to run")
        p.add_argument("--port", type=_port, help=f"TCP port (default {DEFAULT_PORT})")
        p.add_argument("--interface", type=_ipv4, help="listen and advertise on this address only")
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def _service(args: argparse.Namespace) -> int:
    from device_agent import service_install as si

    plan = si.plan_service(
        si.probe_host(),
        user_mode=args.user,
        executable=args.executable.absolute() if args.executable else None,
        data_dir=args.data_dir.absolute() if args.data_dir else None,
        port=args.port,
        interface=args.interface,
        kind=args.kind,
    )
    removing = args.command == "uninstall-service"
    if args.executable and not removing:
        si.check_executable(args.executable)
    if args.dry_run:
        if args.json:
            print(json.dumps(plan.to_json(uninstall=removing)))
        else:
            print(plan.describe(uninstall=removing), end="")
        return 0
    result = si.uninstall(plan) if removing else si.install(plan)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'removed' if removing else 'installed'} {plan.kind} service: {plan.path}")
        warnings = result.get("warnings")
        for note in plan.notes if not removing else warnings if isinstance(warnings, list) else []:
            print(f"  {note}")
    return 0


def _positive(text: str) -> int:
    return _at_least(text, 1)


def _non_negative(text: str) -> int:
    return _at_least(text, 0)


def _at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _add_keys_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    keys = sub.add_parser(
        "keys", help="API keys for applications (inference routes only, Authorization: Bearer)"
    )
    keys_sub = keys.add_subparsers(
        dest="keys_command", metavar="ACTION", parser_class=_Parser, required=True
    )
    create = keys_sub.add_parser(
        "create", help="make a key and print it once (only its hash is kept)"
    )
    create.add_argument(
        "--name", required=True, help="a name to tell the key apart (and revoke it)"
    )
    create.add_argument("--scope", default="infer", choices=["infer"], help="what the key opens")
    listing = keys_sub.add_parser("list", help="the keys: name, created, last used, prefix")
    revoke = keys_sub.add_parser("revoke", help="delete a key (a running agent refuses it at once)")
    revoke.add_argument("name", help="the key's name")
    for action in (create, listing, revoke):
        _add_data_dir(action)
        action.add_argument("--json", action="store_true", help="print JSON")


def _keys(args: argparse.Namespace) -> int:
    from device_agent.apikeys import ApiKeys

    keys = ApiKeys(args.data_dir or default_data_dir())
    if args.keys_command == "create":
        key, secret = keys.create(args.name, args.scope)
        if args.json:
            print(json.dumps({**key.public(), "key": secret}))
        else:
            print(f"API key {key.name} (scope {key.scope}); shown once, store it now:")
            print(secret)
            print("use it as: Authorization: Bearer <key> on POST /v1/models/NAME/infer")
        return 0
    if args.keys_command == "revoke":
        key = keys.revoke(args.name)
        print(json.dumps({"revoked": key.public()}) if args.json else f"revoked: {key.name}")
        return 0
    if args.keys_command == "list":
        entries = keys.entries()
        if args.json:
            print(json.dumps({"keys": [k.public() for k in entries]}))
            return 0
        if not entries:
            print("no API key; make one with: outpost-agent keys create --name NAME")
        for k in entries:
            print(
                f"{k.name}  {k.prefix}...  scope {k.scope}  created {k.created_at}  "
                f"last used {k.last_used or 'never'}"
            )
        return 0
    print("outpost-agent keys: choose create, list or revoke; see --help", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    return quiet_on_closed_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return 2
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "pair":
            return _pair(args)
        if args.command == "unpair":
            return _unpair(args)
        if args.command == "keys":
            return _keys(args)
        if args.command in ("install-service", "uninstall-service"):
            return _service(args)
        if args.command == "install-package":
            return _install_package(args)
        if args.command == "crashes":
            return _crashes(args)
        return _info(args)
    except OutpostError as exc:
        print(f"outpost-agent: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


def _crashes(args: argparse.Namespace) -> int:
    """List the remembered crashes, or forget them (holding the data folder's lock)."""
    from device_agent.crashguard import CrashGuard, crash_line
    from device_agent.lock import DataDirLock

    data_dir = args.data_dir or default_data_dir()
    guard = CrashGuard(data_dir)
    if args.forget:
        with DataDirLock(data_dir, "crashes"):
            count = guard.forget()
        if args.json:
            print(json.dumps({"forgotten": count}))
        else:
            print(f"forgot {count} crash{'es' if count != 1 else ''}; they load again when sent")
        return 0
    crashes = guard.remembered()
    if args.json:
        print(json.dumps(crashes))
        return 0
    if not crashes:
        print(f"no package has crashed the agent in {data_dir}")
        return 0
    for crash in crashes:
        print(crash_line(crash))
    return 0


def _info(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or default_data_dir()
    identity = load_or_create_identity(data_dir)
    if args.json:
        print(
            json.dumps(
                {"agent_id": identity.agent_id, "name": identity.name, "data_dir": str(data_dir)}
            )
        )
    else:
        print(identity.agent_id)
    return 0


def _pair(args: argparse.Namespace) -> int:
    """Write a fresh code where the running agent (same --data-dir) will look for it."""
    data_dir = args.data_dir or default_data_dir()
    identity = load_or_create_identity(data_dir)
    issued = issue_code(data_dir)
    if args.json:
        record = {
            "code": issued.code,
            "agent_id": identity.agent_id,
            "fingerprint": identity.key.fingerprint,
            "expires_at": issued.expires_at,
        }
        print(json.dumps(record))
        return 0
    print(f"pairing code: {issued.code}  (single use, valid {CODE_TTL_S // 60} minutes)")
    print(f"agent:        {identity.name} {identity.agent_id}")
    print(f"fingerprint:  {identity.key.fingerprint}")
    print(f"on the desktop run: outpost devices pair {identity.agent_id} --code {issued.code}")
    return 0


def _unpair(args: argparse.Namespace) -> int:
    """Rewrite ``paired.json`` without the chosen desktops (atomically)."""
    pairing = Pairing(args.data_dir or default_data_dir())
    if args.all:
        desktops, verb = pairing.remove_all(), "revoked"
    elif args.key:
        desktops, verb = pairing.remove(args.key), "revoked"
    else:
        desktops, verb = list(pairing.desktops.values()), "paired"
    if args.json:
        print(
            json.dumps(
                {
                    verb: [
                        {k: v for k, v in d.to_json().items() if k != "public_key"}
                        for d in desktops
                    ]
                }
            )
        )
        return 0
    if not desktops:
        print(
            "no desktop is paired"
            if verb == "paired"
            else "no desktop was paired; nothing to revoke"
        )
    for d in desktops:
        print(f"{verb}: {d.fingerprint}  {d.name}  (paired {d.paired_at})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from device_agent.crashguard import enable_crash_log
    from device_agent.service import AgentService  # aiohttp, zeroconf, onnxruntime: only to serve
    from runtimes.allocator import keep_large_buffers

    keep_large_buffers()  # a daemon decoding photos in a loop: no page faults per request

    interface = args.interface if args.interface not in (None, "0.0.0.0") else None
    service = AgentService(
        args.data_dir or default_data_dir(),
        host=interface or "0.0.0.0",
        port=args.port,
        interfaces=[interface] if interface else None,
        advertise=not args.no_mdns,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
    )
    enable_crash_log(service.data_dir)  # a runtime that kills the process says why there
    asyncio.run(_run_until_signalled(service))
    return 0


async def _run_until_signalled(service: AgentService) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    try:
        await service.async_start()
        ready = {
            "event": "ready",
            "agent_id": service.identity.agent_id,
            "name": service.identity.name,
            "host": service.host,
            "port": service.port,
            "url": service.url,
            "mdns": service.advertised,
            # empty while the host has no IPv4 address yet: it is advertised once one comes
            "mdns_addresses": service.advertised_addresses,
            "data_dir": str(service.data_dir),
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()
        log.info("stopping")
    finally:
        await service.async_stop()
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
