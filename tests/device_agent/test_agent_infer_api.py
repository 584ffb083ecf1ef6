"""The inference API: POST /v1/models/{name}/infer and /bench, API keys, bounded concurrency."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import stat
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from device_agent.apikeys import ApiKeyError, ApiKeys, bearer_token, key_hash
from device_agent.cli import main as agent_cli
from device_agent.client import AgentRejectedError
from device_agent.http_api import ApiError
from device_agent.inference import BEARER_ROUTES, InferenceLimiter
from runtimes.preprocess import NPY_CONTENT_TYPE
from tests.device_agent.conftest import wait_for
from tests.fakes import EXPECTED, header_bomb, make_image_bytes

TIMING_KEYS = {"decode", "preprocess", "inference", "postprocess", "total", "wait"}
INFER = "/v1/models/shapes/infer"


def _error(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert "\n" not in body["error"]
    return str(body["error"])


def encode_npy(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _expected_renamed() -> list[dict[str, Any]]:
    return [
        {
            "class_id": d["class_id"],
            "class_name": d["class_name"],
            "confidence": d["confidence"],
            "class": d["class_name"],  # deprecated aliases (protocol 1)
            "score": d["confidence"],
            "xyxy": d["xyxy"],
        }
        for d in EXPECTED
    ]


@pytest.fixture
def served(agent: Any, package: Path) -> Any:
    """The agent with the fake ``shapes`` model installed by its paired desktop."""
    with agent.client() as client:
        client.upload_package(package)
    return agent


# --- POST /v1/models/{name}/infer ------------------------------------------------------------


def test_infer_named_model_raw_multipart_and_json(served: Any) -> None:
    image = make_image_bytes()
    with served.client() as client:
        raw = client.infer_model("shapes", image)
    assert (raw["model"], raw["version"], raw["runtime"], raw["format"]) == (
        "shapes",
        "1",
        "onnxruntime",
        "onnx",
    )
    assert raw["detections"] == _expected_renamed()
    assert set(raw["timing_ms"]) == TIMING_KEYS

    multipart = httpx.post(
        f"{served.url}{INFER}", auth=served.auth(), files={"image": ("a.png", image, "image/png")}
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["detections"] == raw["detections"]

    body = {"image_base64": base64.b64encode(image).decode(), "conf": 0.85, "iou": 0.7}
    as_json = httpx.post(f"{served.url}{INFER}", auth=served.auth(), json=body)
    assert as_json.status_code == 200, as_json.text
    assert [d["class"] for d in as_json.json()["detections"]] == ["circle"]  # 0.9 > 0.85 > 0.8

    one = httpx.post(
        f"{served.url}{INFER}", auth=served.auth(), json={**body, "conf": 0.1, "max_det": 1}
    )
    assert len(one.json()["detections"]) == 1

    # the default-model route keeps its own answer shape
    with served.client() as client:
        assert client.infer(image)["detections"] == list(EXPECTED)


@pytest.mark.parametrize(
    ("params", "body", "message"),
    [
        ({"conf": "1.5"}, None, "conf must be a number between 0 and 1"),
        ({"iou": "-0.1"}, None, "iou must be a number between 0 and 1"),
        ({"conf": "abc"}, None, "conf must be a number between 0 and 1"),
        ({"max_det": "0"}, None, "max_det must be a whole number"),
        ({}, {"image_base64": "AAAA", "conf": 2}, "conf must be a number between 0 and 1"),
        ({}, {"image_base64": "AAAA", "iou": True}, "iou must be a number between 0 and 1"),
        ({}, {"image_base64": "%%%"}, "image_base64 is not valid base64"),
        ({}, {"conf": 0.5}, 'needs {"image_base64"'),
    ],
)
def test_infer_refuses_bad_parameters_with_one_line(
    served: Any, params: dict[str, str], body: dict[str, Any] | None, message: str
) -> None:
    if body is None:
        response = httpx.post(
            f"{served.url}{INFER}",
            auth=served.auth(),
            params=params,
            content=make_image_bytes(),
            headers={"Content-Type": "image/png"},
        )
    else:
        response = httpx.post(f"{served.url}{INFER}", auth=served.auth(), json=body)
    assert response.status_code == 400
    assert message in _error(response)


def test_infer_bad_image_unknown_model_and_error_counts(served: Any) -> None:
    with served.client() as client:
        with pytest.raises(AgentRejectedError) as bad:
            client.infer_model("shapes", b"not an image at all")
        assert bad.value.status == 400 and "not a readable image" in bad.value.message
        garbage = base64.b64encode(b"\x89PNG garbage").decode()
        with pytest.raises(AgentRejectedError, match="not a readable image"):
            client._request(
                "POST",
                INFER,
                content=json.dumps({"image_base64": garbage}).encode(),
                headers={"Content-Type": "application/json"},
            )
        # 631 bytes whose header claims 30000 x 30000: refused before the decoder allocates
        # 2.7 GB for it (tests/runtimes: the decoder is never called)
        with pytest.raises(AgentRejectedError) as bomb:
            client.infer_model("shapes", header_bomb())
        assert bomb.value.status == 400 and "over the 100-megapixel limit" in bomb.value.message
        with pytest.raises(AgentRejectedError) as missing:
            client.infer_model("nope", make_image_bytes())
        assert missing.value.status == 404 and "not installed" in missing.value.message
        client.infer_model("shapes", make_image_bytes())
        shapes = client.stats()["models"]["shapes"]
    assert (shapes["requests"], shapes["errors"]) == (4, 3)
    assert (shapes["versions"]["1"]["requests"], shapes["versions"]["1"]["errors"]) == (4, 3)


@pytest.mark.parametrize("route", [INFER, "/v1/infer"])
@pytest.mark.parametrize(
    ("content_type", "body", "params", "message"),
    [
        (NPY_CONTENT_TYPE, "float", {}, "the frame's pixels are float32, not uint8"),
        (NPY_CONTENT_TYPE, "cut", {}, "of pixels where its header says (64, 64, 3)"),
        (NPY_CONTENT_TYPE, "png", {}, "the frame is not NumPy .npy bytes"),
        (
            NPY_CONTENT_TYPE,
            "frame",
            {"channels": "bgra"},
            "channels must be bgr or rgb, got 'bgra'",
        ),
        ("image/png", "png", {"channels": "rgb"}, "channels applies to a decoded frame only"),
    ],
)
def test_a_bad_frame_is_refused_with_one_line(
    served: Any, route: str, content_type: str, body: str, params: dict[str, str], message: str
) -> None:
    frame = cv2.imdecode(np.frombuffer(make_image_bytes(), np.uint8), cv2.IMREAD_COLOR)
    content = {
        "float": encode_npy(frame.astype(np.float32)),
        "cut": encode_npy(frame)[:-3],
        "png": make_image_bytes(),
        "frame": encode_npy(frame),
    }[body]
    response = httpx.post(
        f"{served.url}{route}",
        auth=served.auth(),
        params=params,
        content=content,
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 400, response.text
    assert message in _error(response)
    with served.client() as client:  # still serving, frames too
        assert client.infer_model("shapes", frame)["detections"] == _expected_renamed()


def test_the_client_checks_channels_before_it_sends(served: Any) -> None:
    frame = cv2.imdecode(np.frombuffer(make_image_bytes(), np.uint8), cv2.IMREAD_COLOR)
    with served.client() as client:
        with pytest.raises(ValueError, match="encoded bytes say their own"):
            client.infer_model("shapes", make_image_bytes(), channels="rgb")
        with pytest.raises(ValueError, match="channels must be one of"):
            client.infer_model("shapes", frame, channels="bgra")
        assert client.infer(frame, channels="rgb")["detections"] == list(EXPECTED)


def test_a_json_request_has_no_channels(served: Any) -> None:
    body = {"image_base64": base64.b64encode(make_image_bytes()).decode(), "channels": "rgb"}
    response = httpx.post(f"{served.url}{INFER}", auth=served.auth(), json=body)
    assert response.status_code == 400
    assert "channels applies to a decoded frame only" in _error(response)


# --- POST /v1/models/{name}/bench ------------------------------------------------------------


def test_bench_times_the_model_on_a_synthetic_input(served: Any) -> None:
    with served.client() as client:
        result = client.bench("shapes", runs=5)
        assert (result["model"], result["version"], result["runs"], result["warmup"]) == (
            "shapes",
            "1",
            5,
            3,
        )
        assert result["input"] == "synthetic 64x64"  # the fake package has no self-test sample
        latency = result["latency_ms"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
        assert set(result["stages_ms"]) == {"preprocess", "inference", "postprocess"}
        for runs in (0, 1001, "5", True):
            with pytest.raises(AgentRejectedError) as bad:
                client._request(
                    "POST",
                    "/v1/models/shapes/bench",
                    content=json.dumps({"runs": runs}).encode(),
                    headers={"Content-Type": "application/json"},
                )
            assert bad.value.status == 400 and "runs must be a whole number" in bad.value.message
        with pytest.raises(AgentRejectedError) as missing:
            client.bench("nope", runs=1)
        assert missing.value.status == 404
        # a benchmark is not usage
        assert client.stats()["models"]["shapes"]["requests"] == 0


# --- API keys --------------------------------------------------------------------------------


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert agent_cli(argv) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_api_keys_open_inference_routes_only(
    served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(served.service.data_dir)
    made = _cli_json(
        ["keys", "create", "--name", "camera-app", "--data-dir", data_dir, "--json"], capsys
    )
    secret = made["key"]
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert made["prefix"] == secret[:8] and made["scope"] == "infer"
    stored = (served.service.data_dir / "api-keys.json").read_text()
    assert secret not in stored and key_hash(secret) in stored  # only the hash is kept
    if sys.platform != "win32":
        mode = stat.S_IMODE((served.service.data_dir / "api-keys.json").stat().st_mode)
        assert mode == 0o600

    bearer = {"Authorization": f"Bearer {secret}"}
    image = make_image_bytes()
    ok = httpx.post(
        f"{served.url}{INFER}", headers={**bearer, "Content-Type": "image/png"}, content=image
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["detections"] == _expected_renamed()
    default = httpx.post(f"{served.url}/v1/infer", headers=bearer, content=image)
    assert default.status_code == 200 and default.json()["model"] == "shapes"
    assert httpx.get(f"{served.url}/v1/health", headers=bearer).status_code == 200
    # discovery info still answers as to any stranger: nothing more
    info = httpx.get(f"{served.url}/v1/info", headers=bearer)
    assert (
        info.status_code == 200 and info.json()["paired"] is False and "models" not in info.json()
    )

    for method, path in [
        ("GET", "/v1/stats"),
        ("GET", "/v1/metrics"),
        ("PUT", "/v1/packages"),
        ("POST", "/v1/models/shapes/bench"),
        ("POST", "/v1/models/shapes/rollback"),
        ("DELETE", "/v1/pair"),
    ]:
        refused = httpx.request(method, f"{served.url}{path}", headers=bearer, content=b"{}")
        assert refused.status_code == 401, (method, path)
        assert "API keys open the inference routes only" in _error(refused)

    wrong = httpx.post(
        f"{served.url}{INFER}", headers={"Authorization": "Bearer " + "A" * 43}, content=image
    )
    assert wrong.status_code == 401 and "unknown or revoked API key" in _error(wrong)

    listed = _cli_json(["keys", "list", "--data-dir", data_dir, "--json"], capsys)["keys"]
    assert [(k["name"], k["prefix"]) for k in listed] == [("camera-app", secret[:8])]
    assert listed[0]["last_used"] is not None and listed[0]["created_at"]

    # the paired desktop keeps working on the same routes
    with served.client() as client:
        assert client.infer_model("shapes", image)["model"] == "shapes"

    # revoked from the CLI while the agent runs: refused from the next request
    _cli_json(["keys", "revoke", "camera-app", "--data-dir", data_dir, "--json"], capsys)
    gone = httpx.post(f"{served.url}{INFER}", headers=bearer, content=image)
    assert gone.status_code == 401 and "unknown or revoked API key" in _error(gone)
    assert served.client().stats()["models"]["shapes"]["requests"] == 3


def test_api_key_store_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = ApiKeys(tmp_path, clock=lambda: 1_700_000_000.0)
    key, secret = keys.create("a")
    assert keys.check(secret) == key and keys.check(secret + "x") is None
    assert keys.check(secret, scope="admin") is None
    with pytest.raises(ApiKeyError, match="exists; revoke it first"):
        keys.create("a")
    with pytest.raises(ApiKeyError, match="bad key name"):
        keys.create("has space")
    with pytest.raises(ApiKeyError, match="unknown scope"):
        keys.create("b", scope="admin")
    with pytest.raises(ApiKeyError, match="no API key named 'zz'"):
        keys.revoke("zz")
    other = ApiKeys(tmp_path)  # another process (the CLI) revokes: this one notices
    other.revoke("a")
    assert keys.check(secret) is None and keys.entries() == []
    (tmp_path / "api-keys.json").write_text("{not json")
    with pytest.raises(ApiKeyError, match="corrupt"):
        ApiKeys(tmp_path).entries()
    assert agent_cli(["keys", "revoke", "a", "--data-dir", str(tmp_path)]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None
    assert bearer_token(None) is None


def test_every_inference_route_needs_a_pairing_or_a_key(served: Any) -> None:
    routes = {(r.method, r.resource.canonical) for r in served.service.app.router.routes()}
    mine = {("POST", "/v1/models/{name}/infer"), ("POST", "/v1/models/{name}/bench")}
    assert mine <= routes and BEARER_ROUTES - {("GET", "/v1/health")} <= routes
    for method, canonical in mine:
        path = canonical.replace("{name}", "shapes")
        response = httpx.request(method, f"{served.url}{path}", content=make_image_bytes())
        assert response.status_code == 401 and "not paired" in _error(response)


# --- bounded concurrency ---------------------------------------------------------------------


def test_limiter_counts_queue_and_rejects() -> None:
    async def scenario() -> dict[str, int]:
        limiter = InferenceLimiter(1, 1)
        gate = asyncio.Event()

        async def hold() -> None:
            async with limiter.slot():
                await gate.wait()

        first = asyncio.create_task(hold())
        second = asyncio.create_task(hold())
        while limiter.queued < 1:
            await asyncio.sleep(0)
        with pytest.raises(ApiError) as busy:
            async with limiter.slot():
                pass
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
        seen = dict(limiter.counters())
        gate.set()
        await asyncio.gather(first, second)
        assert (limiter.in_flight, limiter.queued) == (0, 0)
        return seen

    seen = asyncio.run(scenario())
    assert (seen["in_flight"], seen["queued"], seen["rejected"]) == (1, 1, 1)
    with pytest.raises(ValueError):
        InferenceLimiter(0, 1)


def test_limiter_bounds_the_bodies_held_in_memory() -> None:
    async def scenario() -> None:
        limiter = InferenceLimiter(2, 2, max_body_bytes=100)
        async with limiter.admit(60):
            with pytest.raises(ApiError) as over:
                async with limiter.admit(60):
                    pass
            assert over.value.status == 503
            async with limiter.admit(30):  # fits beside the first
                assert (limiter.queued, limiter.body_bytes) == (2, 90)
        async with limiter.admit(500):  # alone, any size (the route's own limit applies)
            pass
        assert (limiter.admitted, limiter.body_bytes, limiter.rejected) == (0, 0, 1)

    asyncio.run(scenario())


def _held_model(running: Any, package: Path, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Install ``package`` on ``running`` and make its model a slow backend: each prediction
    holds its slot until the returned event is set."""
    with running.client() as client:
        client.upload_package(package)
    model = running.service.store.get("shapes")
    release = threading.Event()
    real = model.predictor.predict_bytes

    def slow(data: bytes, **kwargs: Any) -> Any:
        release.wait(60)
        return real(data, **kwargs)

    monkeypatch.setattr(model.predictor, "predict_bytes", slow)
    return release


