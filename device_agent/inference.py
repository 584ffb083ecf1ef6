"""The inference API: ``POST /v1/models/{name}/infer`` and ``/bench``, the concurrency limiter,
API-key (bearer) admission for the inference routes, and the lazily probed device details.

At most ``max_in_flight`` inferences run at once; up to ``max_queued`` more wait for a slot;
beyond that the agent answers 503 with ``Retry-After`` at once rather than letting requests
(and their images, held in memory) pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from device_agent.apikeys import bearer_token
from device_agent.bodies import base64_image, json_body
from device_agent.http_api import (
    BEARER_ROUTES,
    PARSE_INLINE_BYTES,
    PUBLIC_ROUTES,
    SERVICE_KEY,
    ApiError,
    _blocking,
    _read_image,
    add_route,
    classification_json,
    frame_channels,
    read_body,
    serve_inference,
    top_k_param,
    unit_param,
    whole_param,
)
from runtimes.errors import ImageDecodeError
from runtimes.latency import percentiles
from runtimes.preprocess import decode_image

if TYPE_CHECKING:
    from device_agent.service import AgentService
    from device_agent.store import InstalledModel
    from runtimes.detections import Detections

RETRY_AFTER_S = 1
# The image bodies the admitted inference requests may hold in memory together.
MAX_BODY_BYTES = 256 << 20
MAX_BENCH_RUNS = 1000
DEFAULT_BENCH_RUNS = 50
BENCH_WARMUP = 3
MAX_DET_LIMIT = 10_000
# The options an inference request takes in its query (or its JSON body).
QUERY_OPTIONS = ("conf", "iou", "max_det", "top_k", "channels", "model")
JSON_EXAMPLE = '{"image_base64": "..."} (with optional conf, iou, max_det, top_k, model)'
# Protocol 1 answered /v1/models/{name}/infer with "class" and "score" where every other
# result (/v1/infer, the Predictor) says "class_name" and "confidence". Both names are sent
# while protocol 1 is spoken; the old ones are deprecated and go with protocol 2.
DEPRECATED_ALIASES = {"class_name": "class", "confidence": "score"}


class InferenceLimiter:
    """Bounds the requests admitted (their bodies read, waiting for a slot, running) and the
    inferences in flight. Event loop only.

    A request is admitted before its body is read, so the bound holds the memory too: at
    most ``max_in_flight + max_queued`` bodies, and together no more than ``max_body_bytes``
    (a lone request is admitted whatever its size, up to the route's own limit). One more is
    refused with 503 and ``Retry-After``, before its body is read.

    Args:
        max_in_flight: inferences allowed to run at once (at least 1).
        max_queued: requests allowed to wait beside them (reading their bodies, or for a slot).
        max_body_bytes: the request bodies the admitted requests may hold in memory together.
    """

    def __init__(
        self, max_in_flight: int, max_queued: int, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        if max_in_flight < 1 or max_queued < 0:
            raise ValueError("max_in_flight must be >= 1 and max_queued >= 0")
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.max_body_bytes = max_body_bytes
        self.admitted = 0
        self.in_flight = 0
        self.rejected = 0
        self.body_bytes = 0
        self._free = asyncio.Semaphore(max_in_flight)

    @property
    def queued(self) -> int:
        """Admitted requests not running yet (reading their bodies, or waiting for a slot)."""
        return self.admitted - self.in_flight

    def counters(self) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "queued": self.queued,
            "rejected": self.rejected,
            "max_in_flight": self.max_in_flight,
            "max_queued": self.max_queued,
        }

    @contextlib.asynccontextmanager
    async def admit(self, body_bytes: int = 0) -> AsyncIterator[None]:
        """Admit one request whose body holds ``body_bytes``; raises a 503 :class:`ApiError`
        when the requests admitted, or their bodies, are at the bound."""
        full = self.admitted >= self.max_in_flight + self.max_queued
        if full or (self.admitted and self.body_bytes + body_bytes > self.max_body_bytes):
            self.rejected += 1
            raise ApiError(
                503,
                f"the device is busy ({self.in_flight} inferences running, {self.queued} "
                f"waiting); retry after {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.admitted += 1
        self.body_bytes += body_bytes
        try:
            yield
        finally:
            self.admitted -= 1
            self.body_bytes -= body_bytes

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Hold one inference slot (inside :meth:`admit`), waiting for one."""
        await self._free.acquire()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._free.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """:meth:`admit` a request without a body, then :meth:`run` it."""
        async with self.admit(), self.run():
            yield


def check_api_key(service: AgentService, request: web.Request, route: tuple[str, str]) -> bool:
    """Admit an unsigned request that carries ``Authorization: Bearer <key>``.

    Returns False when the request carries no bearer token, or calls a public route (the
    caller goes on as for any unsigned request); True when a valid key opens one of :data:`BEARER_ROUTES`; raises 401
    for an unknown or revoked key, or a key used on any other route.
    """
    token = bearer_token(request.headers.get("Authorization"))
    if token is None or (route in PUBLIC_ROUTES and route not in BEARER_ROUTES):
        return False  # discovery info and readiness answer as to any stranger
    if route not in BEARER_ROUTES:
        raise ApiError(
            401,
            "API keys open the inference routes only (POST /v1/infer, "
            "POST /v1/models/{name}/infer, GET /v1/health); this route needs a paired desktop",
        )
    if service.api_keys.check(token) is None:
        raise ApiError(
            401,
            "unknown or revoked API key; make one on the device with: "
            "outpost-agent keys create --name NAME",
        )
    return True


@dataclass(frozen=True)
class InferInput:
    """One inference request's input: the image bytes (encoded, or a decoded ``.npy`` frame
    when ``channels`` names its channel order), the thresholds and the ``top_k``."""

    data: bytes
    options: dict[str, Any]
    top_k: int | None
    channels: str | None = None


def check_single_options(request: web.Request) -> None:
    """400 when the query gives one of :data:`QUERY_OPTIONS` more than once."""
    for key in QUERY_OPTIONS:
        given = request.query.getall(key, [])
        if len(given) > 1:
            raise ApiError(400, f"{key} is given {len(given)} times in the query; give it once")


async def _infer_input(request: web.Request, model_name: str) -> InferInput:
    """The input of one request for ``model_name``: a JSON body (``image_base64``), or the
    image (or decoded frame) as the body with its options in the query. An option given twice
    is refused (which one was meant cannot be known: each route checks that first, with
    :func:`check_single_options`); so is a JSON ``model`` other than the one the route
    serves (the model is chosen before the body is read: by the path, or ``?model=``)."""
    if request.content_type == "application/json":
        raw = await read_body(request)
        # a large body (a 4K photo is 10-20 MB of base64) is decoded off the event loop
        body, data = (
            _json_input(raw)
            if len(raw) < PARSE_INLINE_BYTES
            else await _blocking(functools.partial(_json_input, raw))
        )
        named = body.get("model")
        if named is not None and named != model_name:
            raise ApiError(
                400,
                f"the JSON names model {named!r} but this request is for {model_name!r}; "
                f"send it to POST /v1/models/{named}/infer (or ?model={named} on /v1/infer)"
                if isinstance(named, str)
                else "the JSON's 'model' must be a model's name; or leave it out",
            )
        params: dict[str, Any] = body
        channels = frame_channels(request, params)
    else:
        params = dict(request.query)
        channels = frame_channels(request, params)  # refused before the body is read
        data = await _read_image(request)
    return InferInput(
        data,
        {
            "conf": unit_param(params.get("conf"), "conf"),
            "iou": unit_param(params.get("iou"), "iou"),
            "max_det": whole_param(params.get("max_det"), "max_det", MAX_DET_LIMIT),
        },
        top_k_param(params.get("top_k")),
        channels,
    )


def _json_input(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """A JSON inference body → its fields and the image bytes it carries (base64)."""
    body = json_body(raw, JSON_EXAMPLE)
    if not isinstance(body, dict) or not isinstance(body.get("image_base64"), str):
        raise ApiError(400, f"a JSON request needs {JSON_EXAMPLE}")
    return body, base64_image(body["image_base64"])


def detections_json(detections: Detections) -> list[dict[str, Any]]:
    """Detections as ``{class_id, class_name, confidence, xyxy}`` plus whatever else the runtime
    gives (the same keys as ``/v1/infer``), and the deprecated aliases ``class`` and ``score``
    (see :data:`DEPRECATED_ALIASES`)."""
    out = []
    for item in detections.to_list():
        aliases = {old: item[new] for new, old in DEPRECATED_ALIASES.items() if new in item}
        out.append({**item, **aliases})
    return out


async def answer_inference(
    request: web.Request, model: InstalledModel, *, aliases: bool = False
) -> web.Response:
    """Run one request's image through ``model`` (its active version) and answer with the
    detections (with the protocol-1 ``aliases`` on the named-model route), a classifier's
    classes and the timing."""
    try:
        given, detections, timing = await serve_inference(
            request,
            model,
            functools.partial(_infer_input, request, model.name),
            lambda given: model.predict_bytes(given.data, channels=given.channels, **given.options),
        )
    except ImageDecodeError as exc:
        raise ApiError(400, f"not a readable image ({exc})") from None
    return web.json_response(
        {
            "model": model.name,
            "version": model.version,
            "format": model.format,
            "runtime": model.runtime,
            "task": model.manifest.model.task,
            "detections": detections_json(detections) if aliases else detections.to_list(),
            **classification_json(model, detections, given.top_k),
            "timing_ms": timing,
        }
    )


async def post_model_infer(request: web.Request) -> web.Response:
    """Run one image through the named model (its active version)."""
    service = request.app[SERVICE_KEY]
    check_single_options(request)
    model = service.store.get(request.match_info["name"])
    return await answer_inference(request, model, aliases=True)


async def post_infer(request: web.Request) -> web.Response:
    """Run one image through ``?model=`` (or the only model served)."""
    service = request.app[SERVICE_KEY]
    check_single_options(request)
    model = service.store.resolve(request.query.get("model") or None)
    return await answer_inference(request, model)


def bench_input(model: InstalledModel) -> tuple[np.ndarray, str]:
    """The package's self-test sample when it has one, else a synthetic image of the model's
    input size (a mid-grey frame with a few shapes, the same every time)."""
    self_test = getattr(model.manifest, "self_test", None)
    if self_test is not None:
        with contextlib.suppress(OSError, ImageDecodeError):
            return decode_image((model.folder / self_test.input).read_bytes()), "self-test sample"
    height, width = model.predictor.input_hw
    rng = np.random.default_rng(0)
    img = np.full((height, width, 3), 114, np.uint8)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        img[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 255, 3, dtype=np.uint8)
    return img, f"synthetic {width}x{height}"


def run_bench(model: InstalledModel, runs: int, warmup: int = BENCH_WARMUP) -> dict[str, Any]:
    """Time ``runs`` predictions (preprocess + inference + postprocess; decoding is not part of
    it) after ``warmup`` untimed ones. Holds the model for the whole run."""
    img, source = bench_input(model)
    totals: list[float] = []
    stages: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
    with model.lock:  # held throughout; only the runtime calls are marked for the crash guard
        for _ in range(warmup):
            model.predictor.predict(img, hold=model.marked())
        for _ in range(runs):
            t0 = time.perf_counter()
            _, timing = model.predictor.predict(img, hold=model.marked())
            totals.append((time.perf_counter() - t0) * 1e3)
            stages["preprocess"].append(timing.preprocess_ms)
            stages["inference"].append(timing.inference_ms)
            stages["postprocess"].append(timing.postprocess_ms)
    return {
        "model": model.name,
        "version": model.version,
        "format": model.format,
        "runtime": model.runtime,
        "providers": model.providers,
        "input": source,
        "runs": runs,
        "warmup": warmup,
        "latency_ms": {**percentiles(totals), "min": round(min(totals), 3)},
        "stages_ms": {k: round(float(np.mean(v)), 3) for k, v in stages.items()},
    }


async def post_model_bench(request: web.Request) -> web.Response:
    """Benchmark the named model on the device: ``{"runs": N}`` → latency percentiles."""
    service = request.app[SERVICE_KEY]
    model = service.store.get(request.match_info["name"])
    raw = await read_body(request)
    body = json_body(raw, 'JSON like {"runs": 50}') if raw.strip() else {}
    runs = body.get("runs", DEFAULT_BENCH_RUNS) if isinstance(body, dict) else None
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= MAX_BENCH_RUNS:
        raise ApiError(400, f"runs must be a whole number from 1 to {MAX_BENCH_RUNS}, got {runs!r}")
    async with service.limiter.slot():
        result = await service.run_inference(functools.partial(run_bench, model, runs))
    return web.json_response(result)


def add_routes(app: web.Application) -> None:
    """Register the inference API's routes."""
    add_route(app, "POST", "/v1/infer", post_infer)
    add_route(app, "POST", "/v1/models/{name}/infer", post_model_infer)
    add_route(app, "POST", "/v1/models/{name}/bench", post_model_bench)
