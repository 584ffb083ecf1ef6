"""Streamed uploads: one request carries the rest of a package, checked piece by piece.

Also the detection keys shared by both inference routes and the protocol notes of the
OpenAPI description.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from desktop_app.core.studio_ops import _same_keys
from device_agent.auth import pieces_digest
from device_agent.client import hash_pieces, piece_size_for
from device_agent.http_api import UPLOADS_KEY
from device_agent.uploads import (
    DATA_FILE,
    MAX_PIECES,
    PIECES_CONTENT_TYPE,
    PROGRESS_FILE,
    UploadError,
    UploadManager,
)
from tests.device_agent.conftest import wait_for
from tests.device_agent.stream_faults import AlteredStream, serving_version
from tests.fakes import EXPECTED, make_image_bytes

PIECE = 256  # the fake packages are ~1.5 KiB: several pieces each


def _pieces(data: bytes, piece: int = PIECE) -> list[str]:
    return [hashlib.sha256(data[i : i + piece]).hexdigest() for i in range(0, len(data), piece)]


def _open(client: Any, data: bytes, piece: int = PIECE) -> dict[str, Any]:
    return client.create_upload(
        len(data),
        hashlib.sha256(data).hexdigest(),
        "shapes.outpost.zip",
        piece_size=piece,
        pieces=_pieces(data, piece),
    )


def _stream_headers(offset: int, data: bytes, body_len: int, piece: int = PIECE) -> dict[str, str]:
    return {
        "Content-Type": PIECES_CONTENT_TYPE,
        "Upload-Offset": str(offset),
        "Content-Length": str(body_len),
        "X-Outpost-Content-SHA256": pieces_digest(_pieces(data, piece), offset // piece),
    }


def _note_stream_closed(uploads: Any) -> threading.Event:
    """An event set once the next stream the agent opens on ``uploads`` is closed."""
    closed = threading.Event()
    open_stream = uploads.open_stream

    def opening(upload_id: str, offset: int) -> Any:
        writer = open_stream(upload_id, offset)
        close = writer.close

        def closing() -> int:
            try:
                return int(close())
            finally:
                closed.set()

        writer.close = closing
        return writer

    uploads.open_stream = opening
    return closed


class StreamTransport(httpx.BaseTransport):
    """Records every upload PUT's offset; on chosen stream PUTs either breaks the connection
    after ``cut`` bytes of the body or flips one byte at ``flip`` (relative to the body)."""

    def __init__(
        self, *, cut: dict[int, int] | None = None, flip: dict[int, int] | None = None
    ) -> None:
        self.inner = httpx.HTTPTransport()
        self.cut, self.flip = cut or {}, flip or {}
        self.offsets: list[int] = []
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "PUT" or not request.url.path.startswith("/v1/uploads/"):
            return self.inner.handle_request(request)
        self.offsets.append(int(request.headers["Upload-Offset"]))
        n = len(self.offsets)
        if n in self.cut or n in self.flip:
            request.stream = AlteredStream(
                request.stream, self.cut.get(n), self.flip.get(n), request
            )
        response = self.inner.handle_request(request)
        response.read()
        self.statuses.append(response.status_code)
        return response


def test_a_streamed_upload_is_one_request_checked_on_the_way(agent: Any, package: Path) -> None:
    transport = StreamTransport()
    size = package.stat().st_size
    progress: list[tuple[int, int]] = []
    with agent.client(transport=transport) as client:
        result = client.upload_package(
            package,
            lambda done, total: progress.append((done, total)),
            resumable=True,
            piece_size=PIECE,
        )
        assert (result["name"], result["version"]) == ("shapes", "1")
        assert serving_version(client) == "1"
    assert transport.offsets == [0] and transport.statuses == [200]
    assert progress[-1] == (size, size)
    (folder,) = list((Path(agent.service.data_dir) / "uploads").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json",
        "progress.json",
        "result.json",
    ]
    recorded = json.loads((folder / PROGRESS_FILE).read_text())
    assert recorded == {"offset": size, "sha256_verified": True}  # commit did not re-read it


def test_a_broken_stream_resumes_from_the_last_verified_piece(agent: Any, package: Path) -> None:
    data = package.read_bytes()
    cut = 3 * PIECE + 100  # three whole pieces and part of the fourth
    with agent.client() as client:
        upload = _open(client, data)
        url = f"{agent.url}/v1/uploads/{upload['id']}"
        body = AlteredStream([data], cut, None, None)
        closed = _note_stream_closed(agent.service.app[UPLOADS_KEY])
        with pytest.raises(httpx.TransportError):
            httpx.put(
                url,
                auth=agent.auth(),
                content=iter(body),
                headers=_stream_headers(0, data, len(data)),
            )
        # the agent keeps the verified, fsynced pieces and drops the partial one (bytes it
        # had not read yet when the connection broke are lost with it); its handler may start
        # after the client gave up, so wait for the stream it opened to be closed
        wait_for(closed.is_set, "the agent to finish the broken stream")
        kept = client.upload_status(upload["id"])["offset"]
        assert kept % PIECE == 0 and kept <= 3 * PIECE
        folder = Path(agent.service.data_dir) / "uploads" / upload["id"]
        assert (folder / DATA_FILE).read_bytes()[:kept] == data[:kept]
        transport = StreamTransport()
    with agent.client(transport=transport) as client:
        sent: list[int] = []
        result = client.upload_package(
            package, lambda done, _: sent.append(done), resumable=True, piece_size=PIECE
        )
        assert result["version"] == "1" and serving_version(client) == "1"
    assert transport.offsets == [kept]  # the same package resumed where the agent stood
    assert sent[-1] == len(data)


def test_the_client_resumes_after_a_connection_breaks_mid_stream(agent: Any, package: Path) -> None:
    size = package.stat().st_size
    transport = StreamTransport(cut={1: 2 * PIECE + 7})
    with agent.client(transport=transport) as client:
        result = client.upload_package(package, resumable=True, piece_size=PIECE, backoff_s=0.05)
        assert result["version"] == "1" and serving_version(client) == "1"
    first, *rest = transport.offsets
    assert first == 0 and len(rest) >= 1
    # every resume starts on a piece boundary no further than what the first stream carried
    assert all(o % PIECE == 0 and o <= 2 * PIECE for o in rest)
    assert transport.statuses[-1] == 200 and rest[-1] < size


def test_a_chunked_upload_of_the_same_package_continues_as_a_stream(
    agent: Any, package: Path
) -> None:
    data = package.read_bytes()
    with agent.client() as client:
        upload = client.create_upload(len(data), hashlib.sha256(data).hexdigest())
        client.put_chunk(upload["id"], 0, data[:300])  # between two pieces
        transport = StreamTransport()
    with agent.client(transport=transport) as client:
        result = client.upload_package(package, resumable=True, piece_size=PIECE)
        assert result["version"] == "1" and serving_version(client) == "1"
    assert transport.offsets == [PIECE]  # back to the piece boundary, then one stream


def test_a_corrupted_byte_is_refused_and_never_kept(agent: Any, package: Path) -> None:
    data = package.read_bytes()
    with agent.client() as client:
        upload = _open(client, data)
        url = f"{agent.url}/v1/uploads/{upload['id']}"
        bad = bytearray(data)
        bad[2 * PIECE + 5] ^= 0x01  # one bit of the third piece
        refused = httpx.put(
            url, auth=agent.auth(), content=bytes(bad), headers=_stream_headers(0, data, len(data))
        )
        assert refused.status_code == 422
        assert "piece 2" in refused.json()["error"] and "does not match" in refused.json()["error"]
        assert refused.json()["offset"] == 2 * PIECE
        assert client.upload_status(upload["id"])["offset"] == 2 * PIECE
        folder = Path(agent.service.data_dir) / "uploads" / upload["id"]
        assert (folder / DATA_FILE).read_bytes() == data[: 2 * PIECE]
        # a stream whose signature covers other pieces than the agent listed is refused
        forged = httpx.put(
            url,
            auth=agent.auth(),
            content=data[2 * PIECE :],
            headers={
                **_stream_headers(2 * PIECE, data, len(data) - 2 * PIECE),
                "X-Outpost-Content-SHA256": hashlib.sha256(b"other").hexdigest(),
            },
        )
        assert forged.status_code == 401 and "signed sha256" in forged.json()["error"]
    # the client sends the piece again (here: the link altered one byte once) and installs
    transport = StreamTransport(flip={1: 4 * PIECE + 1})
    with agent.client(transport=transport) as client:
        client.delete_upload(upload["id"])
        result = client.upload_package(package, resumable=True, piece_size=PIECE, backoff_s=0.01)
        assert result["version"] == "1" and serving_version(client) == "1"
    assert transport.statuses[0] == 422 and transport.offsets[1] == 4 * PIECE


def test_bytes_past_the_recorded_offset_are_not_trusted(tmp_path: Path) -> None:
    """After a kill, data.part may hold bytes written but never fsynced and recorded."""
    data = os.urandom(5 * PIECE + 10)
    manager = UploadManager(tmp_path / "uploads")
    upload = manager.create(len(data), hashlib.sha256(data).hexdigest(), None, PIECE, _pieces(data))
    writer = manager.open_stream(upload["id"], 0)
    assert writer.body_sha256 == pieces_digest(_pieces(data), 0)
    writer.add([data[:PIECE]])
    writer.add([memoryview(data)[PIECE : 2 * PIECE]])
    assert writer.close() == 2 * PIECE
    part = tmp_path / "uploads" / upload["id"] / DATA_FILE
    with open(part, "ab") as fh:  # a later piece that was written, then the agent was killed
        fh.write(b"\0" * PIECE)
    assert manager.state(upload["id"]).offset == 2 * PIECE
    with pytest.raises(UploadError) as wrong:
        manager.open_stream(upload["id"], 3 * PIECE)
    assert wrong.value.status == 409 and wrong.value.offset == 2 * PIECE
    writer = manager.open_stream(upload["id"], 2 * PIECE)
    for at in range(2 * PIECE, len(data), PIECE):
        writer.add([data[at : at + PIECE]])
    writer.close()
    state = manager.state(upload["id"])
    assert state.offset == len(data) and not state.sha256_verified  # resumed: not all seen
    assert manager.complete_path(upload["id"]).read_bytes() == data  # commit hashes it


def test_piece_lists_are_checked(tmp_path: Path) -> None:
    manager = UploadManager(tmp_path / "uploads")
    sha = "a" * 64
    for piece_size, pieces, reason in (
        (0, ["a" * 64], "piece_size must be"),
        (PIECE, ["a" * 64], "each of the 40 pieces"),
        (PIECE, ["zz"] * 40, "64 lowercase hex"),
        (1, ["a" * 64] * 10_000, "more than"),
    ):
        with pytest.raises(UploadError) as err:
            manager.create(10_000, sha, None, piece_size, pieces)
        assert err.value.status == 400 and reason in str(err.value)
    chunked = manager.create(1000, sha)
    with pytest.raises(UploadError) as no_list:
        manager.open_stream(chunked["id"], 0)
    assert no_list.value.status == 400 and "without a piece list" in str(no_list.value)
    assert piece_size_for(10) == 4 << 20
    assert -(-(40 << 30) // piece_size_for(40 << 30)) <= MAX_PIECES


def test_hash_pieces_reads_the_file_once_in_any_piece_size(tmp_path: Path) -> None:
    data = os.urandom((2 << 20) + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    for piece in (1000, 1 << 20, (3 << 20) // 2, 8 << 20):
        whole, pieces = hash_pieces(path, piece)
        assert whole == hashlib.sha256(data).hexdigest()
        assert pieces == _pieces(data, piece)


def test_an_agent_without_streams_gets_chunks(
    agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload answer without piece_size (an older agent) makes the client send chunks."""
    from device_agent import uploads

    plain = uploads.UploadState.as_dict

    def without_pieces(self: Any, ttl_s: float, chunk_size: int) -> dict[str, Any]:
        answer = plain(self, ttl_s, chunk_size)
        answer.pop("piece_size", None), answer.pop("pieces", None)
        return {**answer, "chunk_size": 512}

    monkeypatch.setattr(uploads.UploadState, "as_dict", without_pieces)
    transport = StreamTransport()
    with agent.client(transport=transport) as client:
        result = client.upload_package(package, resumable=True, piece_size=PIECE)
        assert result["version"] == "1" and serving_version(client) == "1"
    size = package.stat().st_size
    assert transport.offsets == list(range(0, size, 512))


