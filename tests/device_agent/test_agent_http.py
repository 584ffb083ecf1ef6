"""API v1 against a real aiohttp server on 127.0.0.1 (port 0), through AgentClient and raw httpx."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import logging
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_agent import PROTOCOL_VERSION, __version__
from device_agent import line as agent_line
from device_agent.client import AgentClient, AgentRejectedError, AgentUnreachableError
from device_agent.errors import AgentAnswerError
from tests.device_agent.conftest import wait_for
from tests.fakes import EXPECTED, flip_last_byte, make_image_bytes, make_package, rewrite_package

TIMING_KEYS = {"decode", "preprocess", "inference", "postprocess", "total", "wait"}


def _error(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert "\n" not in body["error"]
    return str(body["error"])


def test_health_and_info(agent: Any) -> None:
    with agent.client() as client:
        assert client.health()["status"] == "ok"
        info = client.info()
    assert info["agent_id"] == agent.service.identity.agent_id
    assert (info["version"], info["protocol"], info["platform"]) == (
        __version__,
        PROTOCOL_VERSION,
        sys.platform,
    )
    assert {"name", "os", "arch", "python", "cpu_count"} <= set(info)
    ort = next(r for r in info["runtimes"] if r["key"] == "onnxruntime")
    assert (
        ort["available"] and "onnx" in ort["formats"] and "CPUExecutionProvider" in ort["providers"]
    )
    assert info["models"] == []


def test_upload_then_infer_raw_and_multipart(agent: Any, package: Path) -> None:
    with agent.client() as client:
        installed = client.upload_package(package)
        assert (installed["name"], installed["version"], installed["format"]) == (
            "shapes",
            "1",
            "onnx",
        )
        assert installed["runtime"] == "onnxruntime" and installed["providers"]
        assert client.info()["models"][0]["class_names"] == ["circle", "square"]

        result = client.infer(make_image_bytes())
    assert (result["model"], result["version"], result["format"], result["runtime"]) == (
        "shapes",
        "1",
        "onnx",
        "onnxruntime",
    )
    assert result["detections"] == list(EXPECTED)
    assert set(result["timing_ms"]) == TIMING_KEYS

    image = make_image_bytes(ext=".jpg")
    raw = httpx.post(
        f"{agent.url}/v1/infer",
        auth=agent.auth(),
        params={"model": "shapes"},
        content=image,
        headers={"Content-Type": "image/jpeg"},
    )
    assert raw.status_code == 200, raw.text
    assert [d["class_name"] for d in raw.json()["detections"]] == ["circle", "square"]

    multipart = httpx.post(
        f"{agent.url}/v1/infer",
        auth=agent.auth(),
        files={"image": ("a.png", make_image_bytes(), "image/png")},
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["detections"] == list(EXPECTED)


def test_upload_answers_201_with_raw_put(agent: Any, package: Path) -> None:
    response = httpx.put(
        f"{agent.url}/v1/packages", auth=agent.auth(), content=package.read_bytes()
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "shapes"


def test_conf_threshold_and_bad_parameters(agent: Any, package: Path) -> None:
    with agent.client() as client:
        client.upload_package(package)
        only_best = client.infer(make_image_bytes(), conf=0.85)
        assert [d["class_name"] for d in only_best["detections"]] == ["circle"]
        assert len(client.infer(make_image_bytes(), iou=0.5)["detections"]) == 2
        with pytest.raises(
            AgentRejectedError, match="conf must be a number between 0 and 1"
        ) as err:
            client.infer(make_image_bytes(), conf=1.5)
    assert err.value.status == 400
    bad = httpx.post(
        f"{agent.url}/v1/infer",
        auth=agent.auth(),
        params={"iou": "abc"},
        content=make_image_bytes(),
    )
    assert bad.status_code == 400 and "iou must be a number" in _error(bad)


def test_infer_error_cases(agent: Any, package: Path) -> None:
    url = f"{agent.url}/v1/infer"
    none = httpx.post(url, auth=agent.auth(), content=make_image_bytes())
    assert none.status_code == 409 and "no model is installed" in _error(none)

    with agent.client() as client:
        client.upload_package(package)
        with pytest.raises(AgentRejectedError) as err:
            client.infer(make_image_bytes(), model="nope")
    assert err.value.status == 404
    assert err.value.message == "model 'nope' is not installed; installed: shapes"

    junk = httpx.post(
        url, auth=agent.auth(), content=b"not an image", headers={"Content-Type": "image/jpeg"}
    )
    assert junk.status_code == 400 and "could not be decoded" in _error(junk)

    empty = httpx.post(url, auth=agent.auth(), content=b"")
    assert empty.status_code == 400 and "body is empty" in _error(empty)

    no_field = httpx.post(
        url, auth=agent.auth(), files={"picture": ("a.png", make_image_bytes(), "image/png")}
    )
    assert no_field.status_code == 400 and "no 'image' field" in _error(no_field)


def test_two_models_need_a_name(agent: Any, package: Path, tmp_path: Path) -> None:
    with agent.client() as client:
        client.upload_package(package)
        client.upload_package(make_package(tmp_path / "boxes.outpost.zip", name="boxes"))
        with pytest.raises(
            AgentRejectedError, match=r"several models are installed \(boxes, shapes\)"
        ) as err:
            client.infer(make_image_bytes())
        assert err.value.status == 400
        assert client.infer(make_image_bytes(), model="boxes")["model"] == "boxes"


def test_stats_count_requests_errors_and_latency(agent: Any, package: Path) -> None:
    with agent.client() as client:
        client.upload_package(package)
        for _ in range(3):
            client.infer(make_image_bytes())
        with pytest.raises(AgentRejectedError):
            client.infer(b"garbage")
        stats = client.stats()
    assert stats["agent_id"] == agent.service.identity.agent_id
    shapes = stats["models"]["shapes"]
    assert (shapes["requests"], shapes["errors"]) == (4, 1)
    assert (shapes["format"], shapes["runtime"], shapes["version"]) == ("onnx", "onnxruntime", "1")
    assert shapes["providers"]
    latency = shapes["latency_ms"]
    assert set(latency) == {"p50", "p90", "p99", "mean"}
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("wrong-sha256", 422, "sha256 mismatch for model.onnx"),
        ("no-manifest", 422, "no manifest.json"),
        ("schema-99", 422, "unknown package schema version 99"),
        ("not-a-zip", 422, "not a package zip"),
        ("empty", 400, "the request body is empty"),
    ],
)
def test_bad_upload_is_refused_and_old_model_keeps_serving(
    agent: Any, package: Path, tmp_path: Path, kind: str, status: int, reason: str
) -> None:
    v2 = make_package(tmp_path / "v2.outpost.zip", version="2")
    bad = tmp_path / "bad.outpost.zip"
    if kind == "wrong-sha256":
        rewrite_package(v2, bad, files=flip_last_byte)
    elif kind == "no-manifest":
        rewrite_package(v2, bad, manifest=lambda data: None)
    elif kind == "schema-99":
        rewrite_package(v2, bad, manifest=lambda data: {**data, "schema_version": 99})
    elif kind == "not-a-zip":
        bad.write_bytes(b"PK but not really")
    else:
        bad.write_bytes(b"")

    with agent.client() as client:
        client.upload_package(package)
        with pytest.raises(AgentRejectedError) as err:
            client.upload_package(bad)
        assert err.value.status == status
        assert reason in err.value.message
        result = client.infer(make_image_bytes())
        assert (result["version"], result["detections"]) == ("1", list(EXPECTED))
        assert [m["version"] for m in client.info()["models"]] == ["1"]
    leftovers = list((agent.service.data_dir / "tmp").iterdir())
    assert leftovers == []


def test_rollback_endpoint(agent: Any, package: Path, tmp_path: Path) -> None:
    with agent.client() as client:
        with pytest.raises(AgentRejectedError, match="no model is installed"):
            client.rollback("shapes")
        client.upload_package(package)
        with pytest.raises(AgentRejectedError, match="no previous version") as err:
            client.rollback("shapes")
        assert err.value.status == 409
        client.upload_package(make_package(tmp_path / "v2.outpost.zip", version="2"))
        assert client.infer(make_image_bytes())["version"] == "2"
        assert client.rollback("shapes")["version"] == "1"
        assert client.infer(make_image_bytes())["version"] == "1"


def test_restarted_agent_serves_what_was_installed(
    start_agent: Any, package: Path, tmp_path: Path
) -> None:
    data = tmp_path / "persistent"
    first = start_agent(data)
    with first.client() as client:
        client.upload_package(package)
        agent_id = client.info()["agent_id"]
    first.stop()
    second = start_agent(data)
    with second.client() as client:
        info = client.info()
        assert info["agent_id"] == agent_id
        assert [m["name"] for m in info["models"]] == ["shapes"]
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)


def test_unknown_route_and_method_are_json(agent: Any) -> None:
    missing = httpx.get(f"{agent.url}/v1/nothing-here", auth=agent.auth())
    assert missing.status_code == 404 and "no endpoint /v1/nothing-here" in _error(missing)
    wrong = httpx.get(f"{agent.url}/v1/packages", auth=agent.auth())
    assert wrong.status_code == 405 and "GET is not allowed" in _error(wrong)
    spec = httpx.get(f"{agent.url}/v1/openapi.json", auth=agent.auth()).json()
    assert "/v1/infer" in spec["paths"]


def test_client_reports_an_unreachable_agent() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with AgentClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(
            AgentUnreachableError, match=f"cannot reach agent at http://127.0.0.1:{port}/v1/health"
        ):
            client.health()


class _Endless(http.server.BaseHTTPRequestHandler):
    """Not an agent: /v1/health streams without end, /v1/info declares 100 GiB, /v1/stats
    sends a gzip bomb (a few KiB that inflate to 8 MiB, over the test's 1 MiB cap)."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path == "/v1/stats":
            bomb = gzip.compress(b" " * (8 << 20))
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)
            return
        if self.path == "/v1/info":
            self.send_header("Content-Length", str(100 << 30))
            self.end_headers()
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
        with contextlib.suppress(OSError):
            while True:
                self.wfile.write(block)

    def log_message(self, *_: object) -> None:
        pass


