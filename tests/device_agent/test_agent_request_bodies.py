"""Request bodies: a body that stops short frees what it held, one too large is refused from
its headers, ``Expect: 100-continue`` is met only once a request is admitted, and hostile or
unusual bodies (deep JSON, multipart, base64 as clients send it) get a 400 that says what to
send. Real agents on 127.0.0.1; the bodies go over real sockets."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiohttp import web

from device_agent import bodies, http_api, inference
from device_agent.bodies import BodyError, base64_image, json_body, multipart_field
from device_agent.http_api import MAX_IMAGE_BYTES
from tests.device_agent.conftest import wait_for
from tests.device_agent.stream_faults import serving_version
from tests.fakes import EXPECTED, make_image_bytes

INFER = "/v1/models/shapes/infer"
PIECE = 256  # the fake packages are ~1.5 KiB: several pieces each
_KEYS = itertools.count()


@pytest.fixture
def quick_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that sends nothing for half a second has stalled (30 s on a device)."""
    monkeypatch.setattr(bodies, "BODY_IDLE_S", 0.5)
    monkeypatch.setattr(bodies, "CHECK_EVERY_S", 0.05)


@pytest.fixture
def served(agent: Any, package: Path) -> Any:
    with agent.client() as client:
        client.upload_package(package)
    return agent


def _key(agent: Any) -> dict[str, str]:
    _, secret = agent.service.api_keys.create(f"camera-{next(_KEYS)}")
    return {"Authorization": f"Bearer {secret}"}


def _connect(agent: Any) -> socket.socket:
    host, port = agent.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=20)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: agent", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer read from ``sock``: status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the agent closed the connection without an answer ({data!r})"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the agent closed the connection mid-answer"
        body += chunk
    return int(status_line.split()[1]), headers, body


def _found(answer: Any) -> list[dict[str, Any]]:
    """An answer's detections without the named route's protocol-1 aliases."""
    data = answer.json() if isinstance(answer, httpx.Response) else json.loads(answer)
    return [{k: v for k, v in d.items() if k not in ("class", "score")} for d in data["detections"]]


def _error(body: bytes) -> str:
    message = json.loads(body)["error"]
    assert isinstance(message, str) and "\n" not in message
    return message


# --- a body that stops short -----------------------------------------------------------------


def test_a_body_that_stops_short_is_answered_408_and_frees_its_slot(
    start_agent: Any, package: Path, quick_stall: None
) -> None:
    """A camera that drops off the network mid-request leaves a connection that never closes:
    with one slot, it would hold the model for ever; the agent lets go once the body stalls."""
    running = start_agent(max_concurrency=1, max_queue=0)
    with running.client() as client:
        client.upload_package(package)
    key = _key(running)
    with _connect(running) as sock:
        sock.sendall(
            _head("POST", INFER, {**key, "Content-Type": "image/jpeg", "Content-Length": "1000"})
            + b"ab"
        )
        wait_for(lambda: running.service.limiter.admitted == 1, "the request to be admitted")
        status, headers, body = _answer(sock)  # the connection is still open: no FIN from us
        assert status == 408 and headers.get("connection") == "close"
        assert "stopped short (2 bytes received" in _error(body) and "send the request" in _error(
            body
        )
    wait_for(lambda: running.service.limiter.admitted == 0, "the slot to be given back")
    answer = httpx.post(f"{running.url}{INFER}", headers=key, content=make_image_bytes())
    assert answer.status_code == 200 and _found(answer) == list(EXPECTED)
    assert running.service.stats.summary("shapes")["errors"] == 0  # the model did not fail


