"""Chained upload streams (protocol 2): the package goes at once, hashed once on each side,
and a signed proof at the end of the stream verifies every piece before it counts. (Sealed
streams, protocol 4, are in ``test_agent_sealed_upload``.)"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from device_agent import http_api, uploads
from device_agent.auth import KeyPair, chain_body_digest, new_nonce, proof_message
from device_agent.client import AgentClient, AgentRejectedError
from device_agent.protocol_version import PROTOCOL, PROTOCOL_MIN
from device_agent.uploads import (
    CHAIN_CONTENT_TYPE,
    DATA_FILE,
    META_FILE,
    PIECES_CONTENT_TYPE,
    PROGRESS_FILE,
    SEALED_CONTENT_TYPE,
    VOLATILE_FILE,
    ChainWriter,
    UploadError,
    UploadManager,
)
from tests.device_agent.stream_faults import AlteredStream, serving_version

PIECE = 256  # the fake packages are ~1.5 KiB: several pieces each


class Recorder(httpx.BaseTransport):
    """Records every upload request (method, content type, offsets, JSON body); on the
    ``cut``-th chained PUT breaks the connection after that many body bytes, on the
    ``flip``-th flips the body byte at that position."""

    def __init__(
        self,
        *,
        cut: tuple[int, int] | None = None,
        flip: tuple[int, int] | None = None,
        unreachable_puts: int = 0,
    ):
        self.inner = httpx.HTTPTransport()
        self.cut, self.flip = cut, flip
        self.unreachable_puts = unreachable_puts  # the first PUTs fail before they connect
        self.seen: list[dict[str, Any]] = []
        self.puts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/v1/uploads"):
            return self.inner.handle_request(request)
        entry: dict[str, Any] = {
            "method": request.method,
            "type": request.headers.get("Content-Type"),
            "offset": request.headers.get("Upload-Offset"),
            "proof_from": request.headers.get("Upload-Proof-From"),
            "opens": request.headers.get("Upload-Length"),
        }
        if request.method == "POST" and not request.url.path.endswith("/commit"):
            entry["body"] = json.loads(request.read())
        if request.method == "PUT":
            self.puts += 1
            if self.puts <= self.unreachable_puts:
                entry["status"] = "unreachable"
                self.seen.append(entry)
                raise httpx.ConnectError("connection refused (test)", request=request)
            cut = self.cut[1] if self.cut and self.cut[0] == self.puts else None
            flip = self.flip[1] if self.flip and self.flip[0] == self.puts else None
            if cut is not None or flip is not None:
                request.stream = AlteredStream(request.stream, cut, flip, request)
        self.seen.append(entry)
        response = self.inner.handle_request(request)
        response.read()
        entry["status"] = response.status_code
        return response


def _folder(agent: Any, upload_id: str) -> Path:
    return Path(agent.service.data_dir) / "uploads" / upload_id


def _proof(
    key: KeyPair, agent_id: str, upload_id: str, nonce: str, data: bytes, start: int
) -> bytes:
    ends = [*range(start + PIECE, len(data), PIECE), len(data)]
    digests = b"".join(hashlib.sha256(data[:end]).digest() for end in ends)
    return digests + key.sign(proof_message(agent_id, upload_id, nonce, start, digests))


def _chain_put(
    agent: Any,
    upload_id: str,
    body: bytes,
    offset: int,
    start: int,
    nonce: str,
    sealed: bool = False,
) -> httpx.Response:
    """A chained stream of ``body`` (``sealed``: a sealed one), sent chunked (no length: it
    may end before its proof)."""
    return httpx.put(
        f"{agent.url}/v1/uploads/{upload_id}",
        auth=agent.auth(),
        content=iter([body]),
        headers={
            "Content-Type": SEALED_CONTENT_TYPE if sealed else CHAIN_CONTENT_TYPE,
            "Upload-Offset": str(offset),
            "Upload-Proof-From": str(start),
            "X-Outpost-Nonce": nonce,
            "X-Outpost-Content-SHA256": chain_body_digest(upload_id, offset, start, sealed),
        },
    )


def test_the_agent_speaks_protocol_5_and_still_accepts_1(agent: Any) -> None:
    assert (PROTOCOL, PROTOCOL_MIN) == (5, 1)
    with agent.client() as client:
        info = client.info()
        assert (info["protocol"], info["protocol_min"]) == (5, 1) and client.protocol == 5


def test_a_chained_upload_sends_at_once_and_verifies_every_piece(agent: Any, package: Path) -> None:
    data = package.read_bytes()
    transport = Recorder()
    progress: list[tuple[int, int]] = []
    with agent.client(transport=transport) as client:
        result = client.upload_package(
            package, lambda d, t: progress.append((d, t)), resumable=True, piece_size=PIECE
        )
        assert (result["name"], result["version"]) == ("shapes", "1") and serving_version(
            client
        ) == "1"
    create, stream, commit = transport.seen
    # opened with the first piece's digest only: nothing read the whole file before sending
    assert create["body"] == {
        "size": len(data),
        "piece_size": PIECE,
        "head_sha256": hashlib.sha256(data[:PIECE]).hexdigest(),
        "name": package.name,
    }
    assert (stream["type"], stream["offset"], stream["proof_from"]) == (
        CHAIN_CONTENT_TYPE,
        "0",
        "0",
    )
    assert stream["status"] == 200 and commit["status"] == 201
    assert progress[-1] == (len(data), len(data))
    (folder,) = list((Path(agent.service.data_dir) / "uploads").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == [META_FILE, PROGRESS_FILE, "result.json"]
    assert json.loads((folder / PROGRESS_FILE).read_text()) == {
        "offset": len(data),
        "sha256_verified": True,  # the proof's last digest: commit did not read the file again
    }
    assert (
        json.loads((folder / META_FILE).read_text())["sha256"] == hashlib.sha256(data).hexdigest()
    )


def test_a_broken_chain_keeps_its_pieces_and_the_next_stream_proves_them(
    agent: Any, package: Path
) -> None:
    transport = Recorder(cut=(1, 3 * PIECE + 40))
    with agent.client(transport=transport) as client:
        result = client.upload_package(package, resumable=True, piece_size=PIECE, backoff_s=0.01)
        assert result["version"] == "1" and serving_version(client) == "1"
    first, *rest = [s for s in transport.seen if s["method"] == "PUT"]
    assert (first["offset"], first["proof_from"]) == ("0", "0") and rest
    # each resume starts after the pieces received so far (no further than the first stream
    # carried) and its proof covers them too; the last one verified everything
    assert all(int(s["offset"]) % PIECE == 0 and int(s["offset"]) <= 3 * PIECE for s in rest)
    assert all(s["proof_from"] == "0" for s in rest) and rest[-1]["status"] == 200


def test_a_received_piece_that_does_not_match_the_proof_is_cut(agent: Any, package: Path) -> None:
    data = package.read_bytes()
    with agent.client() as client:
        upload = client.create_chained(
            len(data), hashlib.sha256(data[:PIECE]).hexdigest(), None, PIECE
        )
    upload_id = upload["id"]
    key, agent_id = agent.desktop_key, agent.service.identity.agent_id
    # a first stream ends after three pieces, without its proof; the link altered one byte
    # of the second piece on the way
    folder = _folder(agent, upload_id)
    bad = bytearray(data[: 3 * PIECE])
    bad[PIECE + 9] ^= 0x01
    broken = _chain_put(agent, upload_id, bytes(bad), 0, 0, new_nonce())
    assert broken.status_code == 400  # the stream ended early, without its proof
    with AgentClient(agent.url, key=key, agent_key=agent.service.identity.key.public_raw) as c:
        status = c.upload_status(upload_id)
    assert (status["offset"], status["received"]) == (0, 3 * PIECE)  # kept, not verified
    nonce = new_nonce()
    body = data[3 * PIECE :] + _proof(key, agent_id, upload_id, nonce, data, 0)
    refused = _chain_put(agent, upload_id, body, 3 * PIECE, 0, nonce)
    assert refused.status_code == 422 and refused.json()["offset"] == PIECE
    assert "piece 1 " in refused.json()["error"] and "does not match" in refused.json()["error"]
    assert (folder / DATA_FILE).read_bytes() == data[:PIECE]  # cut at the piece: nothing more
    assert json.loads((folder / PROGRESS_FILE).read_text())["offset"] == PIECE
    nonce = new_nonce()
    body = data[PIECE:] + _proof(key, agent_id, upload_id, nonce, data, PIECE)
    done = _chain_put(agent, upload_id, body, PIECE, PIECE, nonce)
    assert done.status_code == 200 and done.json()["offset"] == len(data)


def test_a_forged_proof_or_request_is_refused(agent: Any, package: Path) -> None:
    data = package.read_bytes()
    with agent.client() as client:
        upload = client.create_chained(
            len(data), hashlib.sha256(data[:PIECE]).hexdigest(), None, PIECE
        )
    upload_id, agent_id = upload["id"], agent.service.identity.agent_id
    folder = _folder(agent, upload_id)
    # the bytes and the digests of someone else's package, signed by a key not paired
    other = KeyPair.generate()
    nonce = new_nonce()
    body = data + _proof(other, agent_id, upload_id, nonce, data, 0)
    refused = _chain_put(agent, upload_id, body, 0, 0, nonce)
    assert refused.status_code == 422 and "proof of the stream does not verify" in refused.text
    assert json.loads((folder / PROGRESS_FILE).read_text())["offset"] == 0  # nothing verified
    # a proof signed for another request (its nonce) does not verify either
    body = data + _proof(agent.desktop_key, agent_id, upload_id, new_nonce(), data, 0)
    assert _chain_put(agent, upload_id, body, 0, 0, new_nonce()).status_code == 422
    # the request's signed body digest binds it to its offsets
    nonce = new_nonce()
    forged = httpx.put(
        f"{agent.url}/v1/uploads/{upload_id}",
        auth=agent.auth(),
        content=body,
        headers={
            "Content-Type": CHAIN_CONTENT_TYPE,
            "Upload-Offset": "0",
            "Upload-Proof-From": "0",
            "X-Outpost-Nonce": nonce,
            "X-Outpost-Content-SHA256": chain_body_digest(upload_id, PIECE, 0),
        },
    )
    assert forged.status_code == 401 and "signed sha256" in forged.json()["error"]
    # the agent's own proof of the package verifies; the upload commits
    nonce = new_nonce()
    body = data + _proof(agent.desktop_key, agent_id, upload_id, nonce, data, 0)
    assert _chain_put(agent, upload_id, body, 0, 0, nonce).status_code == 200
    with agent.client() as client:
        assert client.commit_upload(upload_id)["version"] == "1" and serving_version(client) == "1"


def test_a_restarted_desktop_resumes_only_its_own_package(agent: Any, package: Path) -> None:
    data = package.read_bytes()
    head = hashlib.sha256(data[:PIECE]).hexdigest()
    with agent.client() as client:
        upload = client.create_chained(len(data), head, None, PIECE)
    # another package of the same size and first piece was half sent before
    other = data[: 2 * PIECE] + bytes(b ^ 0x55 for b in data[2 * PIECE :])
    nonce = new_nonce()
    _chain_put(agent, upload["id"], other[: 4 * PIECE], 0, 0, nonce)
    transport = Recorder()
    with agent.client(transport=transport) as client:
        again = client.create_chained(len(data), head, None, PIECE)
        assert again["id"] == upload["id"] and again["received"] == 4 * PIECE
        assert again["sha256_prefix"] == hashlib.sha256(b"").hexdigest()  # nothing verified
        result = client.upload_package(package, resumable=True, piece_size=PIECE, backoff_s=0.01)
        assert result["version"] == "1" and serving_version(client) == "1"
    puts = [s for s in transport.seen if s["method"] == "PUT"]
    # the first stream proves pieces 0-3 too: 2 and 3 are the other package's, so they are cut
    assert puts[0]["status"] == 422 and puts[-1]["offset"] == str(2 * PIECE)
    # a desktop whose verified prefix differs asks for a fresh upload
    manager = UploadManager(Path(agent.service.data_dir) / "uploads-2")
    first = manager.create(len(data), None, None, PIECE, None, head)
    writer = manager.open_chain(first["id"], 0, 0, lambda *_: True)
    for at in range(0, 2 * PIECE, PIECE):
        writer.add([other[at : at + PIECE]])
    writer.close()
    resumed = manager.create(len(data), None, None, PIECE, None, head)
    assert resumed["id"] == first["id"] and resumed["received"] == 2 * PIECE
    # a restarted agent reads the received pieces again to hash them
    restarted = UploadManager(Path(agent.service.data_dir) / "uploads-2")
    again = restarted.create(len(data), None, None, PIECE, None, head)
    assert again["received"] == 2 * PIECE
    writer = restarted.open_chain(first["id"], 0, 2 * PIECE, lambda *_: True)
    assert writer._digests == {e: hashlib.sha256(other[:e]).digest() for e in (PIECE, 2 * PIECE)}
    writer.close()
    fresh = restarted.create(len(data), None, None, PIECE, None, head, fresh=True)
    assert fresh["id"] != first["id"] and fresh["offset"] == 0


def test_after_a_restart_of_the_machine_unsynced_bytes_are_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5 * PIECE + 10)
    head = hashlib.sha256(data[:PIECE]).hexdigest()
    boot = tmp_path / "boot_id"
    boot.write_text("boot-a\n")
    monkeypatch.setattr(uploads, "BOOT_ID_PATH", boot)
    manager = UploadManager(tmp_path / "uploads")
    upload = manager.create(len(data), None, None, PIECE, None, head)
    writer = manager.open_chain(upload["id"], 0, 0, lambda *_: True)
    for at in range(0, len(data), PIECE):
        writer.add([data[at : at + PIECE]])
    ends = [*range(PIECE, len(data), PIECE), len(data)]
    writer.prove(b"".join(hashlib.sha256(data[:e]).digest() for e in ends) + b"\0" * 64)
    writer.close()
    folder = tmp_path / "uploads" / upload["id"]
    assert json.loads((folder / VOLATILE_FILE).read_text()) == {"boot": "boot-a"}
    state = manager.state(upload["id"])
    assert state.offset == len(data) and state.sha256_verified  # same boot: the page cache
    assert state.sha256 == hashlib.sha256(data).hexdigest()
    boot.write_text("boot-b\n")  # the machine restarted: the bytes may not be on the disk
    state = manager.state(upload["id"])
    assert (state.offset, state.received, state.sha256_verified) == (0, 0, False)
    assert (folder / DATA_FILE).read_bytes() == b"" and not (folder / VOLATILE_FILE).exists()
    with pytest.raises(UploadError) as early:
        manager.complete_path(upload["id"])
    assert early.value.status == 409 and early.value.offset == 0


def test_without_a_boot_id_the_verified_offset_is_fsynced_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "BOOT_ID_PATH", tmp_path / "missing")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(uploads.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    manager, upload_id, writer, data = _received(tmp_path, 2)
    before = len(synced)
    _prove_all(writer, data)
    assert len(synced) > before  # data.part itself, before its offset was recorded
    assert not (tmp_path / "uploads" / upload_id / VOLATILE_FILE).exists()


def _received(tmp_path: Path, pieces: int) -> tuple[UploadManager, str, Any, bytes]:
    """A chained upload of ``pieces`` random pieces, all received (not proven yet)."""
    data = os.urandom(pieces * PIECE)
    manager = UploadManager(tmp_path / "uploads")
    upload = manager.create(
        len(data), None, None, PIECE, None, hashlib.sha256(data[:PIECE]).hexdigest()
    )
    writer = manager.open_chain(upload["id"], 0, 0, lambda *_: True)
    for at in range(0, len(data), PIECE):
        writer.add([data[at : at + PIECE]])
    return manager, upload["id"], writer, data


def _prove_all(writer: Any, data: bytes) -> None:
    """The proof of every piece (its signature is not checked here), then the writer closed."""
    ends = range(PIECE, len(data) + 1, PIECE)
    writer.prove(b"".join(hashlib.sha256(data[:e]).digest() for e in ends) + b"\0" * 64)
    writer.close()


def test_with_a_boot_id_the_proof_is_recorded_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data is not fsynced, so neither are the records that describe it: a killed agent
    finds both in the page cache; after a restart of the machine (another boot id) the upload
    starts again whatever they say."""
    from runtimes import fileio

    manager, upload_id, writer, data = _received(tmp_path, 2)
    synced: list[int] = []
    monkeypatch.setattr(uploads.os, "fsync", synced.append)
    monkeypatch.setattr(fileio.os, "fsync", synced.append)
    _prove_all(writer, data)
    assert synced == []
    state = manager.state(upload_id)
    assert (state.offset, state.sha256_verified) == (len(data), True)
    assert state.sha256 == hashlib.sha256(data).hexdigest()
    # written under another boot: nothing of it is trusted
    monkeypatch.undo()
    (tmp_path / "uploads" / upload_id / VOLATILE_FILE).write_text('{"boot": "other"}')
    assert manager.state(upload_id).offset == 0