def test_both_inference_routes_answer_the_same_detection_keys(agent: Any, package: Path) -> None:
    with agent.client() as client:
        client.upload_package(package)
        image = make_image_bytes()
        plain = client.infer(image)["detections"]
        named = client.infer_model("shapes", image)["detections"]
    assert plain == list(EXPECTED)
    for new, old in zip(named, plain, strict=True):
        assert {k: new[k] for k in old} == old  # the canonical keys and values
        assert (new["class"], new["score"]) == (old["class_name"], old["confidence"])
    # the desktop's normalisation gives the canonical keys for any agent
    assert [_same_keys(d) for d in named] == plain
    legacy = [{k: v for k, v in d.items() if k not in ("class_name", "confidence")} for d in named]
    assert [_same_keys(d) for d in legacy] == [
        {
            "class_id": d["class_id"],
            "xyxy": d["xyxy"],
            "class_name": d["class_name"],
            "confidence": d["confidence"],
        }
        for d in plain
    ]


def test_openapi_documents_protocol_negotiation(agent: Any) -> None:
    with agent.client() as client:
        spec = client._request("GET", "/v1/openapi.json")
    assert spec["info"]["x-protocol-min"] >= 1 and "426" in spec["info"]["x-protocol-negotiation"]
    params = spec["components"]["parameters"]
    assert {params[k]["name"] for k in params} == {"Outpost-Protocol", "Outpost-Protocol-Min"}
    assert "426" not in spec["paths"]["/v1/info"]["get"]["responses"]
    assert "protocol_min" in spec["paths"]["/v1/info"]["get"]["summary"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if (method, path) != ("get", "/v1/info"):
                assert "Outpost-Protocol-Min" in json.dumps(operation["responses"]["426"])
    infer = spec["paths"]["/v1/models/{name}/infer"]["post"]["summary"]
    assert "class_name" in infer and "deprecated" in infer
    put = spec["paths"]["/v1/uploads/{id}"]["put"]
    assert PIECES_CONTENT_TYPE in put["requestBody"]["content"]