def test_a_body_that_trickles_in_is_held_to_its_deadline(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte now and then is progress, but not enough: a body must keep up a minimum rate."""
    monkeypatch.setattr(bodies, "BODY_IDLE_S", 0.3)
    monkeypatch.setattr(bodies, "BODY_MIN_RATE", 1000)  # 1000 bytes: 0.3 s + 1 s allowed
    monkeypatch.setattr(bodies, "CHECK_EVERY_S", 0.05)
    stop = threading.Event()
    with _connect(served) as sock:
        sock.sendall(
            _head(
                "POST",
                INFER,
                {**_key(served), "Content-Type": "image/jpeg", "Content-Length": "1000"},
            )
        )

        def trickle() -> None:
            while not stop.wait(0.1):
                try:
                    sock.sendall(b"x")
                except OSError:
                    return

        with ThreadPoolExecutor(1) as pool:
            pool.submit(trickle)
            try:
                status, _, body = _answer(sock)
            finally:
                stop.set()
    assert status == 408 and "it took over 1 s" in _error(body)


class _Stalling(httpx.SyncByteStream):
    """``inner``'s first ``after`` bytes, then nothing until ``release`` (a link gone dead
    without a reset: the agent sees neither data nor the end of the connection)."""

    def __init__(self, inner: Any, after: int, release: threading.Event, request: Any) -> None:
        self.inner, self.after, self.release, self.request = inner, after, release, request

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for block in self.inner:
            block = bytes(block)
            if sent + len(block) > self.after:
                yield block[: self.after - sent]
                self.release.wait(60)
                raise httpx.WriteError("the link went dead (test)", request=self.request)
            sent += len(block)
            yield block


class _StallFirstStream(httpx.BaseTransport):
    def __init__(self, after: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.after = after
        self.release = threading.Event()
        self.stalled = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and not self.stalled:
            self.stalled = True
            request.stream = _Stalling(request.stream, self.after, self.release, request)
        return self.inner.handle_request(request)


def test_a_stalled_upload_stream_lets_the_next_one_resume(
    agent: Any, package: Path, quick_stall: None
) -> None:
    """A desktop whose link died mid-deploy comes back on a new connection; the old one, never
    closed, must not keep the upload's lock: the new stream resumes after the pieces that
    arrived and the package installs."""
    stalling = _StallFirstStream(after=3 * PIECE + 40)
    with ThreadPoolExecutor(1) as pool:
        with agent.client(transport=stalling) as first:
            first.info()
            dead = pool.submit(
                first.upload_package, package, resumable=True, piece_size=PIECE, backoff_s=0.01
            )
            wait_for(lambda: stalling.stalled, "the first stream to start")
            try:
                with agent.client() as again:
                    result = again.upload_package(
                        package, resumable=True, piece_size=PIECE, backoff_s=0.01
                    )
                    assert result["version"] == "1" and serving_version(again) == "1"
            finally:
                stalling.release.set()
            try:  # its upload was finished by the other stream: refused, or the same result
                late = dead.result(60)
            except Exception as exc:  # noqa: BLE001
                assert "committed" in str(exc) or "already" in str(exc), exc
            else:
                assert late["version"] == "1"


def test_a_stalled_package_body_leaves_no_file(
    agent: Any, package: Path, quick_stall: None
) -> None:
    """``PUT /v1/packages`` (one request): a stalled body is dropped with what it wrote."""
    data = package.read_bytes()
    request = httpx.Request("PUT", f"{agent.url}/v1/packages", content=data)
    signed = next(agent.auth().auth_flow(request))
    headers = {k: v for k, v in signed.headers.items() if k.lower() not in ("host",)}
    with _connect(agent) as sock:
        sock.sendall(_head("PUT", "/v1/packages", headers) + data[:100])
        status, _, body = _answer(sock)
    assert status == 408 and "stopped short (100 bytes received" in _error(body)
    assert not list((Path(agent.service.data_dir) / "tmp").glob("upload-*"))
    assert agent.client().models() == []


# --- refused from the headers ----------------------------------------------------------------


def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(served: Any) -> None:
    declared = MAX_IMAGE_BYTES + 1
    for auth in ({**_key(served)}, None):
        headers = {"Content-Type": "image/jpeg", "Content-Length": str(declared)}
        if auth is None:  # a paired desktop: signed for a body it never sends
            request = httpx.Request("POST", f"{served.url}{INFER}", content=b"x", headers=headers)
            signed = next(served.auth().auth_flow(request))
            skip = ("host", "content-length", "content-type")
            headers.update({k: v for k, v in signed.headers.items() if k.lower() not in skip})
        else:
            headers.update(auth)
        with _connect(served) as sock:
            sock.sendall(_head("POST", INFER, headers))  # and no body
            status, _, body = _answer(sock)
        assert status == 413
        message = _error(body)
        assert f"{declared} bytes" in message and "takes at most 64.0 MiB" in message
        assert "send a smaller image" in message


def test_expect_100_continue_is_met_only_for_an_admitted_request(
    start_agent: Any, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """curl sends ``Expect: 100-continue`` before a large body; the agent invites the body only
    when it will read it, and refuses a request it would not (too large, busy) at once."""
    from tests.device_agent.test_agent_infer_api import _held_model

    running = start_agent(max_concurrency=1, max_queue=0)
    release = _held_model(running, package, monkeypatch)
    key = _key(running)
    image = make_image_bytes()
    expect = {**key, "Content-Type": "image/jpeg", "Expect": "100-continue"}
    with _connect(running) as sock:  # too large: the final answer, no invitation
        sock.sendall(_head("POST", INFER, {**expect, "Content-Length": str(MAX_IMAGE_BYTES + 1)}))
        status, _, _ = _answer(sock)
        assert status == 413
    with ThreadPoolExecutor(1) as pool, _connect(running) as sock:
        sock.sendall(_head("POST", INFER, {**expect, "Content-Length": str(len(image))}))
        status, _, body = _answer(sock)
        assert (status, body) == (100, b"")  # the invitation: the body may come
        sock.sendall(image)
        wait_for(lambda: running.service.limiter.in_flight == 1, "the first inference")
        with _connect(running) as busy:  # the only slot is taken: 503 without an invitation
            busy.sendall(_head("POST", INFER, {**expect, "Content-Length": str(len(image))}))
            status, headers, _ = _answer(busy)
            assert status == 503 and headers["retry-after"] == "1"
        done = pool.submit(_answer, sock)
        release.set()
        status, _, body = done.result(60)
        assert status == 200 and _found(body) == list(EXPECTED)
    with _connect(running) as sock:
        sock.sendall(_head("POST", INFER, {**key, "Expect": "magic", "Content-Length": "1"}))
        status, _, body = _answer(sock)
        assert status == 417 and "100-continue" in _error(body)


def test_an_application_without_a_key_is_told_how_to_send_one(served: Any) -> None:
    answer = httpx.post(f"{served.url}{INFER}", content=make_image_bytes())
    message = answer.json()["error"]
    assert answer.status_code == 401 and "not paired" in message
    assert "Authorization: Bearer KEY" in message and "outpost-agent keys create" in message
    answer = httpx.get(f"{served.url}/v1/models")  # a desktop's route: pairing only
    assert answer.status_code == 401 and "Bearer" not in answer.json()["error"]


def test_head_of_an_open_route_answers_as_its_get(agent: Any) -> None:
    assert httpx.head(f"{agent.url}/v1/info").status_code == 200
    assert httpx.head(f"{agent.url}/v1/ready").status_code == 200
    assert httpx.head(f"{agent.url}/v1/stats").status_code == 401


# --- what the bodies say ---------------------------------------------------------------------


def test_deeply_nested_json_is_a_400_on_every_json_route(served: Any) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    json_type = {"Content-Type": "application/json"}
    answers = [
        httpx.post(f"{served.url}{INFER}", headers={**_key(served), **json_type}, content=deep),
        httpx.post(f"{served.url}/v1/infer", headers={**_key(served), **json_type}, content=deep),
    ]
    for path in ("/v1/models/shapes/bench", "/v1/models/shapes/activate", "/v1/uploads"):
        answers.append(
            httpx.post(f"{served.url}{path}", auth=served.auth(), headers=json_type, content=deep)
        )
    for answer in answers:
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]
        assert "nested too deeply" in message or "must be a JSON object" in message
    assert serving_version(served.client()) == "1"


def test_both_inference_routes_take_the_same_inputs_and_say_the_same(served: Any) -> None:
    key = _key(served)
    image = make_image_bytes()
    encoded = base64.b64encode(image).decode()
    for path in (INFER, "/v1/infer?model=shapes"):
        url = f"{served.url}{path}"
        as_json = httpx.post(url, headers=key, json={"image_base64": encoded, "max_det": 1})
        assert as_json.status_code == 200 and len(as_json.json()["detections"]) == 1
        joiner = "&" if "?" in path else "?"
        capped = httpx.post(f"{url}{joiner}max_det=1", headers=key, content=image)
        assert capped.status_code == 200 and len(capped.json()["detections"]) == 1
        bad = httpx.post(f"{url}{joiner}max_det=0", headers=key, content=image)
        assert bad.status_code == 400 and "max_det must be a whole number" in bad.json()["error"]
        broken = httpx.post(url, headers=key, content=image[: len(image) // 3])
        assert broken.status_code == 400
        assert broken.json()["error"].startswith("not a readable image (")
        # the JSON's "model" is the route's, or a 400 that says where to send it
        same = httpx.post(url, headers=key, json={"image_base64": encoded, "model": "shapes"})
        assert same.status_code == 200 and _found(same) == list(EXPECTED)
        other = httpx.post(url, headers=key, json={"image_base64": encoded, "model": "cars"})
        assert other.status_code == 400
        assert other.json()["error"] == (
            "the JSON names model 'cars' but this request is for 'shapes'; send it to "
            "POST /v1/models/cars/infer (or ?model=cars on /v1/infer)"
        )
        odd = httpx.post(url, headers=key, json={"image_base64": encoded, "model": 3})
        assert odd.status_code == 400 and "'model' must be a model's name" in odd.json()["error"]


def test_a_large_json_body_is_read_off_the_event_loop(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON body over 1 MiB (here 3 MiB of blanks around the image) is decoded in a worker
    thread; its answer is the same."""
    threads: list[str] = []
    real = inference._json_input

    def recorded(raw: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return real(raw)

    monkeypatch.setattr(inference, "_json_input", recorded)
    encoded = base64.b64encode(make_image_bytes()).decode()
    body = b'{"image_base64": "' + encoded.encode() + b'",' + b" " * (3 << 20) + b'"iou": 0.5}'
    answer = httpx.post(
        f"{served.url}{INFER}",
        headers={**_key(served), "Content-Type": "application/json"},
        content=body,
    )
    assert answer.status_code == 200 and _found(answer) == list(EXPECTED)
    small = httpx.post(f"{served.url}{INFER}", headers=_key(served), json={"image_base64": encoded})
    assert small.status_code == 200
    assert threads[0] != "agent-loop" and threads[1] == "agent-loop"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("conf=0.5&conf=2", "conf is given 2 times in the query; give it once"),
        ("iou=0.5&iou=0.5&iou=0.4", "iou is given 3 times"),
        ("max_det=1_000", "max_det must be a whole number"),
        ("max_det=%D9%A5", "max_det must be a whole number"),
        ("conf=1_0", "conf must be a number between 0 and 1"),
        ("conf=%D9%A0.5", "conf must be a number between 0 and 1"),
    ],
)
def test_an_option_given_twice_or_in_other_digits_is_refused(
    served: Any, query: str, reason: str
) -> None:
    answer = httpx.post(
        f"{served.url}{INFER}?{query}", headers=_key(served), content=make_image_bytes()
    )
    assert answer.status_code == 400 and reason in answer.json()["error"]


