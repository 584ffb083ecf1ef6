"""HTTP API v1 of the agent: JSON everywhere, errors as ``{"error": "<one line>"}``.

Blocking work (installing a package, running a model) goes to the service's executors so
the event loop keeps answering; one install runs at a time.

Only ``GET /v1/info`` (reduced to id, version, protocol and keys), ``POST /v1/pair`` and
``GET /v1/ready`` (reduced to its status: local supervisors probe it without a key) answer a
client that is not paired; every other request must be signed by a paired desktop
(:mod:`device_agent.auth`) or gets 401. Every response to a request with a nonce is signed.
An application's API key (``Authorization: Bearer``) opens the inference routes and
``GET /v1/health`` only (:mod:`device_agent.apikeys`, :mod:`device_agent.inference`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import ctypes
import functools
import hashlib
import hmac
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import LineTooLong

from device_agent.auth import (
    AGENT_KEY_HEADER,
    AGENT_TIME_KEY,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    AuthError,
    ClockSkewError,
    SignedHeaders,
    agent_expected_proof,
    b64,
    chain_body_digest,
    chain_open_digest,
    fingerprint,
    parse_signed_headers,
    proof_message,
    request_message,
    response_message,
    seal_message,
    sha256_hex,
    unb64,
    valid_nonce,
    verify,
)
from device_agent.bodies import (
    BodyError,
    BodyStalledError,
    BodyWatch,
    body_deadline,
    json_body,
    multipart_field,
)
from device_agent.errors import (
    DISK_FULL,
    AmbiguousModelError,
    InstallError,
    ModelNotFoundError,
    NoModelError,
    RollbackError,
    StorageFullError,
    ascii_digits,
    mib,
    one_line,
    storage_failure,
    storage_message,
)
from device_agent.openapi import openapi_spec
from device_agent.pairing import PairingError
from device_agent.protocol_version import (
    UPGRADE_STATUS,
    check_request_headers,
    info_fields,
    protocol_headers,
)
from device_agent.stats import PROMETHEUS_CONTENT_TYPE, SERIES_MINUTES, prometheus_text
from device_agent.store import UninstallError
from device_agent.uploads import (
    CHAIN_CONTENT_TYPE,
    OPEN_HEAD_HEADER,
    OPEN_LENGTH_HEADER,
    OPEN_NAME_HEADER,
    OPEN_PIECE_HEADER,
    PIECES_CONTENT_TYPE,
    SEALED_CONTENT_TYPE,
    ChainWriter,
    PieceWriter,
    UploadError,
    UploadManager,
    profile_line,
    profiling,
)
from runtimes.detections import MAX_TOP_K
from runtimes.errors import ImageDecodeError, OutpostError, PackageError, RuntimeUnavailableError
from runtimes.preprocess import FRAME_CHANNELS, NPY_CONTENT_TYPE

if TYPE_CHECKING:
    from device_agent.service import AgentService
    from device_agent.store import InstalledModel
    from runtimes.detections import Detections
    from runtimes.predictor import Timing

log = logging.getLogger(__name__)
Input = TypeVar("Input")

MAX_PACKAGE_BYTES = 2 << 30  # 2 GiB, streamed to disk
MAX_IMAGE_BYTES = 64 << 20  # 64 MiB, read into memory (also the multipart limit)
# A pairing request is a few hundred bytes, and anyone on the network may send one: its body
# is read under this limit, not the image limit (64 MiB a connection, before any check).
MAX_PAIR_BYTES = 16 << 10
PARSE_INLINE_BYTES = 1 << 20  # a multipart or JSON body under this is parsed on the event loop
# A number in the query: ASCII digits, an optional point and exponent (no "_", no blanks).
_DECIMAL = re.compile(r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+\.", re.ASCII)
SERVICE_KEY: web.AppKey[AgentService] = web.AppKey("outpost_agent_service")
# Set by the auth middleware for the request being handled (aiohttp runs each in its own task).
PEER: contextvars.ContextVar[str | None] = contextvars.ContextVar("outpost_peer", default=None)
SIGNED: contextvars.ContextVar[SignedHeaders | None] = contextvars.ContextVar(
    "outpost_signed", default=None
)
# The request's body once read (and checked), and whether 100 Continue was sent for it.
BODY: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("outpost_body", default=None)
CONTINUED: contextvars.ContextVar[bool] = contextvars.ContextVar("outpost_continued", default=False)
# Open to anyone: discovery info, the pairing exchange, and readiness (status only, for local
# supervisors such as systemd or a container healthcheck, which hold no key). Everything else
# needs a paired key.
PUBLIC_ROUTES = frozenset({("GET", "/v1/info"), ("POST", "/v1/pair"), ("GET", "/v1/ready")})
# Routes an application may call with an API key (Authorization: Bearer ...).
BEARER_ROUTES = frozenset(
    {
        ("POST", "/v1/infer"),
        ("POST", "/v1/models/{name}/infer"),
        ("GET", "/v1/health"),
    }
)
INFERENCE_ROUTES = frozenset({("POST", "/v1/infer"), ("POST", "/v1/models/{name}/infer")})
# An upload is stored, then staged and extracted: it needs about this many times its size free.
DISK_FACTOR = 3
# Routes whose handler checks the body against its signed sha256 itself: the package is
# streamed to disk, an upload chunk is hashed in a worker thread (not on the event loop).
STREAMED_ROUTES = frozenset({("PUT", "/v1/packages"), ("PUT", "/v1/uploads/{id}")})
# Routes whose handler reads the body itself (and :func:`read_body` checks its signed
# sha256): an inference request is admitted, or refused as busy, before its image is read.
SELF_READ_ROUTES = STREAMED_ROUTES | INFERENCE_ROUTES

# Typed errors → HTTP status. The first matching class wins.
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NoModelError, 409),
    (ModelNotFoundError, 404),
    (AmbiguousModelError, 400),
    (RollbackError, 409),
    (ImageDecodeError, 400),
    (PackageError, 422),
    (StorageFullError, 507),
    (InstallError, 422),
    (RuntimeUnavailableError, 422),
    (OutpostError, 400),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A request the API refuses, with its status and one-line reason."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.fields = fields or {}  # more keys of the JSON answer, beside "error"


def error_response(status: int, message: str, fields: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({"error": one_line(message), **(fields or {})}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON with a one-line reason; nothing leaks a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        refused = error_response(exc.status, exc.message, exc.fields)
        refused.headers.update(exc.headers)
        return refused
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return error_response(404, f"no endpoint {request.path}; see GET /v1/openapi.json")
        if exc.status == 405:
            return error_response(405, f"{request.method} is not allowed on {request.path}")
        if exc.status == 413:
            return error_response(413, too_large(request, MAX_IMAGE_BYTES).message)
        return error_response(exc.status, exc.reason)
    except OutpostError as exc:
        status = next(code for cls, code in ERROR_STATUS if isinstance(exc, cls))
        return error_response(status, str(exc))
    except BodyError as exc:
        return error_response(400, str(exc))
    except BodyStalledError as exc:  # before ConnectionError: the client is still there
        log.info("%s %s: %s", request.method, request.path, exc)
        stalled = error_response(408, str(exc))
        stalled.force_close()
        return stalled
    except ConnectionError as exc:  # the client went away before its request was read
        log.info("%s %s: the client went away (%s)", request.method, request.path, exc)
        return error_response(400, "the connection was lost before the request was read")
    except OSError as exc:
        if storage_failure(exc) is None:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return _internal_error(exc)
        log.warning("%s %s: %s", request.method, request.path, exc)
        failed = storage_error(request.app[SERVICE_KEY], exc)
        return error_response(failed.status, failed.message)
    except Exception as exc:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _internal_error(exc)


def _internal_error(exc: BaseException | None, status: int = 500) -> web.Response:
    what = f"{type(exc).__name__}: {one_line(exc)}" if exc is not None else "no answer"
    return error_response(status, f"internal error ({what}); see the agent log")


def malformed_reason(exc: BaseException | None, message: str | None) -> str:
    """What aiohttp's parser said of bytes it could not read as an HTTP request, as one line
    without the sender's bytes (which its messages echo, after a colon or in quotes)."""
    if isinstance(exc, LineTooLong):
        return "a request line or header is too long; send a well-formed request"
    said = (message or "").strip().splitlines()
    first = re.split(r"[:'\"(]", said[0], maxsplit=1)[0] if said else ""
    if first.startswith("Received HTTPS traffic"):
        return (
            "this port speaks plain HTTP, not TLS (the agent signs its requests and answers "
            "instead); connect with http://"
        )
    what = one_line(first, 80).strip() or "unreadable request"
    return f"not a valid HTTP/1.1 request ({what}); send a well-formed request"


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's handler of one connection, answering what never reaches the application's
    middlewares (bytes that are not HTTP, a header its parser refuses, TLS on this plain-HTTP
    port) as :func:`error_middleware` answers every failure: JSON with a one-line reason. Such a
    request is logged in one line at INFO, not with aiohttp's traceback at ERROR: anyone on the
    network can send one, and they must not fill the device's log. The connection is closed,
    as aiohttp does (its stream cannot be trusted after bytes it could not parse)."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun
            raise ConnectionError("the answer has begun; the error cannot be sent")
        if status >= 500:  # what escaped the application itself: a defect, with its traceback
            log.error("unexpected error from %s", request.remote, exc_info=exc)
            answer = _internal_error(exc, status)
        else:
            reason = malformed_reason(exc, message)
            log.info("a malformed request from %s: %s", request.remote, reason)
            answer = error_response(status, reason)
        answer.force_close()
        return answer


