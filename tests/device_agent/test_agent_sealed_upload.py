"""Sealed upload streams (protocol 4): the package goes at once and no side hashes it on the
way; the desktop signs the package's sha256 and its manifest's, and the commit holds the
manifest to that seal and every file to the manifest before anything is installed."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_agent.auth import KeyPair, chain_body_digest, new_nonce, seal_message
from device_agent.client import AgentRejectedError
from device_agent.protocol_version import PROTOCOL
from device_agent.store import INSTALL_RECORD
from device_agent.uploads import (
    CHAIN_CONTENT_TYPE,
    META_FILE,
    PROGRESS_FILE,
    SEALED_CONTENT_TYPE,
    UploadManager,
)
from runtimes.errors import PackageError
from runtimes.package import MANIFEST_NAME, manifest_digest
from tests.device_agent.stream_faults import serving_version
from tests.device_agent.test_agent_chain_upload import (  # noqa: F401 (a fixture)
    PIECE,
    Recorder,
    _chain_put,
    no_desktop_hashing,
    no_hashing,
)
from tests.fakes import make_package


def _manifest_sha(package: Path) -> bytes:
    with zipfile.ZipFile(package) as zf:
        return hashlib.sha256(zf.read(MANIFEST_NAME)).digest()


def _seal(
    key: KeyPair, agent_id: str, upload_id: str, nonce: str, data: bytes, manifest: bytes
) -> bytes:
    whole = hashlib.sha256(data).digest()
    return (
        whole
        + manifest
        + key.sign(seal_message(agent_id, upload_id, nonce, len(data), whole, manifest))
    )


def _sealed_put(agent: Any, upload_id: str, body: bytes, offset: int, nonce: str) -> httpx.Response:
    """A sealed stream of ``body`` from ``offset``, sent chunked (it may end before its seal)."""
    return _chain_put(agent, upload_id, body, offset, 0, nonce, sealed=True)


def _refused_push(agent: Any, package: Path) -> tuple[AgentRejectedError, list[str | None]]:
    """Deploy ``package`` as ``outpost deploy`` does, expecting a refusal: the error and the
    content type of each stream sent."""
    transport = Recorder()
    with agent.client(transport=transport) as client:
        client.info()
        with pytest.raises(AgentRejectedError) as refused:
            client.upload_package(package, resumable=True)
    return refused.value, [s["type"] for s in transport.seen if s["method"] == "PUT"]


def _member_data_offset(package: Path, name: str) -> int:
    """Where member ``name``'s (compressed) bytes start in the zip."""
    with zipfile.ZipFile(package) as zf:
        info = zf.getinfo(name)
    raw = package.read_bytes()
    header = info.header_offset
    name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
    return header + 30 + name_len + extra_len


