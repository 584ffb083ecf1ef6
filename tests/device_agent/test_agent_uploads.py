"""Resumable chunked uploads, and activate / deactivate / uninstall of installed models."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_agent import uploads
from device_agent.auth import KeyPair
from device_agent.client import AgentRejectedError, SignedAuth
from device_agent.uploads import UploadError, UploadManager
from runtimes.fileio import sha256_file
from tests.fakes import EXPECTED, make_image_bytes, make_package

CHUNK = 512  # the fake packages are ~1.5 KiB: a few chunks each


def _serving(client: Any) -> str:
    result = client.infer(make_image_bytes())
    assert result["detections"] == list(EXPECTED)
    return str(result["version"])


def _uploads_dir(agent: Any) -> Path:
    return Path(agent.service.data_dir) / "uploads"


def test_chunked_upload_installs_and_reports_progress(agent: Any, package: Path) -> None:
    progress: list[tuple[int, int]] = []
    size = package.stat().st_size
    with agent.client() as client:
        result = client.upload_package(
            package,
            lambda done, total: progress.append((done, total)),
            chunk_size=CHUNK,
            resumable=True,
        )
        assert (result["name"], result["version"], result["activated"]) == ("shapes", "1", True)
        assert _serving(client) == "1"
    assert progress[-1] == (size, size)
    assert [done for done, _ in progress] == sorted({done for done, _ in progress})
    assert len(progress) == -(-size // CHUNK)
    # only the recorded result is left (a repeated commit answers it), no package bytes
    (folder,) = list(_uploads_dir(agent).iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "result.json"]
    with agent.client() as client:
        again = client.commit_upload(folder.name)
    assert again["version"] == "1" and again["installed_at"] == result["installed_at"]


def test_wrong_offset_is_409_with_the_agents_offset(agent: Any, package: Path) -> None:
    data = package.read_bytes()
    with agent.client() as client:
        upload = client.create_upload(len(data), sha256_file(package), package.name)
        assert (upload["offset"], upload["size"], upload["chunk_size"]) == (0, len(data), 4 << 20)
        assert client.put_chunk(upload["id"], 0, data[:CHUNK])["offset"] == CHUNK
        assert client.upload_status(upload["id"])["offset"] == CHUNK
    url = f"{agent.url}/v1/uploads/{upload['id']}"
    for offset in (0, 2 * CHUNK):
        wrong = httpx.put(
            url, auth=agent.auth(), content=data[offset:], headers={"Upload-Offset": str(offset)}
        )
        assert wrong.status_code == 409
        assert wrong.json()["offset"] == CHUNK
        assert f"resume from {CHUNK}" in wrong.json()["error"]
    missing = httpx.put(url, auth=agent.auth(), content=data[CHUNK:])
    assert missing.status_code == 400 and "Upload-Offset" in missing.json()["error"]
    too_long = httpx.put(
        url, auth=agent.auth(), content=data[CHUNK:] + b"x", headers={"Upload-Offset": str(CHUNK)}
    )
    assert too_long.status_code == 400 and "past the declared size" in too_long.json()["error"]


class FlakyTransport(httpx.BaseTransport):
    """Drops the connection on chosen chunk PUTs: before the agent sees the chunk, or after
    it stored it (the answer is lost)."""

    def __init__(self, before: set[int], after: set[int]) -> None:
        self.inner = httpx.HTTPTransport()
        self.before, self.after = before, after
        self.puts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        is_chunk = request.method == "PUT" and request.url.path.startswith("/v1/uploads/")
        if is_chunk:
            self.puts += 1
            if self.puts in self.before:
                raise httpx.ConnectError("connection refused (test)", request=request)
        response = self.inner.handle_request(request)
        if is_chunk and self.puts in self.after:
            response.read()
            raise httpx.ReadError("connection reset (test)", request=request)
        return response


def test_connection_errors_resume_from_the_agents_offset(agent: Any, package: Path) -> None:
    flaky = FlakyTransport(before={2}, after={4})
    with agent.client(transport=flaky) as client:
        result = client.upload_package(package, chunk_size=CHUNK, resumable=True, backoff_s=0.01)
        assert result["version"] == "1" and _serving(client) == "1"
    chunks = -(-package.stat().st_size // CHUNK)
    # one retry for the chunk that never arrived; the one whose answer was lost is not resent
    assert flaky.puts == chunks + 1


def test_retries_are_bounded(agent: Any, package: Path) -> None:
    flaky = FlakyTransport(before=set(range(2, 100)), after=set())
    with agent.client(transport=flaky) as client, pytest.raises(Exception) as err:
        client.upload_package(package, chunk_size=CHUNK, resumable=True, retries=2, backoff_s=0.01)
    assert "gave up on upload" in str(err.value)
    assert flaky.puts == 4  # the first chunk, then the failing one 1 + 2 times


def test_an_upload_survives_an_agent_restart(
    start_agent: Any, package: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "agent"
    first = start_agent(data_dir)
    data = package.read_bytes()
    with first.client() as client:
        upload = client.create_upload(len(data), sha256_file(package))
        client.put_chunk(upload["id"], 0, data[:CHUNK])
    first.stop()
    second = start_agent(data_dir)
    second._desktop_key = first.desktop_key  # the same paired desktop
    with second.client() as client:
        status = client.upload_status(upload["id"])
        assert (status["offset"], status["size"]) == (CHUNK, len(data))
        client.put_chunk(upload["id"], CHUNK, data[CHUNK:])
        assert client.commit_upload(upload["id"])["version"] == "1"
        assert _serving(client) == "1"


def test_commit_checks_the_whole_sha256(agent: Any, package: Path) -> None:
    data = package.read_bytes()
    with agent.client() as client:
        upload = client.create_upload(len(data), "0" * 64)
        client.put_chunk(upload["id"], 0, data)
        with pytest.raises(AgentRejectedError) as err:
            client.commit_upload(upload["id"])
        assert err.value.status == 422 and "does not match its declared sha256" in err.value.message
        with pytest.raises(AgentRejectedError) as gone:
            client.upload_status(upload["id"])
        assert gone.value.status == 404
        short = client.create_upload(len(data), sha256_file(package))
        client.put_chunk(short["id"], 0, data[:CHUNK])
        with pytest.raises(AgentRejectedError) as early:
            client.commit_upload(short["id"])
        assert early.value.status == 409 and f"from byte {CHUNK}" in early.value.message
        assert client.delete_upload(short["id"]) == {"id": short["id"], "deleted": True}
        with pytest.raises(AgentRejectedError) as deleted:
            client.delete_upload(short["id"])
        assert deleted.value.status == 404
    assert list(_uploads_dir(agent).iterdir()) == []
    assert agent.service.store.models() == []


def test_upload_limits(start_agent: Any, package: Path) -> None:
    free = {"bytes": 1 << 40}
    agent = start_agent(free_space=lambda _path: free["bytes"])
    sha = sha256_file(package)
    with agent.client() as client:
        for size, status, reason in (
            (0, 400, "positive number of bytes"),
            (3 << 30, 413, "larger than"),
        ):
            with pytest.raises(AgentRejectedError) as err:
                client.create_upload(size, sha)
            assert err.value.status == status and reason in err.value.message
        with pytest.raises(AgentRejectedError) as bad_sha:
            client.create_upload(10, "abc")
        assert bad_sha.value.status == 400
        free["bytes"] = 100
        with pytest.raises(AgentRejectedError) as full:
            client.create_upload(1000, sha)
        assert full.value.status == 507 and "not enough disk space" in full.value.message
        free["bytes"] = 1 << 40
        ids = [client.create_upload(10 + i, sha)["id"] for i in range(4)]
        assert len(set(ids)) == 4
        with pytest.raises(AgentRejectedError) as busy:  # all four sent to just now
            client.create_upload(20, sha)
        assert busy.value.status == 429 and "limit 4" in busy.value.message
        assert "retry when one has finished" in busy.value.message
        client.delete_upload(ids[0])
        assert client.create_upload(20, sha)["offset"] == 0


def test_the_same_package_again_resumes_its_unfinished_upload(agent: Any, package: Path) -> None:
    """A deploy that died half-way (desktop restarted) picks up where the agent stands."""
    data = package.read_bytes()
    with agent.client() as client:
        upload = client.create_upload(len(data), sha256_file(package))
        client.put_chunk(upload["id"], 0, data[:CHUNK])
        again = client.create_upload(len(data), sha256_file(package))
        assert (again["id"], again["offset"]) == (upload["id"], CHUNK)
        sent: list[int] = []
        result = client.upload_package(
            package, lambda done, _total: sent.append(done), chunk_size=CHUNK, resumable=True
        )
        assert result["version"] == "1"
    assert sent[0] == 2 * CHUNK  # the first chunk was not sent again


def test_idle_uploads_expire(tmp_path: Path) -> None:
    now = {"t": 1_000_000.0}
    manager = UploadManager(tmp_path / "uploads", ttl_s=3600, clock=lambda: now["t"])
    old = manager.create(4, "a" * 64)
    assert manager.purge_expired() == []
    now["t"] += 2 * 24 * 3600  # data.part's mtime is "now" in real time: also past the ttl
    (tmp_path / "uploads" / old["id"] / "data.part").touch()
    import os

    os.utime(tmp_path / "uploads" / old["id"] / "data.part", (now["t"] - 7200, now["t"] - 7200))
    assert manager.purge_expired() == [old["id"]]
    with pytest.raises(UploadError) as err:
        manager.state(old["id"])
    assert err.value.status == 404
    with pytest.raises(UploadError):
        manager.state("../../etc")


def test_opening_an_upload_reads_only_the_open_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed uploads stay an hour (a repeated commit answers their result): opening a
    new upload looks at their result file's age only, and removes leftovers."""
    import os
    import time

    from device_agent.uploads import COMMITTED_TTL_S, RESULT_FILE

    root = tmp_path / "uploads"
    now = time.time()
    manager = UploadManager(root, clock=lambda: now)
    done = [manager.create(4, f"{i}" * 64)["id"] for i in range(3)]
    for upload_id in done:
        manager.finish(upload_id, {"version": "1"})
    still_open = manager.create(8, "a" * 64)["id"]
    (root / "not-an-upload").mkdir()
    (root / ".new-interrupted").mkdir()
    read: list[str] = []
    real = manager.state
    monkeypatch.setattr(
        manager, "state", lambda upload_id: (read.append(upload_id), real(upload_id))[1]
    )
    new = manager.create(16, "b" * 64)["id"]
    assert still_open in read and not set(read) & set(done)
    assert sorted(p.name for p in root.iterdir()) == sorted([*done, still_open, new])
    old = now - COMMITTED_TTL_S - 60
    os.utime(root / done[0] / RESULT_FILE, (old, old))
    assert manager.purge_expired() == [done[0]]
    assert manager.state(done[1]).committed