class JsonErrorServer(web.Server):
    """aiohttp's low-level server whose connections are :class:`JsonErrorHandler`\\ s."""

    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        handler.__class__ = JsonErrorHandler  # the same object, its error page answered as JSON
        return handler


def answer_malformed_as_json(runner: web.AppRunner) -> None:
    """Make ``runner`` (set up, not started) answer malformed requests as JSON. aiohttp has no
    option for the handler class of its connections, so its server is made a
    :class:`JsonErrorServer` (the same object, one method more)."""
    server = runner.server
    if server is None:
        raise RuntimeError("set the runner up first")
    server.__class__ = JsonErrorServer


def storage_error(service: AgentService, exc: OSError, dropped: str = "") -> ApiError:
    """507 for a write the device's storage failed: full, read-only or an I/O error (see
    :func:`device_agent.errors.storage_failure`); ``dropped`` says what was removed."""
    try:
        free: int | None = service.free_space(service.data_dir)
    except OSError:
        free = None
    return ApiError(507, storage_message(exc, service.data_dir, free, dropped))


def _route_key(request: web.Request) -> tuple[str, str]:
    """The request's method and route pattern; HEAD is GET's (it answers the same)."""
    resource = request.match_info.route.resource
    method = "GET" if request.method == "HEAD" else request.method
    return method, resource.canonical if resource is not None else request.path


def _not_paired(service: AgentService) -> str:
    agent_id = service.identity.agent_id
    return (
        f"this client is not paired with agent {agent_id}; run outpost-agent pair on the device, "
        f"then outpost devices pair {agent_id} --code NNNNNN"
    )


def _unauthorized(service: AgentService, route: tuple[str, str], signed: bool) -> str:
    """Why an unpaired request is refused, and what to do: an application's route says how to
    send an API key as well as how to pair."""
    if signed or route not in BEARER_ROUTES:
        return _not_paired(service)
    agent_id = service.identity.agent_id
    return (
        f"this client is not paired with agent {agent_id} and sends no API key; an application "
        "sends Authorization: Bearer KEY (make one on the device: outpost-agent keys create "
        "--name NAME); a desktop pairs: outpost-agent pair on the device, then outpost devices "
        f"pair {agent_id} --code NNNNNN"
    )


def too_large(request: web.Request, limit: int, size: int | None = None) -> ApiError:
    """413 for a body over ``limit`` bytes (``size`` when its length says so)."""
    what = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return ApiError(
        413,
        f"the request body is {what}; {request.method} {request.path} takes at most "
        f"{mib(limit)}: send a smaller image (resize or re-encode it) or file",
    )


async def expect_continue(request: web.Request) -> web.Response | None:
    """Every route's ``Expect`` handler: ``100-continue`` is answered only when the handler
    reads the body (:func:`continue_body`), so a request refused for its headers (not paired,
    too large, the device busy) is answered at once and its body never invited."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(417, "the only Expect this agent meets is 100-continue")
    return None


async def continue_body(request: web.Request) -> None:
    """Send ``100 Continue`` to a client that waits for it before its body (once)."""
    if (
        CONTINUED.get()
        or request.version != HttpVersion11
        or request.headers.get("Expect", "").lower() != "100-continue"
    ):
        return
    CONTINUED.set(True)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's own handler: the answer has not begun


async def read_body(
    request: web.Request, limit: int = MAX_IMAGE_BYTES, *, check: bool = True
) -> bytes:
    """The request's body, read once (later calls get the same bytes): at most ``limit``
    bytes (413 at once when its length says more), within the time
    :func:`~device_agent.bodies.body_deadline` gives it (408 when it stalls); a paired
    desktop's is checked against its signed sha256 unless ``check`` is False (the caller
    hashes it off the event loop)."""
    body = BODY.get()
    if body is not None:
        return body
    if not request.body_exists:
        body = b""
    else:
        declared = request.content_length
        if declared is not None and declared > limit:
            raise too_large(request, limit, declared)
        await continue_body(request)
        try:
            body = await BodyWatch(request, deadline_s=body_deadline(declared, limit)).read(limit)
        except web.HTTPRequestEntityTooLarge:
            raise too_large(request, limit) from None
    signed = SIGNED.get()
    if check and signed is not None and PEER.get() is not None:
        check_body(signed, sha256_hex(body))
    BODY.set(body)
    return body


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Add a route with :func:`expect_continue` (a GET answers HEAD too)."""
    if method == "GET":
        app.router.add_get(path, handler, expect_handler=expect_continue)
    else:
        app.router.add_route(method, path, handler, expect_handler=expect_continue)