def test_client_refuses_an_answer_no_agent_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """An address that streams without end (or says it will) gets a typed error, not the
    desktop's memory."""
    monkeypatch.setattr(agent_line, "MAX_ANSWER_BYTES", 1 << 20)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with AgentClient(url, timeout=10) as client:
            for call in (client.health, client.info):
                with pytest.raises(AgentAnswerError, match="is larger than 1 MiB, which no"):
                    call()
            with pytest.raises(AgentAnswerError, match=r"is compressed \(gzip\), which no"):
                client.stats()
    finally:
        server.shutdown()
        server.server_close()


def test_concurrent_inference_requests_all_answer(agent: Any, package: Path) -> None:
    with agent.client() as client:
        client.upload_package(package)
    image = make_image_bytes()

    def one(_: int) -> list[dict[str, Any]]:
        with agent.client() as client:
            return list(client.infer(image)["detections"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert results == [list(EXPECTED)] * 16
    with agent.client() as client:
        assert client.stats()["models"]["shapes"]["requests"] == 16


def test_digits_that_are_not_a_number_are_refused_not_an_internal_error(agent: Any) -> None:
    """``str.isdigit`` takes "²" (Latin-1, so a header may carry it), which ``int`` refuses."""
    auth = agent.auth()
    odd = "\u00b2"
    offset = httpx.put(
        f"{agent.url}/v1/uploads/{'a' * 32}",
        auth=auth,
        content=b"x",
        headers={
            "Upload-Offset": odd.encode("latin-1"),
            "Content-Type": "application/octet-stream",
        },
    )
    assert offset.status_code == 400 and "Upload-Offset" in _error(offset)
    minutes = httpx.get(f"{agent.url}/v1/stats", params={"minutes": odd}, auth=auth)
    assert minutes.status_code == 400 and "minutes" in _error(minutes)
    protocol = httpx.get(
        f"{agent.url}/v1/info",
        headers={"Outpost-Protocol": odd.encode("latin-1"), "Outpost-Protocol-Min": b"1"},
    )
    assert protocol.status_code == 200


MALFORMED_BODIES = (
    (b"", "application/json"),
    (b"{", "application/json"),
    (b'[1, "x"]', "application/json"),
    (
        b'{"size": 1e309, "sha256": 5, "runs": -5, "image_base64": 7, "pieces": "x"}',
        "application/json",
    ),
    (b"\xff\xfe not text", "application/octet-stream"),
    (b"--x\r\n\r\n", "multipart/form-data; boundary=x"),
    (b"garbage", "application/x-outpost-chain"),
    (b"garbage", "application/x-outpost-pieces"),
)
MALFORMED_QUERIES = ("", "?minutes=-1&conf=nan&max_det=0", "?activate=2&force=maybe&provider=%00")
MALFORMED_HEADERS = (
    {},
    {"Upload-Offset": "²", "Upload-Proof-From": "x"},
    {"Upload-Offset": "0", "Upload-Length": "9" * 30, "Upload-Piece-Size": "0"},
)


def test_every_route_answers_malformed_input_with_a_reason_not_an_error(
    agent: Any, package: Path
) -> None:
    """A paired desktop's signed requests with bodies, queries and headers no client of ours
    sends, to every route of the table (models and uploads that exist, that do not, and
    names that are paths): each gets a 4xx with a one-line reason, never a 500, and the agent
    keeps serving."""
    with agent.client() as client:
        client.upload_package(package)
        data = package.read_bytes()
        upload = client.create_upload(len(data), hashlib.sha256(data).hexdigest())["id"]
    names = {"{name}": ("shapes", "nope", "%2e%2e"), "{id}": (upload, "0" * 32, "..%2fx")}
    sent = 0
    with httpx.Client(auth=agent.auth(), timeout=30) as http:
        for route in agent.service.app.router.routes():
            canonical = route.resource.canonical
            if route.method == "HEAD" or (route.method, canonical) == ("DELETE", "/v1/pair"):
                continue  # (unpairing this desktop is what that route is for)
            key = next((k for k in names if k in canonical), None)
            for value in names[key] if key else ("",):
                path = canonical.replace(key, value) if key else canonical
                for i, (body, kind) in enumerate(MALFORMED_BODIES):
                    query = MALFORMED_QUERIES[i % len(MALFORMED_QUERIES)]
                    headers = {
                        k: v.encode("latin-1")
                        for k, v in MALFORMED_HEADERS[i % len(MALFORMED_HEADERS)].items()
                    }
                    headers["Content-Type"] = kind.encode()
                    response = http.request(
                        route.method, f"{agent.url}{path}{query}", content=body, headers=headers
                    )
                    sent += 1
                    where = (route.method, path, query, kind, response.text[:200])
                    assert response.status_code < 500, where
                    if response.status_code >= 400:
                        assert "\n" not in response.json()["error"], where
    assert sent > 200
    with agent.client() as client:
        assert client.health()["status"] == "ok"
        if any(m["name"] == "shapes" for m in client.models()):  # an uninstall may have gone
            assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)


def test_a_client_that_goes_away_mid_body_is_not_an_error(
    agent: Any, package: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A camera app that disconnects while its image is on the way is an everyday event: the
    agent notes it, without an 'unexpected error' traceback, and keeps serving."""
    with agent.client() as client:
        client.upload_package(package)
    secret = agent.service.api_keys.create("camera")[1]
    host, port = agent.url.removeprefix("http://").split(":")
    with caplog.at_level(logging.INFO, logger="device_agent"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST /v1/models/shapes/infer HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {secret}\r\nContent-Type: image/png\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
                + b"\x89PNG" * 16
            )
            wait_for(lambda: agent.service.limiter.admitted == 1, "the request to be admitted")
        wait_for(lambda: "the client went away" in caplog.text, "the agent to note it")
    assert "unexpected error" not in caplog.text
    with agent.client() as client:
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)