def test_base64_as_clients_send_it_is_taken(served: Any) -> None:
    image = make_image_bytes()
    plain = base64.b64encode(image).decode()
    forms = [
        base64.encodebytes(image).decode(),  # wrapped in lines (MIME)
        "data:image/png;base64," + plain,  # a browser's data URL
        base64.urlsafe_b64encode(image).decode().rstrip("="),  # URL-safe, unpadded
    ]
    key = _key(served)
    for form in forms:
        answer = httpx.post(f"{served.url}{INFER}", headers=key, json={"image_base64": form})
        assert answer.status_code == 200 and _found(answer) == list(EXPECTED)
    for bad, reason in (("@@@@", "not valid base64; send the image file's bytes"), ("", "empty")):
        answer = httpx.post(f"{served.url}{INFER}", headers=key, json={"image_base64": bad})
        assert answer.status_code == 400 and reason in answer.json()["error"]


def _multipart(*parts: tuple[str, bytes], boundary: str = "b0und") -> tuple[bytes, str]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="f"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + b"\r\n"
        for name, content in parts
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_bodies_and_their_refusals(served: Any) -> None:
    key = _key(served)
    image = make_image_bytes()
    filler = ("notes", b"\n" * (2 << 20))  # 2 MiB of blank lines: parsed off the event loop
    cases = [
        (_multipart(filler, ("image", image)), 200, ""),
        (_multipart(("image", image), ("image", image)), 400, "the field 'image' twice"),
        (_multipart(("other", image)), 400, "no 'image' field; send the file as field 'image'"),
        (_multipart(("image", b"")), 400, "the multipart field 'image' is empty"),
        (
            _multipart(*[("n", b"")] * bodies.MAX_PARTS, ("image", image)),
            400,
            f"more than {bodies.MAX_PARTS} parts; send the image as field 'image'",
        ),
        (_multipart(*[("n", b"")] * (bodies.MAX_PARTS - 1), ("image", image)), 200, ""),
        ((_multipart(("image", image))[0], "multipart/form-data"), 400, "no usable boundary"),
        (
            (_multipart(("image", image))[0], "multipart/form-data; boundary=other"),
            400,
            "does not contain the boundary",
        ),
    ]
    for (body, content_type), status, reason in cases:
        answer = httpx.post(
            f"{served.url}{INFER}", headers={**key, "Content-Type": content_type}, content=body
        )
        assert answer.status_code == status, (reason, answer.text)
        if status == 200:
            assert _found(answer) == list(EXPECTED)
        else:
            assert reason in answer.json()["error"] and "\n" not in answer.json()["error"]