def test_a_busy_agent_refuses_before_it_reads_the_body(
    start_agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application that opens more requests than the agent admits gets its 503 as soon as
    the headers arrive: the body is not read into memory first (here it never comes)."""
    running = start_agent(max_concurrency=1, max_queue=0)
    release = _held_model(running, package, monkeypatch)
    _, secret = running.service.api_keys.create("camera")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            httpx.post,
            f"{running.url}{INFER}",
            headers={"Authorization": f"Bearer {secret}"},
            content=make_image_bytes(),
            timeout=60,
        )
        wait_for(lambda: running.service.limiter.in_flight == 1, "the first inference")
        host, port = running.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {secret}\r\n"
                "Content-Type: image/jpeg\r\nContent-Length: 50000000\r\n\r\n".encode()
            )
            answer = b""
            while b"\r\n\r\n" not in answer:  # times out if the agent waits for the body
                chunk = sock.recv(65536)
                assert chunk, "the agent closed the connection without an answer"
                answer += chunk
        head = answer.decode("latin-1")
        assert head.startswith("HTTP/1.1 503") and "Retry-After: 1" in head
        release.set()
        assert first.result().status_code == 200
    assert running.service.limiter.counters()["rejected"] == 1


def test_a_full_queue_answers_503_with_retry_after(
    start_agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = start_agent(max_concurrency=1, max_queue=1)
    release = _held_model(running, package, monkeypatch)
    limiter = running.service.limiter
    image = make_image_bytes()

    def infer() -> httpx.Response:
        return httpx.post(f"{running.url}{INFER}", auth=running.auth(), content=image, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(infer)
        wait_for(lambda: limiter.in_flight == 1, "the first inference to start")
        second = pool.submit(infer)
        wait_for(lambda: limiter.queued == 1, "the second inference to queue")
        refused = infer()
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "busy" in _error(refused)
        metrics = httpx.get(f"{running.url}/v1/metrics", auth=running.auth()).text
        assert "outpost_inference_in_flight 1" in metrics
        assert "outpost_inference_queued 1" in metrics
        assert "outpost_inference_rejected_total 1" in metrics
        release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    counters = running.client().stats()["concurrency"]
    assert (counters["in_flight"], counters["queued"], counters["rejected"]) == (0, 0, 1)
    assert (counters["max_in_flight"], counters["max_queued"]) == (1, 1)
