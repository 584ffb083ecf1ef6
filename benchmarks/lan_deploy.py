"""Deployment over a simulated LAN: two network namespaces on a bridge (``tests/netns_lan.py``,
the helper the ``netns`` tests use), the agent in one, the desktop side in the other.

Measures, side by side, in one run on one machine:

- push throughput of a ~50 MB package vs a plain ``curl`` GET of the same file over the same
  link (``python -m http.server`` on the agent's host), like for like: curl writes the file
  to disk (the same filesystem as the agent's data folder) as the agent writes the upload,
  neither fsyncs, and both are timed from the first request to the last byte on disk
  (``transfer``: the signed stream, which opens its upload and ends with its seal (protocol 4;
  the desktop reads the protocol from ``/v1/info`` first, as ``outpost deploy`` does), the
  seal checked and the agent's answer; curl's ``time_total``): five pushes and five GETs in turn,
  the median of each. The package comes with its digests file, as every package Outpost
  writes does (``runtimes.package_digests``): the desktop sends it without hashing it. The
  same pushes of a copy without that file (hashed while it is sent) have a row of their own.
  The commit (extraction with every file's sha256 checked and
  fsynced, load, self-test, switch) is reported on its own line, as is curl to
  ``/dev/null``. The ratio is ours / curl in MiB/s
  (goal >= 0.9). With ``OUTPOST_UPLOAD_PROFILE=1`` both sides print their per-request
  timings on stderr;
- discovery time: mDNS browse on the veth address only until the agent is found;
- agent HTTP inference p50 (the desktop's signed request, a 640x640 JPEG photo; and an
  application's request with an API key, from a plain httpx client; each also with the JPEG's
  decoded frame as ``.npy``) vs raw runtime p50 (``session.run`` on the same model in the
  desktop's process), and vs the same prediction (decode to NMS) in the desktop's process:
  what HTTP adds. Then an app on the device itself (a process in the agent's namespace, over
  the host's own address) sends the JPEG and the frame, from httpx and from ``http.client``,
  against raw ``session.run`` in that process, and the requests per second 1, 2 and 4 such
  apps get together (each sending the JPEG and waiting for its answer) against raw
  ``session.run`` back to back. Timed in alternating blocks;
  the model is a yolo11n at 640 px built from its YAML when Ultralytics is installed
  (installed beside the pushed package), else the pushed package's own;
- the agent's resident memory when idle (before and after the model is installed).

Without ``--workspace`` the model is the fake ONNX detector at 640 px, padded with a random
file to ``--size-mb`` (random bytes: zip cannot shrink them); with ``--workspace WS`` it is
that workspace's export (``--export ID``, default the newest), as it is. ``--infer-package P``
times inference with the package ``P`` (a yolo11n built elsewhere by ``runtime_overhead.py
--build-into``, say) on a machine that has no Ultralytics to build one.

Needs root and ``ip netns`` (see the "simulated LAN" recipe in the environment notes):

    sudo .venv/bin/python benchmarks/lan_deploy.py [--runs 30] [--size-mb 50]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netns_lan import Host, Lan  # noqa: E402 (after the path is set)

AGENT_PORT, FILE_PORT = 8765, 8800
APP_IDS = itertools.count()  # each app's API key has a name of its own
CONCURRENT_APPS = (1, 2, 4)  # apps on the device sending at once, for the throughput rows
WARMUP = 5  # untimed calls of each path before the timed blocks (paired_p50s)
REPEATS = 5  # pushes and curl GETs per figure (their medians; a 50 MB push is 0.1 s here)


def curl_get(url: str, target: str) -> float:
    """``curl`` ``url`` into ``target``; its ``time_total`` in seconds."""
    get = subprocess.run(  # noqa: S603
        ["curl", "-sS", "-o", target, "-w", "%{time_total}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(get.stdout)


def preflight() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    from tests.netns_lan import preflight as lan_preflight

    why = lan_preflight()
    if why is None and shutil.which("curl") is None:
        why = "needs curl for the plain HTTP reference transfer"
    return why


def build_fake_package(workdir: Path, size_mb: int) -> Path:
    """The fake detector at 640 px plus ``size_mb`` MB of random padding, as a package."""
    from runtimes.package import write_package
    from tests.fakes import make_detect_onnx, manifest_fields

    onnx_path = make_detect_onnx(workdir / "model.onnx", 640)
    padding = workdir / "padding.bin"
    with open(padding, "wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(1 << 20))
    out = workdir / "pkg" / "lanbench.outpost.zip"
    out.parent.mkdir()
    write_package(
        out,
        manifest_fields("lanbench", "1", 640),
        {"model.onnx": onnx_path, "padding.bin": padding},
    )
    return out


def build_inference_package(workdir: Path) -> Path | None:
    """A yolo11n ONNX package at 640 px (from its YAML, random weights: the same compute as a
    trained one), built in a child process by ``runtime_overhead.py``; None without
    Ultralytics/torch (the inference row then uses the push package's model)."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None or importlib.util.find_spec("torch") is None:
        return None
    out = workdir / "infer"
    out.mkdir()
    build = subprocess.run(  # noqa: S603
        [sys.executable, str(ROOT / "benchmarks" / "runtime_overhead.py"), "--sizes", "640",
         "--build-into", str(out)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    package = out / "bench-640.outpost.zip"
    if build.returncode != 0 or not package.is_file():
        print(f"lan_deploy: no yolo11n package ({build.stderr.strip()[-300:]})", file=sys.stderr)
        return None
    return package


def test_image_jpeg(size: int) -> tuple[bytes, str]:
    """A ``size`` x ``size`` JPEG of a real photograph (the centre of Ultralytics' ``bus.jpg``,
    scaled so its short side is ``size``), or random pixels without Ultralytics' assets."""
    import importlib.util

    import cv2
    import numpy as np

    spec = importlib.util.find_spec("ultralytics")
    photo = None
    if spec is not None and spec.origin:
        photo = cv2.imread(str(Path(spec.origin).parent / "assets" / "bus.jpg"))
    if photo is None:
        img = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
        what = f"{size}x{size} random pixels"
    else:
        h, w = photo.shape[:2]
        scale = size / min(h, w)
        photo = cv2.resize(
            photo, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
        )
        h, w = photo.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        img = np.ascontiguousarray(photo[top : top + size, left : left + size])
        what = f"{size}x{size} crop of bus.jpg"
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), what


def workspace_package(workspace: Path, export_ref: str, workdir: Path) -> Path:
    from desktop_app.core.exports import get_export
    from desktop_app.core.workspace import Workspace
    from runtimes.package_digests import digests_path

    ws = Workspace.open(workspace)
    try:
        exp = get_export(ws, export_ref)
        if exp.package_path is None:
            raise SystemExit(f"lan_deploy: export {exp.id} has no package; export the run again")
        src = ws.resolve(exp.package_path)
    finally:
        ws.close()
    out = workdir / "pkg" / src.name
    out.parent.mkdir()
    shutil.copy2(src, out)  # with its modification time: its digests file still describes it
    if digests_path(src).is_file():
        shutil.copy2(digests_path(src), digests_path(out))
    return out


def paired_p50s(fns: Sequence[Callable[[], object]], runs: int, blocks: int = 5) -> list[float]:
    """p50 ms of each of ``fns`` (``session.run`` in this process, the same prediction from the
    JPEG in this process, the HTTP request), timed in alternating blocks after a warm-up of
    each, so all see the same moments of a noisy machine (blocks, not single calls: ONNX
    Runtime's threads spin after each run)."""
    for fn in fns:
        for _ in range(WARMUP):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    per_block = max(1, -(-runs // blocks))
    for _ in range(blocks):
        for which, fn in enumerate(fns):
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                times[which].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the agent runs under ``ip netns exec``)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def start_agent(
    lan: Lan, host: Host, data_dir: Path, log: Path
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    argv = [sys.executable, "-m", "device_agent", "serve", "--interface", host.ip]
    argv += ["--port", str(AGENT_PORT), "--data-dir", str(data_dir), "--log-level", "WARNING"]
    proc = lan.popen(
        host, argv, stdout=subprocess.PIPE, stderr=open(log, "ab"), cwd=ROOT, text=True
    )  # noqa: SIM115
    ready: dict[str, Any] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if obj.get("event") == "ready":
                    ready.update(obj)
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(90)
    if not ready:
        proc.terminate()
        raise SystemExit(f"lan_deploy: the agent did not start; see {log}")
    return proc, ready


def timed_push(client: Any, package: Path, chunk: int | None) -> tuple[Any, float, float]:
    """Push ``package``: the install result, the transfer's seconds (to the agent's answer to
    the last byte, before the commit) and the whole push's."""
    sent: list[float] = []

    def progress(done: int, total: int) -> None:
        if done >= total:  # the last call follows the agent's answer to the last byte
            sent.append(time.perf_counter())

    t0 = time.perf_counter()
    installed = client.upload_package(package, progress, chunk_size=chunk, resumable=True)
    push = time.perf_counter() - t0
    return installed, (sent[-1] - t0 if sent else push), push


class AppClient:
    """An application's requests to the agent's model ``name``: its own API key, the JPEG as it
    is or its decoded frame as ``.npy`` (serialised per request, as the app would); from a plain
    httpx client (as a Python camera app sends), or with ``stdlib`` from the standard library's
    ``http.client`` (a leaner client, nearer what curl or a C++ app costs)."""

    def __init__(
        self, url: str, data_dir: Path, name: str, jpeg: bytes, *, stdlib: bool = False
    ) -> None:
        import http.client
        from urllib.parse import urlsplit

        import cv2
        import httpx
        import numpy as np

        from device_agent.apikeys import ApiKeys
        from runtimes.preprocess import NPY_CONTENT_TYPE, encode_frame

        _, secret = ApiKeys(data_dir).create(f"lan-benchmark-{os.getpid()}-{next(APP_IDS)}")
        self.auth = {"Authorization": f"Bearer {secret}"}
        where = urlsplit(url)
        self.http, self.conn = (
            (None, http.client.HTTPConnection(where.hostname or "", where.port, timeout=60.0))
            if stdlib
            else (httpx.Client(headers=self.auth, timeout=60.0), None)
        )
        self.path = f"/v1/models/{quote(name, safe='')}/infer"
        self.url = f"{url}{self.path}"
        self.jpeg = jpeg
        self.frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        self.encode_frame, self.npy_type = encode_frame, NPY_CONTENT_TYPE

    def post(self, body: bytes, content_type: str) -> Any:
        if self.http is not None:
            reply = self.http.post(self.url, content=body, headers={"Content-Type": content_type})
            return reply.raise_for_status().json()
        self.conn.request("POST", self.path, body, {**self.auth, "Content-Type": content_type})
        answer = self.conn.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise SystemExit(f"lan_deploy: the agent answered {answer.status}: {data[:200]!r}")
        return json.loads(data)

    def infer_jpeg(self) -> Any:
        return self.post(self.jpeg, "image/jpeg")

    def infer_frame(self) -> Any:
        return self.post(self.encode_frame(self.frame), self.npy_type)

    def close(self) -> None:
        for client in (self.http, self.conn):
            if client is not None:
                client.close()


def throughput(clients: Sequence[AppClient], per_client: int) -> float:
    """Requests per second when ``clients`` send their JPEG ``per_client`` times each, all at
    once, every one waiting for its answer before sending again."""
    start = threading.Barrier(len(clients) + 1)

    def send(client: AppClient) -> None:
        start.wait()
        for _ in range(per_client):
            client.infer_jpeg()

    with ThreadPoolExecutor(len(clients)) as pool:
        sent = [pool.submit(send, client) for client in clients]
        start.wait()
        t0 = time.perf_counter()
        for future in sent:
            future.result()  # an app's failure ends the benchmark with its reason
        elapsed = time.perf_counter() - t0
    return len(clients) * per_client / elapsed


def back_to_back(fn: Callable[[], object], runs: int) -> float:
    """Calls of ``fn`` per second, ``runs`` of them one after another."""
    t0 = time.perf_counter()
    for _ in range(runs):
        fn()
    return runs / (time.perf_counter() - t0)


def device_side(args: argparse.Namespace) -> None:
    """Runs inside the agent's namespace once the desktop side is done: an application on the
    device itself (a camera app beside the agent, over the host's own address: loopback) sends
    the JPEG and its decoded frame, timed in alternating blocks with raw ``session.run`` here."""
    import numpy as np

    from runtimes.predictor import Predictor

    spec = json.loads(args.device_side)
    h, w = spec["model_hw"]
    jpeg, _ = test_image_jpeg(w)
    predictor = Predictor.from_path(Path(spec["infer_package"]))
    url, data_dir = f"http://{spec['agent_ip']}:{AGENT_PORT}", Path(spec["data_dir"])
    app = AppClient(url, data_dir, spec["model"], jpeg)
    lean = AppClient(url, data_dir, spec["model"], jpeg, stdlib=True)
    paths = {
        "app": app.infer_jpeg,
        "app_frame": app.infer_frame,
        "stdlib": lean.infer_jpeg,
        "stdlib_frame": lean.infer_frame,
    }
    try:
        tensor = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
        p50s = paired_p50s([lambda: predictor.backend.run(tensor), *paths.values()], spec["runs"])
        timings = {
            kind: [fn()["timing_ms"] for _ in range(10)]
            for kind, fn in (("jpeg", app.infer_jpeg), ("frame", app.infer_frame))
        }
        per_client = max(5, spec["runs"] // 2)
        rates: dict[str, list[float]] = {}
        for count in CONCURRENT_APPS:
            more = [
                AppClient(url, data_dir, spec["model"], jpeg, stdlib=True) for _ in range(count)
            ]
            try:
                raw_rate = back_to_back(lambda: predictor.backend.run(tensor), per_client * 2)
                rates[str(count)] = [throughput(more, per_client), raw_rate]
            finally:
                for client in more:
                    client.close()
    finally:
        predictor.close()
        app.close()
        lean.close()
    out: dict[str, Any] = {
        "raw_p50_ms": p50s[0],
        **{f"{key}_p50_ms": p50 for key, p50 in zip(paths, p50s[1:], strict=True)},
        "timing_ms": {
            kind: {k: statistics.median(t[k] for t in ts) for k in ts[0]}
            for kind, ts in timings.items()
        },
        "throughput": rates,
    }
    print(json.dumps(out), flush=True)


def desktop_side(args: argparse.Namespace) -> None:
    """Runs inside the desktop namespace: discovery, pairing, push, GET, inference."""
    import numpy as np

    from device_agent.auth import KeyPair
    from device_agent.client import AgentClient, pair_with_agent
    from device_agent.discovery import browse
    from device_agent.pairing import issue_code
    from runtimes.predictor import Predictor

    spec = json.loads(args.desktop_side)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    found = browse([spec["desktop_ip"]], timeout=15.0, want_id=spec["agent_id"])
    out["discovery_s"] = time.perf_counter() - t0
    out["discovered"] = any(d.agent_id == spec["agent_id"] for d in found)

    agent_ip = spec["agent_ip"]
    url = f"http://{agent_ip}:{AGENT_PORT}"
    key = KeyPair.generate()
    code = issue_code(Path(spec["data_dir"])).code
    pinned = pair_with_agent(url, key, spec["agent_id"], code, "lan benchmark")
    package = Path(spec["package"])
    size = package.stat().st_size
    with AgentClient(url, timeout=600.0, key=key, agent_key=pinned) as client:
        client.info()  # as ``outpost deploy`` connects: the agent's protocol is known
        url_get = f"http://{agent_ip}:{FILE_PORT}/{package.name}"
        fetched = Path(spec["get_dir"]) / package.name
        chunk = spec["chunk_mib"] << 20 if spec["chunk_mib"] else None
        transfers: list[float] = []
        pushes: list[float] = []
        gets: list[float] = []
        for _ in range(REPEATS):  # a push, then a GET, in turn: both see the same moments
            installed, transfer, push = timed_push(client, package, chunk)
            pushes.append(push)
            transfers.append(transfer)
            gets.append(curl_get(url_get, str(fetched)))
            if fetched.stat().st_size != size:
                raise SystemExit(
                    f"lan_deploy: curl fetched {fetched.stat().st_size} of {size} bytes"
                )
            fetched.unlink()
        # the same package without its digests file: hashed on the way
        plain = [timed_push(client, Path(spec["package_plain"]), chunk)[1] for _ in range(REPEATS)]
        out["transfer_plain_s"] = statistics.median(plain)
        out["transfer_s"] = statistics.median(transfers)
        out["push_s"] = statistics.median(pushes)
        out["commit_s"] = statistics.median(p - t for p, t in zip(pushes, transfers, strict=True))
        out["get_s"] = statistics.median(gets)
        out["get_null_s"] = statistics.median(
            curl_get(url_get, "/dev/null") for _ in range(REPEATS)
        )
        if spec.get("infer_package"):  # the real detector, installed beside the pushed one
            installed = client.upload_package(Path(spec["infer_package"]))
        h, w = installed["input"]["shape"][2:4] if "shape" in installed["input"] else (640, 640)
        jpeg, out["image"] = test_image_jpeg(int(w))
        name = installed["name"]
        predictor = Predictor.from_path(Path(spec.get("infer_package") or package))
        answered: list[tuple[float, dict[str, float]]] = []  # (ms, the agent's timing_ms)

        def signed(name: str, image: bytes) -> None:
            t0 = time.perf_counter()
            timing = client.infer_model(name, image)["timing_ms"]
            answered.append(((time.perf_counter() - t0) * 1000, timing))

        app = AppClient(url, Path(spec["data_dir"]), installed["name"], jpeg)
        try:
            tensor = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
            p50s = paired_p50s(
                [
                    lambda: predictor.backend.run(tensor),
                    lambda: predictor.predict_bytes(jpeg),
                    lambda: signed(name, jpeg),
                    app.infer_jpeg,
                    lambda: client.infer_model(name, app.frame),
                    app.infer_frame,
                ],
                spec["runs"],
            )
            keys = ("raw", "local", "agent", "app", "frame", "app_frame")
            out.update({f"{key}_p50_ms": p50 for key, p50 in zip(keys, p50s, strict=True)})
        finally:
            predictor.close()
            app.close()
        out["model"], out["model_hw"] = name, [int(h), int(w)]
        out["input_size"] = f"{w}x{h}"
        # the agent's own timing of the very requests timed above, and what each took beyond
        # it (HTTP, signatures, the hand-offs): the same moments of a noisy machine
        timed = answered[WARMUP:]
        timings = [t for _, t in timed]
        out["agent_timing_ms"] = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
        out["agent_outside_ms"] = statistics.median(ms - t["total"] for ms, t in timed)
    out["size"] = size
    print(json.dumps(out), flush=True)


def run_side(lan: Lan, host: Host, side: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run this script's ``--desktop-side`` or ``--device-side`` step on ``host``: its result."""
    proc = lan.popen(
        host,
        [sys.executable, str(Path(__file__).resolve()), f"--{side}-side", json.dumps(spec)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    stdout, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"lan_deploy: the {side} side failed (see above)")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed inferences per path (30)")
    parser.add_argument("--size-mb", type=int, default=50, help="fake package size (50 MB)")
    parser.add_argument("--workspace", type=Path, help="use this workspace's export instead")
    parser.add_argument("--export", default="latest", help="export id with --workspace")
    parser.add_argument(
        "--infer-package",
        type=Path,
        help="time inference with this package (installed beside the pushed one) instead of "
        "a yolo11n built here; for a machine without Ultralytics",
    )
    parser.add_argument(
        "--chunk-mib", type=int, default=0, help="upload chunk size (default: the agent's)"
    )
    parser.add_argument(
        "--link-rate",
        default=None,
        help="cap both hosts' sending rate (tc units, e.g. 1gbit for Gigabit Ethernet); "
        "default: the bare veth, a memory copy",
    )
    parser.add_argument("--desktop-side", help=argparse.SUPPRESS)
    parser.add_argument("--device-side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.desktop_side:
        desktop_side(args)
        return 0
    if args.device_side:
        device_side(args)
        return 0
    why = preflight()
    if why:
        print(f"lan_deploy: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="outpost-lan-") as tmp, Lan() as lan:
        agent_host, desk_host = lan.add_host("agent"), lan.add_host("desk")
        if args.link_rate:
            for host in (agent_host, desk_host):
                lan.shape(host, args.link_rate)
        work = Path(tmp)
        package = (
            workspace_package(args.workspace, args.export, work)
            if args.workspace
            else build_fake_package(work, args.size_mb)
        )
        if args.infer_package:
            infer_package = args.infer_package.resolve()
            infer_model = f"the model of {infer_package.name}"
        else:
            infer_package = None if args.workspace else build_inference_package(work)
            infer_model = (
                "yolo11n (random weights)" if infer_package else f"the model of {package.name}"
            )
        agent, ready = start_agent(lan, agent_host, work / "agent", work / "agent.log")
        files = lan.popen(
            agent_host,
            [sys.executable, "-m", "http.server", str(FILE_PORT), "--bind", agent_host.ip],
            cwd=package.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            plain = work / "plain" / package.name  # a copy without the digests file
            plain.parent.mkdir()
            shutil.copyfile(package, plain)
            time.sleep(1.0)  # let the agent settle before measuring its idle memory
            idle_empty = rss_mib(agent.pid)
            spec = {
                "agent_id": ready["agent_id"],
                "data_dir": str(work / "agent"),
                "package": str(package),
                "package_plain": str(plain),
                "runs": args.runs,
                "chunk_mib": args.chunk_mib,
                "agent_ip": agent_host.ip,
                "desktop_ip": desk_host.ip,
                "get_dir": str(work / "curl"),  # beside the agent's data folder: same disk
                "infer_package": str(infer_package) if infer_package else None,
            }
            (work / "curl").mkdir()
            result = run_side(lan, desk_host, "desktop", spec)
            time.sleep(1.0)
            idle_loaded = rss_mib(agent.pid)
            local = {
                **spec,
                "model": result["model"],
                "model_hw": result["model_hw"],
                "infer_package": spec["infer_package"] or spec["package"],
            }
            on_device = run_side(lan, agent_host, "device", local)
        finally:
            for proc in (files, agent):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(20)
        with contextlib.suppress(OSError):  # OUTPOST_UPLOAD_PROFILE=1: the agent's timings
            for line in (work / "agent.log").read_text(errors="replace").splitlines():
                if '"upload_profile"' in line:
                    print(line, file=sys.stderr)
    mib = result["size"] / (1 << 20)
    push_mbs, get_mbs = mib / result["transfer_s"], mib / result["get_s"]
    push_ratio = push_mbs / get_mbs
    raw_p50, input_size = result["raw_p50_ms"], result["input_size"]
    infer_ratio = result["agent_p50_ms"] / raw_p50
    height, width = result["model_hw"]
    frame_mb = height * width * 3 / 1e6
    link = f"capped at {args.link_rate} each way" if args.link_rate else "no rate cap"
    print(f"package: {package.name}, {mib:.1f} MiB; link: veth pairs on a bridge ({link})")
    print(f"{'measure':<40}{'outpost':>10}{'reference':>11}{'ratio':>8}  goal")
    rows = [
        (
            "transfer (MiB/s) vs curl GET to a file",
            push_mbs,
            get_mbs,
            push_ratio,
            f">= 0.90x: {'yes' if push_ratio >= 0.9 else 'NO'}",
        ),
        ("  transfer time (s) vs curl time_total", result["transfer_s"], result["get_s"], None, ""),
        (
            "  without its digests file (MiB/s)",
            mib / result["transfer_plain_s"],
            get_mbs,
            mib / result["transfer_plain_s"] / get_mbs,
            "(hashed while it is sent)",
        ),
        (
            f"inference p50 {input_size} (ms) vs raw",
            result["agent_p50_ms"],
            raw_p50,
            infer_ratio,
            f"<= 1.10x: {'yes' if infer_ratio <= 1.10 else 'NO'}",
        ),
        (
            "  an application's request, API key (ms)",
            result["app_p50_ms"],
            raw_p50,
            result["app_p50_ms"] / raw_p50,
            "(plain httpx, as a camera app sends)",
        ),
        (
            "  its decoded frame (.npy), API key (ms)",
            result["app_frame_p50_ms"],
            raw_p50,
            result["app_frame_p50_ms"] / raw_p50,
            f"({frame_mb:.1f} MB of pixels on the link, no decode)",
        ),
        (
            "  its decoded frame (.npy), signed (ms)",
            result["frame_p50_ms"],
            raw_p50,
            result["frame_p50_ms"] / raw_p50,
            "",
        ),
        (
            "  vs the same predict in-process (ms)",
            result["agent_p50_ms"],
            result["local_p50_ms"],
            result["agent_p50_ms"] / result["local_p50_ms"],
            "(decode to NMS, no HTTP)",
        ),
    ]
    print(f"inference: {infer_model}, one {result['image']} JPEG, {args.runs} runs, p50")
    for label, ours, ref, ratio, goal in rows:
        shown = f"{ratio:>7.2f}x" if ratio is not None else " " * 8
        print(f"{label:<40}{ours:>10.2f}{ref:>11.2f}{shown}  {goal}")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in result["agent_timing_ms"].items())
    print(f"  the agent's own timing (ms, p50 of the requests above): {parts}")
    # What any server does to a JPEG besides the runtime call, whatever its transport: with
    # nothing else (no HTTP, no hand-off), the agent could be no nearer raw than this.
    own = result["agent_timing_ms"]
    floor_ms = own["decode"] + own["preprocess"] + own["postprocess"]
    print(
        f"  the image's own work (decode, letterbox, NMS): {floor_ms:.2f} ms, so no less than "
        f"{(raw_p50 + floor_ms) / raw_p50:.2f}x raw before any HTTP; HTTP, signatures and "
        f"hand-offs: {result['agent_outside_ms']:.2f} ms"
    )
    device_raw = on_device["raw_p50_ms"]
    print("inference by an app on the device (beside the agent: the host's own address), API key")
    for label, key, note in (
        ("  the JPEG (ms) vs raw", "app_p50_ms", " (httpx)"),
        ("  its decoded frame (.npy) (ms) vs raw", "app_frame_p50_ms", " (httpx)"),
        ("  the JPEG (ms) vs raw", "stdlib_p50_ms", " (http.client)"),
        ("  its decoded frame (.npy) (ms) vs raw", "stdlib_frame_p50_ms", " (http.client)"),
    ):
        ratio = on_device[key] / device_raw
        goal = f"<= 1.10x: {'yes' if ratio <= 1.10 else 'NO'}{note}"
        print(f"{label:<40}{on_device[key]:>10.2f}{device_raw:>11.2f}{ratio:>7.2f}x  {goal}")
    for kind, timing in on_device["timing_ms"].items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in timing.items())
        print(f"  the agent's own timing, {kind} (ms, p50 of 10): {parts}")
    print("throughput of apps on the device, JPEG (req/s) vs raw session.run back to back (/s)")
    for count, (ours, raw_rate) in on_device["throughput"].items():
        label = f"  {count} app{'s' if count != '1' else ''} at once (http.client)"
        print(f"{label:<40}{ours:>10.2f}{raw_rate:>11.2f}{ours / raw_rate:>7.2f}x")
    print(f"{'commit + install (s), after the transfer':<40}{result['commit_s']:>10.2f}")
    print(f"{'push incl. install (s)':<40}{result['push_s']:>10.2f}")
    print(f"{'curl GET to /dev/null (s), for scale':<40}{'':>10}{result['get_null_s']:>11.2f}")
    found = "found" if result["discovered"] else "NOT found"
    print(f"{'discovery (mDNS, veth only) (s)':<40}{result['discovery_s']:>10.2f}  ({found})")
    print(f"{'agent idle RSS, no model (MiB)':<40}{idle_empty:>10.1f}")
    print(f"{'agent idle RSS, model loaded (MiB)':<40}{idle_loaded:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