def test_empty_bodies_say_what_to_send(served: Any) -> None:
    key = _key(served)
    for content_type, reason in (
        ("image/jpeg", "send JPEG or PNG bytes"),
        ("application/x-npy", "send the frame's np.save bytes"),
    ):
        answer = httpx.post(
            f"{served.url}{INFER}", headers={**key, "Content-Type": content_type}, content=b""
        )
        assert answer.status_code == 400 and reason in answer.json()["error"]


def test_a_frame_header_that_is_code_says_what_to_send(served: Any) -> None:
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (__import__('os'),), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    frame = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    answer = httpx.post(
        f"{served.url}{INFER}",
        headers={**_key(served), "Content-Type": "application/x-npy"},
        content=frame,
    )
    message = answer.json()["error"]
    assert answer.status_code == 400 and "np.save" in message and "<ast." not in message


# --- the parsers, directly -------------------------------------------------------------------


def test_multipart_field_reads_the_forms_clients_send() -> None:
    body, content_type = _multipart(("a", b"hello"), ("image", b"\x00\x01--b0und\r\n"))
    assert multipart_field(content_type, body, "image") == b"\x00\x01--b0und\r\n"
    assert multipart_field(content_type, body.replace(b"\r\n", b"\n"), "a") == b"hello"
    assert multipart_field(content_type, b"preamble\r\n" + body, "a") == b"hello"
    assert multipart_field(f'{content_type[:-5]}"b0und"', body, "image") is not None
    assert multipart_field(content_type, body, "missing") is None
    encoded = (
        b'--b0und\r\nContent-Disposition: form-data; name="image"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nAAE\r\n--b0und--"
    )
    assert multipart_field(content_type, encoded, "image") == b"\x00\x01"
    for filler in (b"\n", b"\n--b0un", b"a--b0und", b"-"):  # many near-delimiters, one field
        crowded, _ = _multipart(("notes", filler * 200_000), ("image", b"pixels"))
        assert multipart_field(content_type, crowded, "image") == b"pixels"
    with pytest.raises(BodyError, match="headers"):
        multipart_field(content_type, b"--b0und\r\n" + b"x" * 40_000, "image")


