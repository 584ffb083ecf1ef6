"""The desktop's half of the ``netns`` tests, run inside the desktop namespace.

``python -m tests.netns.desktop_side SPEC`` reads a JSON spec and prints one JSON line:

- ``{"mode": "workspace", ...}``: the Outpost desktop flow on a workspace: browse for agents
  on the desktop's address only (``browse_s`` is the browse deadline), pair each with the
  code its ``outpost-agent pair`` printed, deploy the export to each, run ``infer`` requests
  on each and pull the usage into the workspace.
- ``{"mode": "address", ...}``: the same for one agent that mDNS does not reach: it is
  added by its address (``outpost devices add``).
- ``{"mode": "push", ...}``: pair with one agent, push a package in resumable chunks and
  report the install result and the package's sha256.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from desktop_app.core import devices
from desktop_app.core.workspace import Workspace
from device_agent.auth import KeyPair
from device_agent.client import AgentClient, pair_with_agent
from runtimes.fileio import sha256_file
from tests.fakes import make_image_bytes


def workspace_flow(spec: dict[str, Any]) -> dict[str, Any]:
    interfaces = [spec["interface"]]
    ws = Workspace.open(Path(spec["workspace"]))
    try:
        t0 = time.perf_counter()
        found = devices.discover(ws, interfaces, timeout=float(spec["browse_s"]))
        browse_s = time.perf_counter() - t0
        out: dict[str, Any] = {
            "discovered": sorted(d["id"] for d in found),
            "browse_s": browse_s,
            "deploys": {},
            "detections": {},
            "usage": {},
        }
        image = make_image_bytes()
        for agent_id, code in spec["codes"].items():
            devices.pair(ws, agent_id, code, interfaces)
            result = devices.deploy(ws, spec["export"], agent_id, interfaces)
            out["deploys"][agent_id] = {
                "status": result["status"],
                "installed": result["installed"],
            }
            _, client = devices.connect(ws, agent_id, interfaces)
            with client:
                answers = [client.infer(image) for _ in range(int(spec["requests"]))]
            out["detections"][agent_id] = answers[-1]["detections"]
            out["usage"][agent_id] = devices.pull_usage(ws, agent_id, interfaces)
        return out
    finally:
        ws.close()


def address_flow(spec: dict[str, Any]) -> dict[str, Any]:
    """Where mDNS does not reach: a browse that finds nothing, then the agent added by its
    address (``outpost devices add``), paired, deployed to, asked and its usage pulled."""
    interfaces = [spec["interface"]]
    ws = Workspace.open(Path(spec["workspace"]))
    try:
        found = devices.discover(ws, interfaces, timeout=float(spec["browse_s"]))
        added = devices.add_device(ws, spec["address"])
        agent_id = added["id"]
        devices.pair(ws, agent_id, spec["code"], interfaces)
        deployed = devices.deploy(ws, spec["export"], agent_id, interfaces)
        _, client = devices.connect(ws, agent_id, interfaces)
        with client:
            answer = client.infer(make_image_bytes())
        return {
            "discovered": [d["id"] for d in found],
            "added": added,
            "status": deployed["status"],
            "detections": answer["detections"],
            "usage": devices.pull_usage(ws, agent_id, interfaces),
            "known": devices.list_devices(ws),
        }
    finally:
        ws.close()


def push(spec: dict[str, Any]) -> dict[str, Any]:
    package = Path(spec["package"])
    key = KeyPair.generate()
    pinned = pair_with_agent(spec["url"], key, spec["agent_id"], spec["code"], "netns desktop")
    with AgentClient(spec["url"], key=key, agent_key=pinned, timeout=120.0) as client:
        t0 = time.perf_counter()
        chunk = int(spec["chunk_size"]) or None
        if chunk is None:  # as ``outpost deploy`` does: the protocol is known (a sealed stream)
            client.info()
        result = client.upload_package(package, chunk_size=chunk, resumable=True, retries=20)
        push_s = time.perf_counter() - t0
        detections = client.infer(make_image_bytes())["detections"]
    return {
        "result": result,
        "protocol": client.protocol,
        "push_s": push_s,
        "sha256": sha256_file(package),
        "detections": detections,
    }


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    flows = {"workspace": workspace_flow, "address": address_flow, "push": push}
    out = flows[spec["mode"]](spec)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