def test_an_agent_before_protocol_2_gets_the_piece_list_stream(
    agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that refuses the chained create (400) gets the protocol 1 stream."""

    def older(self: Any, *args: Any) -> dict[str, Any]:
        raise UploadError(400, "sha256 must be the package's 64 lowercase hex digits")

    monkeypatch.setattr(UploadManager, "_create_chained", older)
    transport = Recorder()
    with agent.client(transport=transport) as client:
        result = client.upload_package(package, resumable=True, piece_size=PIECE)
        assert result["version"] == "1" and serving_version(client) == "1"
    posts = [s for s in transport.seen if s["method"] == "POST" and "body" in s]
    assert posts[0]["status"] == 400 and "head_sha256" in posts[0]["body"]
    assert len(posts[1]["body"]["pieces"]) == -(-package.stat().st_size // PIECE)
    assert [s["type"] for s in transport.seen if s["method"] == "PUT"] == [PIECES_CONTENT_TYPE]
    # a client that knows the agent speaks protocol 1 does not try
    transport = Recorder()
    with agent.client(transport=transport) as client:
        client.protocol = 1
        client.upload_package(package, resumable=True, piece_size=PIECE, activate=False)
    assert "head_sha256" not in transport.seen[0]["body"]


def test_chained_uploads_refuse_plain_chunks_and_unsigned_streams(
    agent: Any, package: Path
) -> None:
    data = package.read_bytes()
    with agent.client() as client:
        upload = client.create_chained(
            len(data), hashlib.sha256(data[:PIECE]).hexdigest(), None, PIECE
        )
        with pytest.raises(AgentRejectedError) as chunk:
            client.put_chunk(upload["id"], 0, data[:PIECE])
        assert chunk.value.status == 400 and "chained upload" in str(chunk.value)
    unsigned = httpx.put(
        f"{agent.url}/v1/uploads/{upload['id']}",
        content=data,
        headers={
            "Content-Type": CHAIN_CONTENT_TYPE,
            "Upload-Offset": "0",
            "Upload-Proof-From": "0",
        },
    )
    assert unsigned.status_code == 401


def test_a_stream_that_lost_only_its_proof_is_finished_by_a_proof_alone(
    agent: Any, package: Path
) -> None:
    data = package.read_bytes()
    with agent.client() as client:
        upload = client.create_chained(
            len(data), hashlib.sha256(data[:PIECE]).hexdigest(), package.name, PIECE
        )
    assert _chain_put(agent, upload["id"], data, 0, 0, new_nonce()).status_code == 400
    transport = Recorder()
    with agent.client(transport=transport) as client:
        assert client.upload_status(upload["id"])["received"] == len(data)
        result = client.upload_package(package, resumable=True, piece_size=PIECE)
        assert result["version"] == "1" and serving_version(client) == "1"
    (stream,) = [s for s in transport.seen if s["method"] == "PUT"]
    assert (stream["offset"], stream["proof_from"], stream["status"]) == (str(len(data)), "0", 200)


@pytest.mark.parametrize(
    "progress", [{"sha256_verified": True}, {"sha256_verified": False, "sealed": True}]
)
def test_a_verified_offset_without_the_sha256_in_meta_does_not_count(
    tmp_path: Path, progress: dict[str, bool]
) -> None:
    """The proof (or a seal, protocol 4) writes meta.json (the digests) and progress.json at
    once: if only the second reached the disk, commit hashes the file against a sha256 it
    does not have and refuses."""
    data = os.urandom(3 * PIECE)
    manager = UploadManager(tmp_path / "uploads")
    upload = manager.create(
        len(data), None, None, PIECE, None, hashlib.sha256(data[:PIECE]).hexdigest()
    )
    folder = tmp_path / "uploads" / upload["id"]
    (folder / DATA_FILE).write_bytes(data)
    (folder / PROGRESS_FILE).write_text(json.dumps({"offset": len(data), **progress}))
    state = manager.state(upload["id"])
    assert (state.offset, state.sha256, state.sha256_verified) == (len(data), "", False)
    assert state.manifest_sha256 is None
    with pytest.raises(UploadError) as refused:
        manager.complete_path(upload["id"])
    assert refused.value.status == 422 and not folder.exists()


def test_a_data_file_of_the_right_length_is_not_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a stream truncates the data file only when its length differs from the offset:
    on ext4 a truncate to zero makes the close after the stream start the writeback of the
    whole package (20-25 ms for 50 MiB here), on the stream's critical path."""
    calls: list[int] = []
    real = os.ftruncate
    monkeypatch.setattr(uploads.os, "ftruncate", lambda fd, n: (calls.append(n), real(fd, n)))
    data = tmp_path / "data.part"
    data.write_bytes(b"")
    with open(data, "r+b") as fh:
        uploads._cut_to(fh.fileno(), 0)  # a fresh upload: already empty
        assert calls == []
        fh.write(b"x" * 300)
        fh.flush()
        uploads._cut_to(fh.fileno(), 256)  # a partial piece past the offset: cut
        uploads._cut_to(fh.fileno(), 256)  # now the right length: left alone
    assert calls == [256] and data.stat().st_size == 256


def no_hashing(*args: object) -> None:
    raise AssertionError("the package was hashed although its digests file is current")


@pytest.fixture
def no_desktop_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The desktop must not hash the package (its digests file says it all)."""
    from device_agent import client as client_module

    monkeypatch.setattr(client_module, "_hash_range", no_hashing)
    monkeypatch.setattr(client_module, "_hash_prefix", no_hashing)


@pytest.mark.usefixtures("no_desktop_hashing")
def test_a_package_with_its_digests_file_goes_without_being_hashed(
    agent: Any, package: Path
) -> None:
    data = package.read_bytes()
    transport = Recorder()
    with agent.client(transport=transport) as client:
        result = client.upload_package(package, resumable=True)
        assert result["version"] == "1" and serving_version(client) == "1"
    create, stream, commit = transport.seen
    assert create["body"]["head_sha256"] == hashlib.sha256(data).hexdigest()  # one piece
    assert stream["status"] == 200 and commit["status"] == 201


def test_a_digests_file_that_lies_costs_a_resend_not_the_install(agent: Any, package: Path) -> None:
    from runtimes.package_digests import digests_path

    record = json.loads(digests_path(package).read_text())
    record["digests"] = ["00" * 32 for _ in record["digests"]]  # same size and time: trusted
    digests_path(package).write_text(json.dumps(record))
    transport = Recorder()
    with agent.client(transport=transport) as client:
        result = client.upload_package(package, resumable=True, backoff_s=0.01)
        assert result["version"] == "1" and serving_version(client) == "1"
    puts = [s["status"] for s in transport.seen if s["method"] == "PUT"]
    assert puts == [422, 200]  # the agent refused the proof; the desktop hashed and resent


def test_the_default_transport_sends_the_stream_with_sendfile(
    agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from device_agent import file_body

    sent: list[int] = []
    real = file_body.send_file_body

    def counting(request: httpx.Request, body: file_body.FileBody) -> httpx.Response:
        sent.append(body.size - body.offset)
        return real(request, body)

    monkeypatch.setattr(file_body, "send_file_body", counting)
    progress: list[tuple[int, int]] = []
    with agent.client() as client:
        result = client.upload_package(
            package, lambda d, t: progress.append((d, t)), resumable=True, piece_size=PIECE
        )
        assert result["version"] == "1" and serving_version(client) == "1"
    size = package.stat().st_size
    assert sent == [size] and progress[-1] == (size, size)


def test_a_stream_is_read_in_large_blocks_then_the_transport_is_put_back() -> None:
    from device_agent.http_api import STREAM_READ, _large_reads

    selector = SimpleNamespace(max_size=256 * 1024)  # asyncio's selector transport
    restore = _large_reads(SimpleNamespace(transport=selector))  # type: ignore[arg-type]
    assert selector.max_size == STREAM_READ
    restore()
    assert selector.max_size == 256 * 1024
    other = SimpleNamespace()  # a transport of another event loop: left alone
    _large_reads(SimpleNamespace(transport=other))()  # type: ignore[arg-type]
    assert not hasattr(other, "max_size")
    _large_reads(SimpleNamespace(transport=None))()  # type: ignore[arg-type]  # closed


@pytest.mark.parametrize("protocol", [3, 4])
def test_a_stream_opens_its_upload_when_the_agent_speaks_3(
    agent: Any, package: Path, protocol: int
) -> None:
    """No round trip before the bytes go: the stream carries what the upload is opened with
    (a chained stream to an agent that speaks 3, a sealed one from 4 on)."""
    data = package.read_bytes()
    transport = Recorder()
    with agent.client(transport=transport) as client:
        client.info()  # as outpost deploy does: the protocol is known
        client.protocol = protocol  # as agreed with an agent of that protocol
        result = client.upload_package(package, resumable=True, piece_size=PIECE)
        assert result["version"] == "1" and serving_version(client) == "1"
    stream, commit = [s for s in transport.seen if s["method"] != "GET"]
    assert (stream["method"], stream["opens"], stream["status"]) == ("PUT", str(len(data)), 200)
    assert (stream["offset"], stream["proof_from"]) == ("0", "0") and commit["status"] == 201
    assert stream["type"] == (SEALED_CONTENT_TYPE if protocol == 4 else CHAIN_CONTENT_TYPE)


def test_a_stream_that_could_not_open_its_upload_opens_it_again(agent: Any, package: Path) -> None:
    transport = Recorder(unreachable_puts=1)
    with agent.client(transport=transport) as client:
        client.info()
        result = client.upload_package(package, resumable=True, piece_size=PIECE, backoff_s=0.01)
        assert result["version"] == "1"
    puts = [s for s in transport.seen if s["method"] == "PUT"]
    assert [p["status"] for p in puts] == ["unreachable", 200] and all(p["opens"] for p in puts)


def test_a_stream_that_broke_after_opening_its_upload_resumes_it(agent: Any, package: Path) -> None:
    transport = Recorder(cut=(1, 3 * PIECE + 40))
    with agent.client(transport=transport) as client:
        client.info()
        result = client.upload_package(package, resumable=True, piece_size=PIECE, backoff_s=0.01)
        assert result["version"] == "1" and serving_version(client) == "1"
    first, *rest = [s for s in transport.seen if s["method"] == "PUT"]
    assert first["opens"] and rest and not any(s["opens"] for s in rest)
    assert {s["type"] for s in [first, *rest]} == {SEALED_CONTENT_TYPE}  # protocol 4
    # it resumes the upload the first stream opened, after the pieces received by then
    assert rest[-1]["status"] == 200
    assert all(int(s["offset"]) % PIECE == 0 and int(s["offset"]) <= 3 * PIECE for s in rest)


def test_a_large_package_opens_its_upload_first(
    agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past OPEN_IN_STREAM_BYTES the upload is opened first: it may resume one a restarted
    desktop left behind."""
    from device_agent import client as client_module

    monkeypatch.setattr(client_module, "OPEN_IN_STREAM_BYTES", 100)
    transport = Recorder()
    with agent.client(transport=transport) as client:
        client.info()
        client.upload_package(package, resumable=True, piece_size=PIECE)
    create, stream, _ = [s for s in transport.seen if s["method"] != "GET"]
    assert "head_sha256" in create["body"] and stream["opens"] is None


def test_what_a_stream_opens_its_upload_with_is_signed(agent: Any, package: Path) -> None:
    from device_agent.auth import chain_open_digest

    data = package.read_bytes()
    head = hashlib.sha256(data[:PIECE]).hexdigest()
    upload_id = "ab" * 16

    def put(size: int, signed_size: int) -> httpx.Response:
        return httpx.put(
            f"{agent.url}/v1/uploads/{upload_id}",
            auth=agent.auth(),
            content=b"",
            headers={
                "Content-Type": CHAIN_CONTENT_TYPE,
                "Upload-Offset": "0",
                "Upload-Proof-From": "0",
                "Upload-Length": str(size),
                "Upload-Piece-Size": str(PIECE),
                "Upload-Head-SHA256": head,
                "Upload-Name": "shapes%201.zip",
                "X-Outpost-Nonce": new_nonce(),
                "X-Outpost-Content-SHA256": chain_open_digest(
                    upload_id, signed_size, PIECE, head, "shapes 1.zip"
                ),
            },
        )

    forged = put(len(data) + 1, len(data))  # another size than the one signed
    assert forged.status_code == 401 and "signed sha256" in forged.json()["error"]
    assert not (Path(agent.service.data_dir) / "uploads" / upload_id).exists()
    opened = put(len(data), len(data))  # opened, then the stream ended without its bytes
    assert opened.status_code == 400
    with agent.client() as client:
        status = client.upload_status(upload_id)
    assert (status["size"], status["offset"]) == (len(data), 0)
    assert put(len(data), len(data)).status_code == 409  # the id is taken now


def test_a_new_upload_id_must_be_free_and_well_formed(tmp_path: Path) -> None:
    manager = UploadManager(tmp_path / "uploads")
    head = "c" * 64
    manager.open_new("d" * 32, 10, "p.zip", PIECE, head)
    with pytest.raises(UploadError) as taken:
        manager.open_new("d" * 32, 10, "p.zip", PIECE, head)
    assert taken.value.status == 409
    with pytest.raises(UploadError) as bad:
        manager.open_new("../x", 10, "p.zip", PIECE, head)
    assert bad.value.status == 400


def _whole(root: Path, upload_id: str, size: int) -> None:
    """Every byte of an open upload received and verified (its commit not run)."""
    (root / upload_id / DATA_FILE).write_bytes(bytes(size))
    (root / upload_id / PROGRESS_FILE).write_text(json.dumps({"offset": size}) + "\n")


def test_a_package_sent_again_after_a_restart_replaces_its_cut_off_copies(tmp_path: Path) -> None:
    """Deploys cut off by crashes (mid-stream or in the commit) leave copies of one package;
    the next stream of it drops them, so they do not fill the upload slots. Other packages'
    uploads, and copies written since the start (a deploy that may be live), stay."""
    root = tmp_path / "uploads"
    before = UploadManager(root, max_uploads=3)
    head, other = "c" * 64, "e" * 64
    before.open_new("a" * 32, 10, "p.zip", PIECE, head)
    before.open_new("b" * 32, 10, "p.zip", PIECE, head)
    _whole(root, "b" * 32, 10)  # the agent died in its commit
    before.open_new("f" * 32, 10, "q.zip", PIECE, other)  # another package
    restarted = UploadManager(root, max_uploads=3)
    assert restarted.state("b" * 32).offset == 10
    restarted.open_new("d" * 32, 10, "p.zip", PIECE, head)
    assert sorted(p.name for p in root.iterdir()) == ["d" * 32, "f" * 32]
    _whole(root, "d" * 32, 10)  # whole since the start: its commit may come
    restarted.open_new("0" * 32, 10, "p.zip", PIECE, head)
    assert sorted(p.name for p in root.iterdir()) == ["0" * 32, "d" * 32, "f" * 32]
    with pytest.raises(UploadError) as full:
        restarted.open_new("1" * 32, 10, "p.zip", PIECE, head)
    assert full.value.status == 429


def test_a_stream_hands_the_memory_it_freed_back(
    agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from device_agent import http_api

    glibc = sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    assert (http_api._malloc_trim() is not None) == glibc
    trimmed: list[int] = []
    monkeypatch.setattr(http_api, "_malloc_trim", lambda: trimmed.append)
    monkeypatch.setattr(http_api, "RELEASE_DELAY_S", 0.05)
    with agent.client() as client:
        client.upload_package(package, resumable=True, piece_size=PIECE)
    deadline = time.monotonic() + 10
    while not trimmed and time.monotonic() < deadline:  # in a worker thread, later
        time.sleep(0.01)
    assert trimmed == [0]


def test_streams_in_a_row_put_the_trim_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trimming after each stream would make the next one fault the pages in again."""
    from device_agent import http_api

    class Loop:
        def __init__(self) -> None:
            self.timers: list[Any] = []

        def call_later(self, delay: float, fn: Any) -> Any:
            timer = SimpleNamespace(cancelled=False, fn=fn, delay=delay)
            timer.cancel = lambda: setattr(timer, "cancelled", True)
            self.timers.append(timer)
            return timer

        def run_in_executor(self, pool: Any, fn: Any, *args: Any) -> None:
            fn(*args)

    trimmed: list[int] = []
    monkeypatch.setattr(http_api, "_malloc_trim", lambda: trimmed.append)
    release, loop = http_api._MemoryRelease(), Loop()
    for _ in range(3):
        release.after_stream(loop)  # type: ignore[arg-type]
    assert [t.cancelled for t in loop.timers] == [True, True, False]
    assert {t.delay for t in loop.timers} == {http_api.RELEASE_DELAY_S}
    loop.timers[-1].fn()
    assert trimmed == [0]


def test_a_disk_that_fills_up_answers_507_and_gives_back_what_the_upload_held(
    agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program fills the disk after the upload's space check: the write that fails
    answers 507 with what to do (not a 500), and the upload is removed, not kept for a resume
    that would leave the device without room for anything."""
    real_write = ChainWriter._write
    writes: list[int] = []

    def fills_up(self: ChainWriter, parts: Any) -> None:
        writes.append(len(parts))
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, parts)

    monkeypatch.setattr(ChainWriter, "_write", fills_up)
    uploads_dir = Path(agent.service.data_dir) / "uploads"
    with agent.client() as client:
        with pytest.raises(AgentRejectedError) as full:
            client.upload_package(package, resumable=True, piece_size=PIECE)
        assert full.value.status == 507
        assert "ran out of disk space" in full.value.message and "was removed" in full.value.message
        assert len(writes) > 2 and not [p for p in uploads_dir.iterdir() if p.is_dir()]
        # the plain upload's receive: a file it cannot create is a 507 too, nothing left over
        monkeypatch.setattr(
            http_api.tempfile,
            "mkstemp",
            lambda **_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
        )
        with pytest.raises(AgentRejectedError) as plain:
            client.upload_package(package, resumable=False)
        assert plain.value.status == 507 and "free some space" in plain.value.message
        # a disk remounted read-only (a failing SD card): 507 that says so, not a 500
        monkeypatch.setattr(
            ChainWriter,
            "_write",
            lambda *_: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")),
        )
        with pytest.raises(AgentRejectedError) as read_only:
            client.upload_package(package, resumable=True, piece_size=PIECE)
        assert read_only.value.status == 507
        assert "found its storage read-only" in read_only.value.message
        monkeypatch.undo()
        assert client.upload_package(package, resumable=True)["version"] == "1"
        assert serving_version(client) == "1"