def test_json_and_base64_helpers() -> None:
    assert json_body(b'{"a": 1}', "x") == {"a": 1}
    for raw, reason in ((b"[" * 50_000, "nested too deeply"), (b"\xff", "could not be parsed")):
        with pytest.raises(BodyError, match=reason):
            json_body(raw, "a JSON object")
    data = bytes(range(256))
    assert base64_image(base64.b64encode(data).decode()) == data
    assert base64_image(" " + base64.b64encode(data).decode() + "\n") == data
    assert base64_image("data:image/jpeg;base64," + base64.b64encode(data).decode()) == data
    with pytest.raises(BodyError, match="not valid base64"):
        base64_image("abc!")


def test_body_deadline_grows_with_the_length() -> None:
    assert bodies.body_deadline(0, 100) == bodies.BODY_IDLE_S
    assert bodies.body_deadline(None, 64 << 10) == bodies.BODY_IDLE_S + 1
    assert bodies.body_deadline(128 << 10, 1) == bodies.BODY_IDLE_S + 2


def test_multipart_edge_parts_are_read_or_refused_with_a_400_reason() -> None:
    content_type = "multipart/form-data; boundary=b0und"
    lf_headers = (
        b'--b0und\nContent-Disposition: form-data; name="image"\n\n'
        b"\xff\xd8JUNK\r\n\r\nREAL-TAIL\n--b0und--"
    )  # headers end in LF only; the content holds CRLFCRLF
    assert multipart_field(content_type, lf_headers, "image") == b"\xff\xd8JUNK\r\n\r\nREAL-TAIL"
    broken = (
        b'--b0und\r\nContent-Disposition: form-data; name="image"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nAAAAA\r\n--b0und--"
    )
    with pytest.raises(BodyError, match="not valid base64"):
        multipart_field(content_type, broken, "image")