@pytest.mark.usefixtures("no_desktop_hashing")  # the package's digests file says it all
def test_a_sealed_stream_is_hashed_by_no_one_and_the_commit_checks_the_manifest(
    agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(UploadManager, "_prefix", no_hashing)  # no running sha256 either
    data = package.read_bytes()
    transport = Recorder()
    with agent.client(transport=transport) as client:
        assert client.info()["protocol"] >= 4 and client.protocol == PROTOCOL
        result = client.upload_package(package, resumable=True)
        assert result["version"] == "1" and serving_version(client) == "1"
    stream, commit = [s for s in transport.seen if s["method"] != "GET"]
    assert (stream["type"], stream["opens"], stream["status"]) == (
        SEALED_CONTENT_TYPE,
        str(len(data)),
        200,
    )
    assert commit["status"] == 201
    (folder,) = list((Path(agent.service.data_dir) / "uploads").iterdir())
    assert json.loads((folder / PROGRESS_FILE).read_text()) == {
        "offset": len(data),
        "sha256_verified": False,  # nothing hashed the stream: the seal stands for it
        "sealed": True,
    }
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["manifest_sha256"] == _manifest_sha(package).hex()
    record = json.loads(
        (Path(agent.service.data_dir) / "models" / "shapes" / "1" / INSTALL_RECORD).read_text()
    )
    assert record["package_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_forged_seal_is_refused_and_the_true_one_alone_finishes_the_upload(
    agent: Any, package: Path
) -> None:
    data = package.read_bytes()
    manifest = _manifest_sha(package)
    with agent.client() as client:
        upload = client.create_chained(
            len(data), hashlib.sha256(data[:PIECE]).hexdigest(), None, PIECE
        )
    upload_id, agent_id = upload["id"], agent.service.identity.agent_id
    # signed by a key that is not paired
    nonce = new_nonce()
    body = data + _seal(KeyPair.generate(), agent_id, upload_id, nonce, data, manifest)
    refused = _sealed_put(agent, upload_id, body, 0, nonce)
    assert refused.status_code == 422 and "seal of the stream does not verify" in refused.text
    # signed for another request (its nonce), or sealing another manifest
    body = data + _seal(agent.desktop_key, agent_id, upload_id, new_nonce(), data, manifest)
    assert _sealed_put(agent, upload_id, body, 0, new_nonce()).status_code == 422
    nonce = new_nonce()
    seal = _seal(agent.desktop_key, agent_id, upload_id, nonce, data, manifest)
    forged = seal[:32] + bytes(32) + seal[64:]
    assert _sealed_put(agent, upload_id, data + forged, 0, nonce).status_code == 422
    with agent.client() as client:
        status = client.upload_status(upload_id)
        assert (status["offset"], status["received"]) == (0, len(data))  # kept, not sealed
        with pytest.raises(AgentRejectedError) as early:
            client.commit_upload(upload_id)
        assert early.value.status == 409
    # a chain proof is no seal: the stream's type says which one ends it
    nonce = new_nonce()
    as_chain = httpx.put(
        f"{agent.url}/v1/uploads/{upload_id}",
        auth=agent.auth(),
        content=_seal(agent.desktop_key, agent_id, upload_id, nonce, data, manifest),
        headers={
            "Content-Type": CHAIN_CONTENT_TYPE,
            "Upload-Offset": str(len(data)),
            "Upload-Proof-From": "0",
            "X-Outpost-Nonce": nonce,
            "X-Outpost-Content-SHA256": chain_body_digest(upload_id, len(data), 0, sealed=True),
        },
    )
    assert as_chain.status_code == 401  # the signed body digest names a sealed stream
    # the pieces received stay: the true seal alone finishes the upload
    nonce = new_nonce()
    seal = _seal(agent.desktop_key, agent_id, upload_id, nonce, data, manifest)
    done = _sealed_put(agent, upload_id, seal, len(data), nonce)
    assert done.status_code == 200 and done.json()["offset"] == len(data)
    with agent.client() as client:
        assert client.commit_upload(upload_id)["version"] == "1" and serving_version(client) == "1"


@pytest.mark.parametrize("member", ["model.onnx", MANIFEST_NAME])
def test_bytes_altered_on_the_way_are_refused_at_the_commit_then_sent_again_proven(
    agent: Any, package: Path, tmp_path: Path, member: str
) -> None:
    newer = make_package(tmp_path / "pkgs" / "shapes-2.outpost.zip", version="2")
    flip = _member_data_offset(newer, member) + 5
    uploads = Path(agent.service.data_dir) / "uploads"
    with agent.client() as client:
        client.info()
        assert client.upload_package(package, resumable=True)["version"] == "1"
    transport = Recorder(flip=(1, flip))  # the first stream's byte at ``flip`` is inverted
    with agent.client(transport=transport) as client:
        client.info()
        assert client.upload_package(newer, resumable=True, piece_size=PIECE)["version"] == "2"
        assert serving_version(client) == "2"
    seen = [(s["method"], s["type"], s["status"]) for s in transport.seen if s["method"] != "GET"]
    assert seen == [
        ("PUT", SEALED_CONTENT_TYPE, 200),  # every byte received, the seal verified
        (
            "POST",
            "application/json",
            422,
        ),  # a file does not match the sealed manifest: refused, removed
        ("PUT", CHAIN_CONTENT_TYPE, 200),  # our copy is sound: sent again, every piece proven
        ("POST", "application/json", 201),
    ]
    assert len([f for f in uploads.iterdir() if (f / "result.json").exists()]) == 2


def test_the_agent_refuses_a_sealed_package_altered_on_the_way_with_one_line(
    agent: Any, package: Path, tmp_path: Path
) -> None:
    """What the desktop reads when the agent refuses the commit (and the old version serves)."""
    newer = make_package(tmp_path / "pkgs" / "shapes-2.outpost.zip", version="2")
    with agent.client() as client:
        client.info()
        assert client.upload_package(package, resumable=True)["version"] == "1"
    data = bytearray(newer.read_bytes())
    data[_member_data_offset(newer, "model.onnx") + 5] ^= 0xFF
    with agent.client() as client:
        upload = client.create_chained(
            len(data), hashlib.sha256(data[:PIECE]).hexdigest(), None, PIECE
        )
    upload_id, agent_id = upload["id"], agent.service.identity.agent_id
    nonce = new_nonce()
    body = bytes(data) + _seal(
        agent.desktop_key, agent_id, upload_id, nonce, bytes(data), _manifest_sha(newer)
    )
    assert _sealed_put(agent, upload_id, body, 0, nonce).status_code == 200
    with agent.client() as client:
        with pytest.raises(AgentRejectedError) as refused:
            client.commit_upload(upload_id)
        assert refused.value.status == 422 and refused.value.fields == {"sealed": True}
        assert "model.onnx is damaged in the package" in refused.value.message
        assert "corrupt or altered" in refused.value.message and "\n" not in str(refused.value)
        assert serving_version(client) == "1"
    assert not (Path(agent.service.data_dir) / "uploads" / upload_id).exists()


def test_a_package_that_is_itself_broken_is_not_sent_twice(
    agent: Any, package: Path, tmp_path: Path
) -> None:
    from tests.fakes import rewrite_package

    liar = rewrite_package(
        package,
        tmp_path / "liar.outpost.zip",
        files=lambda name, data: data + b"\0" if name == "model.onnx" else data,
    )
    refused, puts = _refused_push(agent, liar)
    assert "model.onnx" in str(refused)
    assert puts == [SEALED_CONTENT_TYPE]  # our own copy does not verify: no second push


def test_a_manifest_other_than_the_sealed_one_is_refused_before_anything_is_written(
    agent: Any, package: Path
) -> None:
    store = agent.service.store
    with pytest.raises(PackageError) as refused:
        store.install(package, package_sha="ab" * 32, manifest_sha="00" * 32)
    assert "not the one the desktop sealed" in str(refused.value)
    assert not (Path(agent.service.data_dir) / "models" / "shapes").exists()
    sealed = _manifest_sha(package).hex()
    assert store.install(package, package_sha="ab" * 32, manifest_sha=sealed).version == "1"


def test_a_file_that_is_no_package_goes_as_a_chained_stream_for_the_agent_to_refuse(
    agent: Any, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.outpost.zip"
    junk.write_bytes(b"not a zip at all " * 100_000)
    assert manifest_digest(junk) is None
    refused, puts = _refused_push(agent, junk)
    assert "not a package zip" in str(refused) and puts == [CHAIN_CONTENT_TYPE]