def check_signature(
    service: AgentService, request: web.Request, signed: SignedHeaders, public_raw: bytes
) -> None:
    """Verify a request's signature by ``public_raw`` and its freshness; raises 401."""
    message = request_message(
        service.identity.agent_id,
        request.method,
        request.raw_path,
        request.headers.get("Content-Type", ""),
        signed.timestamp,
        signed.nonce,
        signed.body_sha256,
    )
    if not verify(public_raw, signed.signature, message):
        raise ApiError(401, "the request signature does not verify; it was altered or mis-signed")
    try:
        service.replay_guard.check(signed.timestamp, signed.nonce)
    except ClockSkewError as exc:  # the desktop signs again with this agent's time
        raise ApiError(401, str(exc), fields={AGENT_TIME_KEY: exc.agent_time}) from None
    except AuthError as exc:
        raise ApiError(401, str(exc)) from None


def check_body(signed: SignedHeaders, digest: str) -> None:
    if digest != signed.body_sha256:
        raise ApiError(401, "the request body does not match its signed sha256; it was altered")


@web.middleware
async def sign_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sign every response to a request that carries a nonce, so the desktop can trust it."""
    response = await handler(request)
    nonce = request.headers.get(NONCE_HEADER)
    if valid_nonce(nonce) and isinstance(response, web.Response):
        service = request.app[SERVICE_KEY]
        body = response.body if isinstance(response.body, bytes) else b""
        if request.method == "HEAD":  # the body is not sent
            body = b""
        message = response_message(
            service.identity.agent_id,
            str(nonce),
            response.status,
            response.content_type,
            sha256_hex(body),
        )
        response.headers[AGENT_KEY_HEADER] = service.identity.key.public_b64
        response.headers[SIGNATURE_HEADER] = b64(service.identity.key.sign(message))
    return response


@web.middleware
async def protocol_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """426 when the desktop's ``Outpost-Protocol`` range misses this agent's (GET /v1/info
    always answers, so a desktop can read the agent's range and say who must update)."""
    ok, message = check_request_headers(request.headers)
    if not ok and _route_key(request) != ("GET", "/v1/info"):
        raise ApiError(UPGRADE_STATUS, message or "protocol mismatch", protocol_headers())
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 unless the request is signed by a paired desktop (public routes excepted)."""
    service = request.app[SERVICE_KEY]
    route = _route_key(request)
    try:
        signed = parse_signed_headers(request.headers)
    except AuthError as exc:
        raise ApiError(401, str(exc)) from None
    SIGNED.set(signed)
    PEER.set(None)
    BODY.set(None)
    CONTINUED.set(False)
    public_raw = service.pairing.public_key(signed.key_fingerprint) if signed else None
    if public_raw is None or signed is None:
        if signed is None and check_api_key(service, request, route):  # an application's key
            return await handler(request)
        if route in PUBLIC_ROUTES:
            return await handler(request)
        raise ApiError(401, _unauthorized(service, route, signed is not None))
    check_signature(service, request, signed, public_raw)
    PEER.set(signed.key_fingerprint)
    if route not in SELF_READ_ROUTES:
        await read_body(request)  # and checked against the signed sha256
    return await handler(request)


def unit_param(value: object, key: str) -> float | None:
    """A threshold from 0 to 1 (query text or JSON), None when not given."""
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        number = -1.0  # float() also takes "1_0", other scripts' digits and blanks
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise ApiError(400, f"{key} must be a number between 0 and 1, got {value!r}")
    return number


def body_bytes(request: web.Request) -> int:
    """What ``request``'s body will hold in memory: its length, or the route's limit when it
    does not say (a chunked body)."""
    declared = request.content_length
    return MAX_IMAGE_BYTES if declared is None else min(declared, MAX_IMAGE_BYTES)


def whole_param(value: object, key: str, limit: int) -> int | None:
    """A whole number from 1 to ``limit`` (query text or JSON), None when not given."""
    if value is None or value == "":
        return None
    try:
        number = int(str(value)) if isinstance(value, int) or ascii_digits(str(value)) else 0
    except ValueError:
        number = 0
    if isinstance(value, bool) or not 1 <= number <= limit:
        raise ApiError(400, f"{key} must be a whole number from 1 to {limit}, got {value!r}")
    return number


def top_k_param(value: object) -> int | None:
    """A classifier's ``top_k``: how many classes to answer (1 to :data:`MAX_TOP_K`)."""
    return whole_param(value, "top_k", MAX_TOP_K)


def classification_json(
    model: InstalledModel, detections: Detections, top_k: int | None
) -> dict[str, Any]:
    """A classifier's answer: ``{"classification": [{class_id, class_name, confidence}, ...]}``,
    the ``top_k`` most probable classes (default: the package's ``postprocessing.top_k``),
    most probable first; ``{}`` for every other task (they answer ``detections``)."""
    if detections.probs is None:
        return {}
    return {"classification": detections.top_k(top_k or model.manifest.model.postprocessing.top_k)}


async def serve_inference(
    request: web.Request,
    model: InstalledModel,
    read: Callable[[], Awaitable[Input]],
    predict: Callable[[Input], tuple[Detections, Timing]],
) -> tuple[Input, Detections, dict[str, float]]:
    """One inference request: admitted before its body is ``read``, then ``predict`` in an
    inference slot (a failure counts as the model's error); the input read, the detections and
    the answer's ``timing_ms``: the prediction's own timing plus ``wait``, the milliseconds
    after the input was read that are in no stage (waiting for a slot, a worker thread, or the
    model's runtime while another request's runtime call holds it), so that a loaded device's
    queueing shows in each answer."""
    service = request.app[SERVICE_KEY]
    async with service.limiter.admit(body_bytes(request)):
        inputs = await read()
        t0 = time.perf_counter()
        async with service.limiter.run():
            try:
                detections, timing = await service.run_inference(functools.partial(predict, inputs))
            except Exception:
                service.stats.record_error(model.name, model.version)
                raise
    service.stats.record(model.name, timing.total_ms, model.version)
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    wait_ms = round(max(0.0, elapsed_ms - timing.total_ms), 3)
    return inputs, detections, {**timing.as_dict(), "wait": wait_ms}


def frame_channels(request: web.Request, params: Mapping[str, Any]) -> str | None:
    """The channel order of a decoded frame (``Content-Type: application/x-npy``; ``channels``
    ``bgr``, the default, or ``rgb``), None for an encoded image, which says its own."""
    value = params.get("channels")
    given = value is not None and value != ""
    if request.content_type != NPY_CONTENT_TYPE:
        if given:
            raise ApiError(
                400,
                f"channels applies to a decoded frame only (Content-Type: {NPY_CONTENT_TYPE}); "
                "a JPEG or PNG says its own",
            )
        return None
    order = str(value).lower() if given else "bgr"
    if order not in FRAME_CHANNELS:
        raise ApiError(400, f"channels must be bgr or rgb, got {value!r}")
    return order


async def _read_image(request: web.Request) -> bytes:
    """The image (or decoded frame) of a request: its body, or its multipart field ``image``."""
    body = await read_body(request)
    if request.content_type == "multipart/form-data":
        parse = functools.partial(
            multipart_field, request.headers.get("Content-Type", ""), body, "image"
        )
        # A large body is parsed off the event loop (linear, but 0.2 s for 60 MiB).
        field = parse() if len(body) < PARSE_INLINE_BYTES else await _blocking(parse)
        if field is None:
            raise ApiError(
                400,
                "the multipart body has no 'image' field; send the file as field 'image' "
                "(e.g. curl -F image=@photo.jpg URL)",
            )
        if not field:
            raise ApiError(400, "the multipart field 'image' is empty; send the image file in it")
        return field
    if not body:
        what = (
            "the frame's np.save bytes"
            if request.content_type == NPY_CONTENT_TYPE
            else ("JPEG or PNG bytes")
        )
        raise ApiError(400, f"the request body is empty; send {what}")
    return body


async def get_health(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    return web.json_response({"status": "ok", "agent_id": service.identity.agent_id})


async def get_ready(request: web.Request) -> web.Response:
    """200 once the models are loaded and every active one loaded (or none is installed)."""
    service = request.app[SERVICE_KEY]
    if not service.loaded:
        reason = "the agent is still loading its installed models"
    elif service.store.not_loaded:
        reason = "; ".join(
            f"{name}: {why}" for name, why in sorted(service.store.not_loaded.items())
        )
        reason = f"active model(s) not loaded: {reason}"
    else:
        reason = ""
    status = 503 if reason else 200
    body: dict[str, Any] = {"status": "not ready" if reason else "ready"}
    if PEER.get() is not None:  # a paired desktop also learns why
        body["agent_id"] = service.identity.agent_id
        body["models"] = [m.name for m in service.store.models()]
        if reason:
            body["error"] = one_line(reason, 1000)
    return web.json_response(body, status=status)


async def get_metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    text = prometheus_text(service.stats, service.store.models(), service.limiter.counters())
    return web.Response(
        body=text.encode("utf-8"), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
    )


async def delete_pair(request: web.Request) -> web.Response:
    """Forget the desktop that signed this request (``outpost devices forget``)."""
    service = request.app[SERVICE_KEY]
    peer = PEER.get()
    if peer is None:  # pragma: no cover - the auth middleware lets no unpaired client here
        raise ApiError(401, _not_paired(service))
    try:
        dropped = service.pairing.remove([peer]) if peer in service.pairing.desktops else []
    except OutpostError as exc:
        raise ApiError(500, str(exc)) from None
    for desktop in dropped:
        log.info("unpaired desktop %s (%s)", desktop.name, desktop.fingerprint[:16])
    return web.json_response(
        {"agent_id": service.identity.agent_id, "unpaired": peer, "paired": False}
    )


def check_disk_space(service: AgentService, declared: int | None) -> None:
    """507 when the data folder cannot hold an upload of ``declared`` bytes (stored, staged,
    extracted: about :data:`DISK_FACTOR` times its size)."""
    if declared is None:
        return
    needed = declared * DISK_FACTOR
    try:
        free = service.free_space(service.data_dir)
    except OSError as exc:
        log.warning("cannot measure free space in %s: %s", service.data_dir, exc)
        return
    if free < needed:
        raise ApiError(
            507,
            f"not enough disk space on the device: a {mib(declared)} package needs about "
            f"{mib(needed)} free in {service.data_dir}, only {mib(free)} is free; "
            "free some space (or roll back and remove old models) and retry",
        )


def _discovery_info(service: AgentService) -> dict[str, Any]:
    key = service.identity.key
    return {
        "agent_id": service.identity.agent_id,
        "name": service.identity.name,
        **info_fields(),  # version, protocol, protocol_min
        "public_key": key.public_b64,
        "fingerprint": key.fingerprint,
        "exchange_key": service.exchange_public_b64,
        AGENT_TIME_KEY: service.replay_guard.clock(),  # the desktop signs with this clock
    }


async def get_info(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if PEER.get() is None:  # not paired: who this agent is, and nothing more
        return web.json_response({**_discovery_info(service), "paired": False})
    details = await service.device_details()  # accelerators, runtimes: probed once, cached
    return web.json_response(
        {
            **_discovery_info(service),
            "paired": True,
            **service.facts,
            **details,
            "concurrency": service.limiter.counters(),
            "models": [m.describe() for m in service.store.models()],
            # what went wrong at the start, and the packages that crashed the runtime: what
            # outpost-agent crashes lists on the device, for the desktop to show
            "not_loaded": dict(service.store.not_loaded),
            "crashes": await _blocking(service.store.guard.remembered),
        }
    )


async def get_stats(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    raw = request.query.get("minutes", "60")
    if not ascii_digits(raw) or not 1 <= int(raw) <= SERIES_MINUTES:
        raise ApiError(
            400, f"minutes must be a whole number from 1 to {SERIES_MINUTES}, got {raw!r}"
        )
    report = service.stats.report(service.identity.agent_id, service.store.models(), int(raw))
    report["concurrency"] = service.limiter.counters()
    return web.json_response(report)


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec())


async def post_pair(request: web.Request) -> web.Response:
    """Pair a desktop: its key, signed by itself, with a proof that it knows the current code."""
    service = request.app[SERVICE_KEY]
    signed = SIGNED.get()
    if signed is None:
        raise ApiError(400, "a pairing request must be signed by the desktop's key")
    body = await _pairing_body(request)
    try:
        data = json_body(body, "the pairing fields")
        public_raw = unb64(data["desktop_key"], "desktop_key", 32)
        ephemeral_raw = unb64(data["exchange_key"], "exchange_key", 32)
        proof = str(data["proof"])
        name = str(data.get("name") or "desktop")
    except (ValueError, KeyError, TypeError, AuthError) as exc:  # BodyError included
        raise ApiError(
            400, f"bad pairing request ({one_line(exc)}); send desktop_key, exchange_key, proof"
        ) from None
    if fingerprint(public_raw) != signed.key_fingerprint:
        raise ApiError(400, "the pairing request is signed by another key than desktop_key")
    if PEER.get() != signed.key_fingerprint:
        # A desktop paired before was verified by the auth middleware already (its nonce is
        # now spent); a new one is verified here, by the key it sends.
        check_signature(service, request, signed, public_raw)
    check_body(signed, sha256_hex(body))

    def check(code: str) -> bool:
        try:
            expected = agent_expected_proof(
                code, service.identity.key, service.identity.agent_id, public_raw, ephemeral_raw
            )
        except ValueError:  # a degenerate exchange key
            return False
        return hmac_equal(expected, proof)

    try:
        desktop = service.pairing.attempt(check, public_raw, name)
    except PairingError as exc:
        raise ApiError(exc.status, str(exc)) from None
    log.info("paired desktop %s (%s)", desktop.name, desktop.fingerprint[:16])
    return web.json_response(
        {**_discovery_info(service), "paired": True, "desktop_fingerprint": desktop.fingerprint}
    )


async def _pairing_body(request: web.Request) -> bytes:
    """The body of a pairing request, read under :data:`MAX_PAIR_BYTES` unless a paired desktop
    sent it (the auth middleware read and checked it then)."""
    if PEER.get() is not None:
        return await read_body(request)
    try:
        return await read_body(request, MAX_PAIR_BYTES)
    except ApiError as exc:
        if exc.status != 413:
            raise
        raise ApiError(
            413,
            f"a pairing request is at most {MAX_PAIR_BYTES} bytes; send only the pairing fields",
        ) from None


def hmac_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


async def put_package(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if request.content_length is not None and request.content_length > MAX_PACKAGE_BYTES:
        raise ApiError(413, f"the package is larger than {MAX_PACKAGE_BYTES} bytes; refusing it")
    check_disk_space(service, request.content_length)
    activate = _flag(request, "activate", default=True)
    provider = request.query.get("provider") or None
    path = await _receive_to_file(request, service.tmp_dir)
    try:
        async with service.install_lock:
            model = await service.run_install(
                functools.partial(service.store.install, path, activate=activate, provider=provider)
            )
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return web.json_response(model.install_result(), status=201)


async def _receive_to_file(request: web.Request, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".outpost.zip", dir=folder)
    path = Path(name)
    size = 0
    digest = hashlib.sha256()
    try:
        await continue_body(request)
        with os.fdopen(fd, "wb") as fh:
            async for chunk in BodyWatch(request).chunks(request.content.iter_chunked(1 << 20)):
                size += len(chunk)
                digest.update(chunk)
                if size > MAX_PACKAGE_BYTES:
                    raise ApiError(
                        413, f"the package is larger than {MAX_PACKAGE_BYTES} bytes; refusing it"
                    )
                fh.write(chunk)
        signed = SIGNED.get()
        if signed is not None:  # the middleware let it through: check what arrived
            check_body(signed, digest.hexdigest())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    if size == 0:
        path.unlink()
        raise ApiError(400, "the request body is empty; send the .outpost.zip bytes")
    return path


async def post_rollback(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    name = request.match_info["name"]
    async with service.install_lock:
        model = await service.run_install(functools.partial(service.store.rollback, name))
    return web.json_response(model.describe())


# --- installs: chunked uploads, activate / deactivate / uninstall (device_agent/uploads.py) ---

UPLOADS_KEY: web.AppKey[UploadManager] = web.AppKey("outpost_agent_uploads")
UPLOAD_OFFSET_HEADER = "Upload-Offset"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(request: web.Request, key: str, *, default: bool) -> bool:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ApiError(400, f"{key} must be 1 or 0, got {raw!r}")


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); already checked against its hash."""
    body = await read_body(request)
    if not body.strip():
        return {}
    data = json_body(body, "a JSON object")
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def _upload_refused(exc: UploadError) -> web.Response:
    body: dict[str, Any] = {"error": one_line(str(exc))}
    if exc.offset is not None:  # where the upload stands: resume from there
        body["offset"] = exc.offset
    return web.json_response(body, status=exc.status)


async def _blocking(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def post_upload(request: web.Request) -> web.Response:
    """Open a resumable upload: ``{size, sha256, name?, piece_size?, pieces?}`` →
    ``{id, chunk_size, offset: 0[, piece_size, pieces]}`` (with a piece list the rest of the
    package may come as one stream); or, protocol 2, ``{size, name?, piece_size, head_sha256,
    fresh?}`` for a chained stream (``sha256_prefix`` in the answer when it resumes one)."""
    service = request.app[SERVICE_KEY]
    data = await _json_object(request)
    size = data.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_PACKAGE_BYTES:
        check_disk_space(service, size)
    try:
        state = await _blocking(
            functools.partial(
                request.app[UPLOADS_KEY].create,
                size,
                data.get("sha256"),
                data.get("name"),
                data.get("piece_size"),
                data.get("pieces"),
                data.get("head_sha256"),
                data.get("fresh") is True,
            )
        )
    except UploadError as exc:
        return _upload_refused(exc)
    return web.json_response(state, status=201)


async def put_upload_chunk(request: web.Request) -> web.Response:
    """Append one chunk at ``Upload-Offset``; 409 with the agent's offset when it differs.

    A body of type ``application/x-outpost-pieces`` is a stream of the rest of the package,
    checked piece by piece (:func:`_put_upload_stream`); one of type
    ``application/x-outpost-chain`` is a chained stream (:func:`_put_upload_chain`).
    """
    raw = request.headers.get(UPLOAD_OFFSET_HEADER, "")
    if not ascii_digits(raw):
        raise ApiError(
            400, f"send the chunk's position in bytes in the {UPLOAD_OFFSET_HEADER} header"
        )
    try:
        if request.content_type == PIECES_CONTENT_TYPE:
            return await _put_upload_stream(request, int(raw))
        if request.content_type in (CHAIN_CONTENT_TYPE, SEALED_CONTENT_TYPE):
            sealed = request.content_type == SEALED_CONTENT_TYPE
            return await _put_upload_chain(request, int(raw), sealed)
        return await _put_upload_bytes(request, int(raw))
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise  # a read-only disk or an I/O error: the error middleware's 507
        # What the upload holds is given back: kept for a resume, it would leave the device
        # with no room for anything, this upload included.
        upload_id = request.match_info["id"]
        with contextlib.suppress(UploadError, OSError):
            await _blocking(functools.partial(request.app[UPLOADS_KEY].delete, upload_id))
        log.warning("upload %s: %s; the upload was removed", upload_id, exc)
        raise storage_error(
            request.app[SERVICE_KEY], exc, f"; upload {upload_id} was removed"
        ) from None


async def _put_upload_bytes(request: web.Request, offset: int) -> web.Response:
    """One chunk's bytes at ``offset`` (protocol 1)."""
    t0 = time.perf_counter()
    data = await read_body(request, MAX_IMAGE_BYTES, check=False)
    t1 = time.perf_counter()
    signed = SIGNED.get()
    if signed is not None:  # hashed in a worker thread: the event loop keeps serving
        check_body(signed, await _blocking(functools.partial(sha256_hex, data)))
    t2 = time.perf_counter()
    uploads = request.app[UPLOADS_KEY]
    try:
        state = await _blocking(
            functools.partial(uploads.write, request.match_info["id"], offset, data)
        )
    except UploadError as exc:
        return _upload_refused(exc)
    profile_line(
        "agent-chunk",
        bytes=len(data),
        receive_s=t1 - t0,
        hash_s=t2 - t1,
        write_fsync_s=time.perf_counter() - t2,
    )
    return web.json_response(state)


async def _put_upload_stream(request: web.Request, offset: int) -> web.Response:
    """Receive the rest of a streamed upload; every whole piece is checked, then written.

    The socket is read on the event loop while a worker thread hashes and writes the
    previous piece (at most two pieces in memory). However the request ends (done, a broken
    connection, a piece that does not match), what was verified is fsynced and recorded
    before the answer, so the client resumes from the agent's offset.
    """
    uploads = request.app[UPLOADS_KEY]
    upload_id = request.match_info["id"]
    loop = asyncio.get_running_loop()
    try:
        writer: PieceWriter = await _blocking(
            functools.partial(uploads.open_stream, upload_id, offset)
        )
    except UploadError as exc:
        return _upload_refused(exc)
    t_start = time.perf_counter()
    wait_s = 0.0
    pending: asyncio.Future[int] | None = None
    restore_reads = _large_reads(request)
    try:
        signed = SIGNED.get()
        if signed is not None:  # the signature covers exactly the pieces from here on
            check_body(signed, writer.body_sha256)
        declared = request.content_length
        if declared is not None and declared > writer.remaining:
            raise UploadError(
                400,
                f"the stream ends at byte {offset + declared}, past the declared size "
                f"{writer.size}; start a new upload",
                offset,
            )
        at = offset  # bytes received (whole pieces handed to the writer)
        need = writer.next_piece_length(at)
        parts: list[bytes | memoryview] = []
        have = 0
        await continue_body(request)
        async for data in BodyWatch(request).chunks(request.content.iter_any()):
            view = memoryview(data)
            while view:
                if at >= writer.size:
                    raise UploadError(
                        400,
                        f"the stream goes past the declared size {writer.size}; start a new upload",
                        writer.offset,
                    )
                take = view[: need - have]
                parts.append(take)
                have += len(take)
                view = view[len(take) :]
                if have == need:
                    if pending is not None:
                        t0 = time.perf_counter()
                        await pending  # the previous piece: raises when it did not match
                        wait_s += time.perf_counter() - t0
                    pending = loop.run_in_executor(None, writer.add, parts)
                    at += need
                    parts, have = [], 0
                    need = writer.next_piece_length(at) if at < writer.size else 0
        if pending is not None:
            await pending
            pending = None
    except UploadError as exc:
        return _upload_refused(exc)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        log.info("upload %s: the stream broke at byte %d (%s)", upload_id, writer.offset, exc)
    finally:
        restore_reads()
        if pending is not None:  # a broken stream: keep the piece that was being written
            with contextlib.suppress(Exception):  # (an error of its own was raised above)
                await asyncio.shield(pending)
        done = loop.run_in_executor(None, writer.close)
        await asyncio.shield(done)
        request.app[RELEASE_KEY].after_stream(loop)
        if profiling():
            profile_line(
                "agent-stream",
                bytes=writer.offset - writer.start,
                pieces=(writer.offset - writer.start + writer.piece_size - 1) // writer.piece_size,
                total_s=time.perf_counter() - t_start,
                wait_for_worker_s=wait_s,
                **writer.timings,
            )
    return await _describe(uploads, upload_id)


CHAIN_BACKLOG = 4  # whole pieces a chained stream may read ahead of the worker that writes them
STREAM_READ = 1 << 20  # a streamed upload is read from the socket in blocks of up to this size


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: another C library or OS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


RELEASE_DELAY_S = 2.0  # the heap is trimmed once no streamed upload came for this long


class _MemoryRelease:
    """Hands the heap memory streamed uploads freed back to the system once the uploads stop:
    their 1 MiB reads come from glibc's heap, which keeps what is freed (an idle agent held
    25 MiB more after a 50 MiB push: 298-303 against 274-276 MiB trimmed). Not after each
    stream: the next one would fault those pages in again (pushes in a row measured 10-15%
    slower), so each stream puts the trim off by :data:`RELEASE_DELAY_S`."""

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None

    def after_stream(self, loop: asyncio.AbstractEventLoop) -> None:
        trim = _malloc_trim()
        if trim is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(RELEASE_DELAY_S, lambda: loop.run_in_executor(None, trim, 0))


RELEASE_KEY: web.AppKey[_MemoryRelease] = web.AppKey("outpost_agent_memory_release")


def _large_reads(request: web.Request) -> Callable[[], None]:
    """Read the request's socket in blocks of up to :data:`STREAM_READ` (asyncio's selector
    transports read 256 KiB at a time: ``max_size``) while a streamed upload arrives; the
    function that puts the transport back. Four times fewer reads, each through the event
    loop, the HTTP parser and the body buffer: the loop's CPU time for a 50 MiB stream went
    from 30-50 ms to 20-30 ms on a 2-core machine. A transport without ``max_size`` (another
    event loop) is left alone."""
    transport = request.transport
    before = getattr(transport, "max_size", None)
    if transport is None or not isinstance(before, int) or before >= STREAM_READ:
        return lambda: None
    transport.max_size = STREAM_READ  # type: ignore[attr-defined]

    def restore() -> None:
        transport.max_size = before  # type: ignore[attr-defined]

    return restore


UPLOAD_PROOF_FROM_HEADER = "Upload-Proof-From"  # a chained stream: where its proof starts


def _open_fields(request: web.Request, offset: int, proof_from: int) -> tuple[int, int, str, str]:
    """What a chained stream that opens its upload opens it with: size, piece size, the first
    piece's sha256 and the package's name (400 when a header is missing or malformed)."""
    headers = request.headers
    size, piece = headers.get(OPEN_LENGTH_HEADER, ""), headers.get(OPEN_PIECE_HEADER, "")
    head = headers.get(OPEN_HEAD_HEADER, "")
    if not (ascii_digits(size) and ascii_digits(piece) and head) or (offset, proof_from) != (0, 0):
        raise ApiError(
            400,
            f"a stream that opens its upload starts at byte 0 and says {OPEN_LENGTH_HEADER}, "
            f"{OPEN_PIECE_HEADER} and {OPEN_HEAD_HEADER}",
        )
    try:
        name = unquote(headers.get(OPEN_NAME_HEADER, ""), errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, f"{OPEN_NAME_HEADER} is not percent-encoded UTF-8") from None
    return int(size), int(piece), head, name


async def _put_upload_chain(request: web.Request, offset: int, sealed: bool) -> web.Response:
    """Receive a chained stream (protocol 2): the package's bytes from ``offset``, then the
    proof of every piece after ``Upload-Proof-From`` (see ``device_agent.uploads``); a
    ``sealed`` one (protocol 4): the bytes, then the desktop's signed seal.

    The socket is read on the event loop while the writer's threads hash and write the
    pieces before (at most :data:`CHAIN_BACKLOG` pieces in memory). However the request
    ends, the pieces received stay on disk and what the proof verified is recorded before the answer, so the
    client resumes from the agent's offsets.
    """
    service = request.app[SERVICE_KEY]
    uploads = request.app[UPLOADS_KEY]
    upload_id = request.match_info["id"]
    raw = request.headers.get(UPLOAD_PROOF_FROM_HEADER, "")
    if not ascii_digits(raw):
        raise ApiError(
            400, f"a chained stream says where its proof starts in {UPLOAD_PROOF_FROM_HEADER}"
        )
    proof_from = int(raw)
    signed = SIGNED.get()
    public_raw = service.pairing.public_key(signed.key_fingerprint) if signed else None
    if signed is None or public_raw is None:
        raise ApiError(401, "a chained upload stream must be signed by a paired desktop")
    if OPEN_LENGTH_HEADER in request.headers:  # protocol 3: the stream opens its upload
        size, piece_size, head, name = _open_fields(request, offset, proof_from)
        check_body(signed, chain_open_digest(upload_id, size, piece_size, head, name, sealed))
        check_disk_space(service, size)
        try:
            await _blocking(
                functools.partial(uploads.open_new, upload_id, size, name or None, piece_size, head)
            )
        except UploadError as exc:
            return _upload_refused(exc)
    else:
        check_body(signed, chain_body_digest(upload_id, offset, proof_from, sealed))
    agent_id, nonce, key = service.identity.agent_id, signed.nonce, public_raw

    def authentic(start: int, digests: bytes, signature: bytes) -> bool:
        if sealed:  # ``start`` is the package's size, ``digests`` its and its manifest's sha256
            message = seal_message(agent_id, upload_id, nonce, start, digests[:32], digests[32:])
        else:
            message = proof_message(agent_id, upload_id, nonce, start, digests)
        return verify(key, signature, message)

    loop = asyncio.get_running_loop()
    try:
        writer: ChainWriter = await _blocking(
            functools.partial(uploads.open_chain, upload_id, proof_from, offset, authentic, sealed)
        )
    except UploadError as exc:
        return _upload_refused(exc)
    t_start = time.perf_counter()
    wait_s = 0.0
    pending: collections.deque[asyncio.Future[int]] = collections.deque()
    restore_reads = _large_reads(request)
    try:
        expected = writer.remaining + writer.proof_length
        declared = request.content_length
        if declared is not None and declared != expected:
            raise UploadError(
                400,
                f"a chained stream from byte {offset} carries {expected} bytes (the rest of the "
                f"package and its proof), not {declared}; resume from {writer.verified}",
                writer.verified,
            )
        at = offset  # package bytes received (whole pieces handed to the writer)
        need = writer.next_piece_length(at) if at < writer.size else 0
        parts: list[bytes | memoryview] = []
        have = 0
        proof = bytearray()
        await continue_body(request)
        async for data, _ in BodyWatch(request).chunks(request.content.iter_chunks()):
            view = memoryview(data)
            while view:
                if at < writer.size:
                    take = view[: need - have]
                    parts.append(take)
                    have += len(take)
                else:
                    take = view[: writer.proof_length - len(proof)]
                    if not take:
                        raise UploadError(
                            400,
                            f"the stream goes past its proof; resume from {writer.verified}",
                            writer.verified,
                        )
                    proof += take
                view = view[len(take) :]
                if need and have == need:
                    while len(pending) >= CHAIN_BACKLOG or (pending and pending[0].done()):
                        t0 = time.perf_counter()
                        await pending.popleft()
                        wait_s += time.perf_counter() - t0
                    pending.append(asyncio.wrap_future(writer.submit(parts)))
                    at += need
                    parts, have = [], 0
                    need = writer.next_piece_length(at) if at < writer.size else 0
        while pending:
            await pending.popleft()
        await _blocking(functools.partial(writer.prove, bytes(proof)))
    except UploadError as exc:
        return _upload_refused(exc)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        log.info("upload %s: the stream broke at byte %d (%s)", upload_id, writer.offset, exc)
    finally:
        restore_reads()
        for piece in pending:  # a broken stream: keep the pieces that were being written
            with contextlib.suppress(Exception):  # (an error of its own was raised above)
                await asyncio.shield(piece)
        done = loop.run_in_executor(None, writer.close)
        await asyncio.shield(done)
        request.app[RELEASE_KEY].after_stream(loop)
        if profiling():
            profile_line(
                "agent-chain",
                bytes=writer.offset - writer.start,
                total_s=time.perf_counter() - t_start,
                wait_for_worker_s=wait_s,
                **writer.timings,
            )
    return await _describe(uploads, upload_id)


async def get_upload(request: web.Request) -> web.Response:
    return await _describe(request.app[UPLOADS_KEY], request.match_info["id"])


async def _describe(uploads: UploadManager, upload_id: str) -> web.Response:
    """Where an upload stands, as JSON (or why it cannot say)."""
    try:
        state = await _blocking(functools.partial(uploads.describe, upload_id))
    except UploadError as exc:
        return _upload_refused(exc)
    return web.json_response(state)


async def delete_upload(request: web.Request) -> web.Response:
    try:
        done = await _blocking(
            functools.partial(request.app[UPLOADS_KEY].delete, request.match_info["id"])
        )
    except UploadError as exc:
        return _upload_refused(exc)
    return web.json_response(done)


async def post_upload_commit(request: web.Request) -> web.Response:
    """Check the whole upload's sha256, then install it; ``{activate?, provider?}``.

    A repeated commit (the answer to the first was lost) answers the same result again.
    A package the store refuses is removed with its upload.
    """
    service = request.app[SERVICE_KEY]
    uploads = request.app[UPLOADS_KEY]
    upload_id = request.match_info["id"]
    options = await _json_object(request)
    activate = options.get("activate", True)
    provider = options.get("provider")
    if not isinstance(activate, bool) or not (provider is None or isinstance(provider, str)):
        raise ApiError(400, "activate must be true or false and provider a string")
    # not dropped while it waits for another install (the manager's lock: off the event loop)
    await _blocking(functools.partial(uploads.commit_began, upload_id))
    try:
        async with service.install_lock:
            saved = await _blocking(functools.partial(uploads.result, upload_id))
            if saved is not None:
                return web.json_response(saved, status=201)
            path = await _blocking(functools.partial(uploads.complete_path, upload_id))
            result = await _install_upload(service, uploads, upload_id, path, activate, provider)
    except UploadError as exc:
        return _upload_refused(exc)
    finally:
        await _blocking(functools.partial(uploads.commit_ended, upload_id))
    return web.json_response(result, status=201)


async def _install_upload(
    service: AgentService,
    uploads: UploadManager,
    upload_id: str,
    path: Path,
    activate: bool,
    provider: str | None,
) -> dict[str, Any]:
    """Install a whole upload's package and record its result; a package the store refuses
    is removed with its upload."""
    state = await _blocking(functools.partial(uploads.state, upload_id))
    try:
        model = await service.run_install(
            functools.partial(
                service.store.install,
                path,
                activate=activate,
                provider=provider or None,
                package_sha=state.sha256,
                manifest_sha=state.manifest_sha256,
            )
        )
    except OutpostError as exc:
        await _drop_upload(uploads, upload_id)
        if isinstance(exc, PackageError) and state.manifest_sha256:
            # a sealed upload: the desktop checks its own copy and, when that is
            # sound, sends it again as a chained stream (altered on the way)
            raise ApiError(422, str(exc), fields={"sealed": True}) from None
        raise
    except Exception as exc:
        # Full storage is worth a retry of the commit (the upload is kept for it); anything
        # else would fail the same way again, and must not hold one of the upload slots.
        if not (isinstance(exc, OSError) and storage_failure(exc) is not None):
            await _drop_upload(uploads, upload_id)
        raise
    result = model.install_result()
    try:
        await _blocking(functools.partial(uploads.finish, upload_id, result))
    except OSError as exc:
        # The new version is in place and serving: the answer says so. Only a repeated
        # commit's answer is lost (it would find no upload); its bytes are dropped.
        log.warning("%s: installed, but its result could not be kept (%s)", upload_id, exc)
        await _drop_upload(uploads, upload_id)
    return result


async def _drop_upload(uploads: UploadManager, upload_id: str) -> None:
    """Remove an upload and its bytes (best effort: one already gone is no error)."""
    with contextlib.suppress(UploadError, OSError):
        await _blocking(functools.partial(uploads.delete, upload_id))


async def get_models(request: web.Request) -> web.Response:
    """Every model on the device, served or not, with its active/previous/staged versions."""
    service = request.app[SERVICE_KEY]
    return web.json_response({"models": await _blocking(service.store.installed)})


async def post_activate(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    version = (await _json_object(request)).get("version")
    if version is not None and not isinstance(version, str):
        raise ApiError(400, "version must be a string")
    async with service.install_lock:
        model = await service.run_install(
            functools.partial(service.store.activate, request.match_info["name"], version)
        )
    return web.json_response(model.install_result())


async def post_deactivate(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    async with service.install_lock:
        done = await service.run_install(
            functools.partial(service.store.deactivate, request.match_info["name"])
        )
    return web.json_response(done)


async def delete_model(request: web.Request) -> web.Response:
    """Uninstall every version; refused (409) for the only serving model unless ``?force=1``."""
    service = request.app[SERVICE_KEY]
    force = _flag(request, "force", default=False)
    async with service.install_lock:
        try:
            done = await service.run_install(
                functools.partial(service.store.uninstall, request.match_info["name"], force=force)
            )
        except UninstallError as exc:
            raise ApiError(409, str(exc)) from None
    return web.json_response(done)


def add_install_routes(app: web.Application, service: AgentService) -> None:
    uploads = UploadManager(service.data_dir / "uploads", max_size=MAX_PACKAGE_BYTES)
    uploads.purge_expired()
    app[UPLOADS_KEY] = uploads
    add_route(app, "POST", "/v1/uploads", post_upload)
    add_route(app, "GET", "/v1/uploads/{id}", get_upload)
    add_route(app, "PUT", "/v1/uploads/{id}", put_upload_chunk)
    add_route(app, "DELETE", "/v1/uploads/{id}", delete_upload)
    add_route(app, "POST", "/v1/uploads/{id}/commit", post_upload_commit)
    add_route(app, "GET", "/v1/models", get_models)
    add_route(app, "POST", "/v1/models/{name}/activate", post_activate)
    add_route(app, "POST", "/v1/models/{name}/deactivate", post_deactivate)
    add_route(app, "DELETE", "/v1/models/{name}", delete_model)


# --- end installs ---


def build_app(service: AgentService) -> web.Application:
    app = web.Application(
        client_max_size=MAX_IMAGE_BYTES,
        middlewares=[sign_middleware, error_middleware, protocol_middleware, auth_middleware],
    )
    app[SERVICE_KEY] = service
    app[RELEASE_KEY] = _MemoryRelease()
    add_route(app, "GET", "/v1/health", get_health)
    add_route(app, "GET", "/v1/ready", get_ready)
    add_route(app, "GET", "/v1/metrics", get_metrics)
    add_route(app, "GET", "/v1/info", get_info)
    add_route(app, "POST", "/v1/pair", post_pair)
    add_route(app, "DELETE", "/v1/pair", delete_pair)
    add_route(app, "GET", "/v1/stats", get_stats)
    add_route(app, "GET", "/v1/openapi.json", get_openapi)
    add_route(app, "PUT", "/v1/packages", put_package)
    add_route(app, "POST", "/v1/models/{name}/rollback", post_rollback)
    add_install_routes(app, service)  # chunked uploads, activate/deactivate/uninstall
    # --- inference API, API keys, bench (device_agent/inference.py) ---
    from device_agent.inference import add_routes as add_inference_routes

    add_inference_routes(app)
    # --- end inference API ---
    return app


def check_api_key(service: AgentService, request: web.Request, route: tuple[str, str]) -> bool:
    """An unsigned request with ``Authorization: Bearer``: see :mod:`device_agent.inference`."""
    from device_agent.inference import check_api_key as check

    return check(service, request, route)