def _read_to_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"FOO BAR\r\n\r\n", "Invalid method encountered"),
        (b"GET /v1/health HTTP/1.1\r\nHost: a\r\nEvil Header\x1b[31m: x\r\n\r\n", "header"),
        (b"POST /v1/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 1e9\r\n\r\n", "Content-Length"),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", "too long"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, "not TLS"),
    ],
    ids=["method", "header", "length", "line", "tls"],
)
def test_bytes_that_are_not_http_get_a_json_reason_and_no_traceback(
    served: Any, caplog: pytest.LogCaptureFixture, raw: bytes, said: str
) -> None:
    """What aiohttp's parser refuses never reaches the application, and aiohttp answered it with
    a multi-line text page (echoing the sender's bytes) and logged a traceback at ERROR: anyone
    on the network could fill a device's log. The agent answers it as every other failure: JSON
    with a one-line reason, the connection closed, one INFO line logged."""
    with caplog.at_level(logging.INFO, logger="device_agent"), _connect(served) as sock:
        sock.sendall(raw)
        answer = _read_to_close(sock)  # the agent closes the connection after its answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"400", answer[:300]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert said in error and "\n" not in error and "\x1b" not in error, error
    assert "Evil" not in error and "aaaa" not in error  # the sender's bytes are not echoed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "a malformed request from 127.0.0.1" in caplog.text
    with served.client() as client:
        assert serving_version(client) == "1"  # and it goes on serving


def test_what_escapes_the_application_is_a_json_500_with_its_traceback_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure outside every middleware (a defect) answers JSON too, and is logged whole."""

    async def answer() -> web.StreamResponse:
        handler = http_api.JsonErrorServer(lambda request: None)()  # type: ignore[arg-type,return-value]
        request = SimpleNamespace(writer=SimpleNamespace(output_size=0), remote="10.0.0.9")
        try:
            raise RuntimeError("a defect\non two lines")
        except RuntimeError as exc:
            return handler.handle_error(request, 500, exc)  # type: ignore[arg-type]

    with caplog.at_level(logging.INFO, logger="device_agent"):
        response = asyncio.run(answer())
    assert isinstance(response, web.Response) and response.status == 500
    assert response.content_type == "application/json"
    assert json.loads(response.text or "")["error"] == (
        "internal error (RuntimeError: a defect on two lines); see the agent log"
    )
    assert "Traceback" in caplog.text and "unexpected error from 10.0.0.9" in caplog.text
    assert http_api.malformed_reason(None, None).startswith(
        "not a valid HTTP/1.1 request (unreadable"
    )
