"""A simulated LAN in network namespaces: real agent processes, a real desktop, real mDNS.

One desktop and three agents on a bridge: all three are discovered by the desktop's mDNS
browse on its own LAN address within a 2 s browse deadline, paired with the codes their
``outpost-agent pair`` printed, deployed to, asked for inferences, and their usage pulled
into the workspace. Then the same push over a link that drops 1 % of the packets both ways
and is rate limited completes, and the agent's copy matches the package's sha256. And a desktop
that hears no multicast (mDNS dropped) adds the agent by its address and uses it.

Run with ``make test-netns`` (root and ``ip netns``; the lossy link also needs ``nft`` and
``tc``). Every name is unique to the run and the namespaces go away even when a test fails.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import select

from desktop_app.core import datasets
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.models import Deployment, UsageSample
from desktop_app.core.workspace import Workspace
from device_agent.protocol_version import PROTOCOL
from runtimes.package import write_package
from tests.fakes import EXPECTED, make_detect_onnx, make_package, manifest_fields
from tests.netns_lan import Host, Lan, preflight
from tests.records import record_export

ROOT = Path(__file__).resolve().parents[2]
AGENT_PORT = 8765
BROWSE_DEADLINE_S = 2.0
REQUESTS = 3

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(preflight() is not None, reason=f"simulated LAN: {preflight()}"),
    pytest.mark.timeout(300),
]


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A bridge namespace, removed with every host, process and nftables table at teardown."""
    with Lan() as built:
        yield built


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def start_agents(lan: Lan, hosts: list[Host], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """``outpost-agent serve`` on each host's address; their ready lines by host name."""
    waiting = []
    for host in hosts:
        argv = [sys.executable, "-m", "device_agent", "serve", "--interface", host.ip]
        argv += ["--port", str(AGENT_PORT), "--data-dir", str(tmp_path / host.name)]
        log = open(tmp_path / f"{host.name}.log", "w")  # noqa: SIM115 (the process keeps it)
        proc = lan.popen(
            host, argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=_env()
        )
        log.close()
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        waiting.append((host, lines))
    ready = {}
    for host, lines in waiting:
        try:
            ready[host.name] = json.loads(lines.get(timeout=90))
        except queue.Empty:
            log_text = (tmp_path / f"{host.name}.log").read_text()
            pytest.fail(f"agent on {host.name} did not start:\n{log_text}")
        assert ready[host.name]["event"] == "ready" and ready[host.name]["host"] == host.ip
    return ready


def pairing_code(lan: Lan, host: Host, data_dir: Path) -> str:
    """A code from ``outpost-agent pair`` run on the device, as a user would."""
    argv = [sys.executable, "-m", "device_agent", "pair", "--json", "--data-dir", str(data_dir)]
    done = lan.run(host, argv, cwd=ROOT, env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["code"])


def desktop(lan: Lan, host: Host, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the desktop's half inside ``host`` and return its JSON answer."""
    argv = [sys.executable, "-m", "tests.netns.desktop_side", json.dumps(spec)]
    done = lan.run(host, argv, cwd=ROOT, env=_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def workspace_with_export(root: Path, package: Path) -> Workspace:
    """A workspace holding export ``exp1`` of model ``shapes`` (the given package)."""
    ws = Workspace.open(root / "ws")
    write_sample_dataset(root / "sample", count=4, size=64)
    datasets.import_yolo(ws, root / "sample", "shapes")
    record_export(ws, package)
    return ws


def workspace_spec(tmp_path: Path, desk: Host, mode: str, **more: Any) -> dict[str, Any]:
    """The desktop side's spec for a flow on the workspace ``workspace_with_export`` made:
    export ``exp1``, browsing on the desktop's address with the 2 s deadline."""
    return {
        "mode": mode,
        "workspace": str(tmp_path / "ws"),
        "interface": desk.ip,
        "browse_s": BROWSE_DEADLINE_S,
        "export": "exp1",
        **more,
    }


def test_three_agents_discovered_paired_deployed_and_usage_pulled(lan: Lan, tmp_path: Path) -> None:
    desk = lan.add_host("desk")
    agents = [lan.add_host(f"agent{i}") for i in range(1, 4)]
    ready = start_agents(lan, agents, tmp_path)
    ids = {host.name: str(ready[host.name]["agent_id"]) for host in agents}
    codes = {ids[h.name]: pairing_code(lan, h, tmp_path / h.name) for h in agents}
    package = make_package(tmp_path / "pkgs" / "shapes-1.outpost.zip")
    ws = workspace_with_export(tmp_path, package)
    ws.close()

    answer = desktop(
        lan, desk, workspace_spec(tmp_path, desk, "workspace", codes=codes, requests=REQUESTS)
    )

    # every agent answered the one browse, whose deadline was 2 s
    assert answer["discovered"] == sorted(ids.values())
    for agent_id in ids.values():
        deployed = answer["deploys"][agent_id]
        assert deployed["status"] == "installed" and deployed["installed"]["name"] == "shapes"
        assert answer["detections"][agent_id] == list(EXPECTED)
        (usage,) = answer["usage"][agent_id]
        assert (usage["model"], usage["requests"], usage["errors"]) == ("shapes", REQUESTS, 0)
    ws = Workspace.open(tmp_path / "ws")
    try:
        with ws.session() as s:
            samples = {u.device_id: u for u in s.scalars(select(UsageSample))}
            deployed_to = {d.device_id for d in s.scalars(select(Deployment))}
    finally:
        ws.close()
    assert set(samples) == set(ids.values()) == deployed_to
    for sample in samples.values():
        assert sample.requests == REQUESTS and sample.p50_ms > 0
        assert sample.throughput_rps > 0  # the requests fell in the agent's last minute


@pytest.mark.skipif(preflight(impair=True) is not None, reason=f"{preflight(impair=True)}")
def test_an_agent_mdns_does_not_reach_is_added_by_address_and_used(
    lan: Lan, tmp_path: Path
) -> None:
    desk = lan.add_host("desk")
    agent = lan.add_host("agent1")
    lan.drop_multicast(desk)  # guest Wi-Fi, a managed switch: no mDNS to or from the desktop
    (ready,) = start_agents(lan, [agent], tmp_path).values()
    assert ready["mdns"] is True  # the agent advertises; the desktop never hears it
    code = pairing_code(lan, agent, tmp_path / agent.name)
    ws = workspace_with_export(tmp_path, make_package(tmp_path / "pkgs" / "shapes-1.outpost.zip"))
    ws.close()

    address = f"{agent.ip}:{AGENT_PORT}"
    answer = desktop(
        lan, desk, workspace_spec(tmp_path, desk, "address", address=address, code=code)
    )

    assert answer["discovered"] == []  # mDNS did not reach it
    assert (answer["added"]["id"], answer["added"]["address"]) == (ready["agent_id"], agent.ip)
    assert answer["status"] == "installed"
    assert answer["detections"] == list(EXPECTED)
    (usage,) = answer["usage"]
    assert (usage["model"], usage["requests"]) == ("shapes", 1)
    (known,) = answer["known"]
    assert (known["id"], known["address"], known["port"], known["paired"]) == (
        ready["agent_id"],
        agent.ip,
        AGENT_PORT,
        True,
    )


@pytest.mark.skipif(preflight(impair=True) is not None, reason=f"{preflight(impair=True)}")
@pytest.mark.parametrize("chunk_size", [1 << 20, 0], ids=["chunks", "sealed-stream"])
def test_push_over_a_lossy_rate_limited_link_completes_and_verifies(
    lan: Lan, tmp_path: Path, chunk_size: int
) -> None:
    desk = lan.add_host("desk")
    agent = lan.add_host("agent1")
    # 1 % of the desktop's packets dropped both ways; its sending rate capped at 16 Mbit/s
    lan.impair(desk, loss_percent=1, rate="16mbit")
    (ready,) = start_agents(lan, [agent], tmp_path).values()
    code = pairing_code(lan, agent, tmp_path / agent.name)
    work = tmp_path / "pkg"
    work.mkdir()
    padding = work / "padding.bin"
    padding.write_bytes(os.urandom(3 << 20))  # random: zip cannot shrink it
    package = work / "shapes-1.outpost.zip"
    write_package(
        package,
        manifest_fields("shapes", "1"),
        {"model.onnx": make_detect_onnx(work / "model.onnx"), "padding.bin": padding},
    )

    answer = desktop(
        lan,
        desk,
        {
            "mode": "push",
            "url": f"http://{agent.ip}:{AGENT_PORT}",
            "agent_id": ready["agent_id"],
            "code": code,
            "package": str(package),
            "chunk_size": chunk_size,  # 0: one stream, as outpost deploy sends it
        },
    )

    assert answer["result"]["name"] == "shapes" and answer["result"]["activated"] is True
    assert answer["detections"] == list(EXPECTED)
    assert answer["protocol"] == (PROTOCOL if chunk_size == 0 else None)  # read for the stream only
    # chunks: the agent verified the whole package against this sha256 before installing it;
    # a sealed stream: it is the desktop's signed name for it, and every file was checked
    folder = tmp_path / agent.name / "models" / "shapes" / "1"
    record = json.loads((folder / ".outpost-install.json").read_text())
    assert record["package_sha256"] == answer["sha256"]
    assert (folder / "padding.bin").read_bytes() == padding.read_bytes()