# --- activate / deactivate / uninstall ---------------------------------------------------------


def test_staged_install_activate_deactivate_uninstall(
    start_agent: Any, package: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "agent"
    agent = start_agent(data_dir)
    v2 = make_package(tmp_path / "v2.outpost.zip", version="2")
    with agent.client() as client:
        client.upload_package(package)
        staged = client.upload_package(v2, activate=False, chunk_size=CHUNK, resumable=True)
        assert staged["activated"] is False and staged["version"] == "2"
        assert _serving(client) == "1"
        (row,) = client.models()
        assert (row["active"], row["staged"], row["serving"]) == ("1", "2", True)

        switched = client.activate("shapes")
        assert (switched["version"], switched["previous_version"]) == ("2", "1")
        assert _serving(client) == "2"
        back = client.activate("shapes", "1")
        assert (back["version"], back["previous_version"]) == ("1", "2")
        with pytest.raises(AgentRejectedError) as unknown:
            client.activate("shapes", "9")
        assert unknown.value.status == 404 and "no version '9'" in unknown.value.message

        assert client.deactivate("shapes")["serving"] is False
        with pytest.raises(AgentRejectedError) as off:
            client.infer(make_image_bytes())
        assert off.value.status == 409
        assert client.ready()["status"] == "ready"
        (row,) = client.models()
        assert (row["enabled"], row["serving"], row["active"]) == (False, False, "1")
    desktop = agent.desktop_key
    agent.stop()

    agent = start_agent(data_dir)  # a deactivated model stays off across a restart
    agent._desktop_key = desktop
    with agent.client() as client:
        assert client.models()[0]["serving"] is False
        assert client.activate("shapes")["version"] == "1"
        assert _serving(client) == "1"
        with pytest.raises(AgentRejectedError) as refused:
            client.uninstall("shapes")
        assert refused.value.status == 409 and "only model serving" in refused.value.message
        assert _serving(client) == "1"
        assert client.uninstall("shapes", force=True) == {
            "name": "shapes",
            "uninstalled": True,
            "was_serving": True,
        }
        assert client.models() == []
        with pytest.raises(AgentRejectedError) as gone:
            client.uninstall("shapes")
        assert gone.value.status == 404
    assert list((data_dir / "models").iterdir()) == []


def test_uninstall_without_force_when_another_model_serves(
    agent: Any, package: Path, tmp_path: Path
) -> None:
    with agent.client() as client:
        client.upload_package(package)
        client.upload_package(make_package(tmp_path / "boxes.outpost.zip", name="boxes"))
        assert client.uninstall("shapes")["uninstalled"] is True
        assert [m["name"] for m in client.info()["models"]] == ["boxes"]


def test_first_install_without_activation_waits(agent: Any, package: Path) -> None:
    with agent.client() as client:
        result = client.upload_package(package, activate=False)  # the single-shot PUT
        assert result["activated"] is False
        assert client.info()["models"] == []
        assert client.models()[0]["enabled"] is False
        assert client.activate("shapes")["version"] == "1"
        assert _serving(client) == "1"


def test_install_routes_refuse_unpaired_clients(agent: Any, package: Path) -> None:
    with agent.client() as client:
        client.upload_package(package)
        upload = client.create_upload(10, "a" * 64)
    stranger = SignedAuth(KeyPair.generate(), agent_id=agent.service.identity.agent_id)
    routes = [
        ("POST", "/v1/uploads"),
        ("GET", f"/v1/uploads/{upload['id']}"),
        ("PUT", f"/v1/uploads/{upload['id']}"),
        ("DELETE", f"/v1/uploads/{upload['id']}"),
        ("POST", f"/v1/uploads/{upload['id']}/commit"),
        ("GET", "/v1/models"),
        ("POST", "/v1/models/shapes/activate"),
        ("POST", "/v1/models/shapes/deactivate"),
        ("DELETE", "/v1/models/shapes"),
    ]
    for method, path in routes:
        for auth in (None, stranger):
            response = httpx.request(
                method,
                f"{agent.url}{path}",
                content=json.dumps({"size": 10, "sha256": "a" * 64}).encode(),
                headers={"Upload-Offset": "0"},
                auth=auth,
            )
            assert response.status_code == 401, (method, path, response.text)
            assert "not paired" in response.json()["error"]
    with agent.client() as client:
        assert client.upload_status(upload["id"])["offset"] == 0
        assert _serving(client) == "1"


# --- the desktop: outpost deploy / outpost devices activate|deactivate|uninstall|rollback ------


def test_desktop_deploy_and_model_actions_are_recorded(
    ws: Any, agent: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy import select

    from desktop_app.cli import main as outpost
    from desktop_app.core import datasets, devices
    from desktop_app.core.dataset_sample import write_sample_dataset
    from desktop_app.core.models import Deployment
    from device_agent.pairing import issue_code
    from tests.device_agent.desktop_helpers import record_device
    from tests.records import record_export

    write_sample_dataset(tmp_path / "sample", count=4, size=64)
    datasets.import_yolo(ws, tmp_path / "sample", "shapes")
    for version in ("1", "2"):
        package = make_package(tmp_path / "pkgs" / f"v{version}.outpost.zip", version=version)
        record_export(ws, package, export_id=f"exp{version}", version=version)
    device = record_device(ws, agent)
    devices.pair(ws, device, issue_code(agent.service.data_dir).code)

    def run(*argv: str) -> tuple[Any, str]:
        code = outpost([*argv, "--workspace", str(ws.root), "--json"])
        out, err = capfd.readouterr()
        assert code == 0, err
        return json.loads(out), err

    first, err = run("deploy", "exp1", "--device", device, "--provider", "CUDAExecutionProvider")
    assert first["status"] == "installed" and first["activated"] is True
    assert (
        f"WARNING: {device} wanted CUDAExecutionProvider but uses CPUExecutionProvider: "
        "CUDAExecutionProvider is not available on this device" in err
    )
    staged, _ = run("deploy", "exp2", "--device", device, "--no-activate")
    assert staged["activated"] is False
    with agent.client() as client:
        assert _serving(client) == "1"
    assert run("devices", "activate", device, "shapes")[0]["result"]["version"] == "2"
    assert run("devices", "deactivate", device, "shapes")[0]["status"] == "inactive"
    assert run("devices", "activate", device, "shapes")[0]["result"]["version"] == "2"
    rolled, err = run("devices", "rollback", device, "shapes")
    assert rolled["result"]["version"] == "1"
    # back on the version that fell back at its deploy: said again, and recorded
    assert f"WARNING: {device} wanted CUDAExecutionProvider but uses CPUExecutionProvider" in err
    code = outpost(["devices", "uninstall", device, "shapes", "--workspace", str(ws.root)])
    assert code != 0 and "only model serving" in capfd.readouterr().err
    assert run("devices", "uninstall", device, "shapes", "--force")[0]["status"] == "removed"
    with ws.session() as s:
        rows = [
            (d.action, d.status, d.export_id, (d.details or {}).get("version"))
            for d in s.scalars(select(Deployment).order_by(Deployment.id))
        ]
        deploy_details = s.scalars(select(Deployment).order_by(Deployment.id)).first().details
    assert rows == [
        ("deploy", "installed", "exp1", "1"),
        ("deploy", "installed", "exp2", "2"),
        ("activate", "active", "exp2", "2"),
        ("deactivate", "inactive", "exp2", "2"),
        ("activate", "active", "exp2", "2"),
        ("rollback", "active", "exp2", "1"),
        ("uninstall", "failed", "exp2", None),
        ("uninstall", "removed", "exp2", None),
    ]
    assert deploy_details["fallback"]["wanted"] == "CUDAExecutionProvider"
    assert deploy_details["providers"] == ["CPUExecutionProvider"]
    with ws.session() as s:
        rollback = s.scalars(select(Deployment).where(Deployment.action == "rollback")).one()
        assert rollback.details["fallback"]["wanted"] == "CUDAExecutionProvider"
    # the history table has the runtime and the fallback
    assert outpost(["deployments", "history", "--device", device, "--workspace", str(ws.root)]) == 0
    table = capfd.readouterr().out.splitlines()
    assert "fallback" in table[0].split() and "runtime" in table[0].split()
    assert any("CUDAExecutionProvider -> CPUExecutionProvider" in line for line in table[1:])


def test_openapi_describes_the_install_routes(agent: Any) -> None:
    with agent.client() as client:
        spec = client._request("GET", "/v1/openapi.json")
    for route in agent.service.app.router.routes():
        canonical = route.resource.canonical
        if canonical.startswith(("/v1/uploads", "/v1/models")) and route.method != "HEAD":
            if canonical.endswith(("/infer", "/bench")):
                continue  # the inference API's routes are described by their own module
            assert route.method.lower() in spec["paths"][canonical], (route.method, canonical)


def test_a_new_upload_drops_the_one_idle_longest_when_all_are_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deploys cut off by a restart or Ctrl-C leave uploads behind; once four are open, the
    next deploy drops the one idle longest (a minute at least, and no stream on it) instead of
    being refused for a day."""
    now = {"t": time.time()}  # an upload's age counts from its data file's mtime too
    manager = UploadManager(tmp_path / "uploads", clock=lambda: now["t"])
    sha = "0" * 64
    ids = []
    for i in range(4):
        ids.append(manager.create(10 + i, sha)["id"])
        now["t"] += 10
    with pytest.raises(UploadError) as busy:  # the newest was sent to 10 s ago
        manager.create(20, sha)
    assert busy.value.status == 429
    now["t"] += uploads.EVICT_IDLE_S
    held = manager._lock_for(ids[0])  # a stream is on the oldest: it stays
    held.acquire()
    try:
        fifth = manager.create(20, sha)["id"]
    finally:
        held.release()
    assert {s.id for s in manager._scan()} == {ids[0], *ids[2:], fifth}
    with pytest.raises(UploadError) as gone:
        manager.state(ids[1])
    assert gone.value.status == 404
    sixth = manager.create(30, sha)["id"]  # the oldest, let go of by its stream, goes now
    assert {s.id for s in manager._scan()} == {*ids[2:], fifth, sixth}


def test_a_whole_upload_waiting_for_its_commit_is_not_dropped(tmp_path: Path) -> None:
    """A package that arrived whole may wait behind another install: it is never the one
    dropped to make room."""
    now = {"t": time.time()}
    manager = UploadManager(tmp_path / "uploads", clock=lambda: now["t"])
    data = b"x" * 10
    whole = manager.create(len(data), hashlib.sha256(data).hexdigest())["id"]
    manager.write(whole, 0, data)
    for i in range(3):  # three more, incomplete
        manager.create(20 + i, "0" * 64)
    now["t"] += uploads.EVICT_IDLE_S + 3600
    fifth = manager.create(30, "0" * 64)["id"]
    kept = {s.id for s in manager._scan()}
    assert whole in kept and fifth in kept and len(kept) == 4


def test_an_upload_handed_back_to_a_resuming_client_is_not_the_one_dropped(
    tmp_path: Path,
) -> None:
    """A deploy run again resumes its upload; that upload is in use from then on, not the one
    idle longest, so a fifth upload opened before its stream starts drops another."""
    now = {"t": time.time()}
    manager = UploadManager(tmp_path / "uploads", clock=lambda: now["t"])
    shas = [f"{i}" * 64 for i in range(4)]
    ids = []
    for i, sha in enumerate(shas):
        ids.append(manager.create(10 + i, sha)["id"])
        now["t"] += 10
    now["t"] += uploads.EVICT_IDLE_S + 60
    assert manager.create(10, shas[0])["id"] == ids[0]  # resumed: in use again
    fifth = manager.create(30, "9" * 64)["id"]
    assert {s.id for s in manager._scan()} == {ids[0], *ids[2:], fifth}  # ids[1] went
