"""HTTP API v1 of the agent: JSON everywhere, errors as ``{"error": "<one line>"}``.

Blocking work (installing a package, running a model) goes to the service's executors so
the event loop keeps answering; one install runs at a time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from device_agent import PROTOCOL_VERSION, __version__
from device_agent.errors import (
    AmbiguousModelError,
    InstallError,
    ModelNotFoundError,
    NoModelError,
    RollbackError,
    one_line,
)
from device_agent.openapi import openapi_spec
from device_agent.platform_info import runtimes_json
from runtimes.errors import ImageDecodeError, OutpostError, PackageError, RuntimeUnavailableError

if TYPE_CHECKING:
    from device_agent.service import AgentService

log = logging.getLogger(__name__)

MAX_PACKAGE_BYTES = 2 << 30  # 2 GiB, streamed to disk
MAX_IMAGE_BYTES = 64 << 20  # 64 MiB, read into memory (also the multipart limit)
SERVICE_KEY: web.AppKey[AgentService] = web.AppKey("outpost_agent_service")

# Typed errors → HTTP status. The first matching class wins.
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NoModelError, 409),
    (ModelNotFoundError, 404),
    (AmbiguousModelError, 400),
    (RollbackError, 409),
    (ImageDecodeError, 400),
    (PackageError, 422),
    (InstallError, 422),
    (RuntimeUnavailableError, 422),
    (OutpostError, 400),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A request the API refuses, with its status and one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": one_line(message)}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON with a one-line reason; nothing leaks a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return error_response(404, f"no endpoint {request.path}; see GET /v1/openapi.json")
        if exc.status == 405:
            return error_response(405, f"{request.method} is not allowed on {request.path}")
        if exc.status == 413:
            return error_response(
                413, f"the request body is too large (limit {MAX_IMAGE_BYTES} bytes)"
            )
        return error_response(exc.status, exc.reason)
    except OutpostError as exc:
        status = next(code for cls, code in ERROR_STATUS if isinstance(exc, cls))
        return error_response(status, str(exc))
    except Exception as exc:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(
            500, f"internal error ({type(exc).__name__}: {one_line(exc)}); see the agent log"
        )


def _unit_float(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ApiError(400, f"{key} must be a number between 0 and 1, got {raw!r}")
    return value


async def _read_image(request: web.Request) -> bytes:
    if request.content_type == "multipart/form-data":
        form = await request.post()
        field = form.get("image")
        if isinstance(field, web.FileField):
            data = field.file.read()
        elif isinstance(field, (str, bytes)):
            data = field.encode() if isinstance(field, str) else field
        else:
            raise ApiError(
                400, "the multipart body has no 'image' field; send the file as field 'image'"
            )
    else:
        data = await request.read()
    if not data:
        raise ApiError(400, "the request body is empty; send JPEG or PNG bytes")
    return data


async def get_health(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    return web.json_response({"status": "ok", "agent_id": service.identity.agent_id})


async def get_info(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    return web.json_response(
        {
            "agent_id": service.identity.agent_id,
            "name": service.identity.name,
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            **service.facts,
            "runtimes": runtimes_json(service.runtimes),
            "models": [m.describe() for m in service.store.models()],
        }
    )


async def get_stats(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    return web.json_response(
        service.stats.report(service.identity.agent_id, service.store.models())
    )


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec())


async def put_package(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if request.content_length is not None and request.content_length > MAX_PACKAGE_BYTES:
        raise ApiError(413, f"the package is larger than {MAX_PACKAGE_BYTES} bytes; refusing it")
    path = await _receive_to_file(request, service.tmp_dir)
    try:
        async with service.install_lock:
            model = await service.run_install(functools.partial(service.store.install, path))
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return web.json_response(model.describe(), status=201)


async def _receive_to_file(request: web.Request, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".outpost.zip", dir=folder)
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.content.iter_chunked(1 << 20):
                size += len(chunk)
                if size > MAX_PACKAGE_BYTES:
                    raise ApiError(
                        413, f"the package is larger than {MAX_PACKAGE_BYTES} bytes; refusing it"
                    )
                fh.write(chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    if size == 0:
        path.unlink()
        raise ApiError(400, "the request body is empty; send the .outpost.zip bytes")
    return path


async def post_infer(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    conf = _unit_float(request, "conf")
    iou = _unit_float(request, "iou")
    model = service.store.resolve(request.query.get("model") or None)
    data = await _read_image(request)
    try:
        detections, timing = await service.run_inference(
            functools.partial(model.predict_bytes, data, conf=conf, iou=iou)
        )
    except Exception:
        service.stats.record_error(model.name)
        raise
    service.stats.record(model.name, timing.total_ms)
    result: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "format": model.format,
        "runtime": model.runtime,
        "detections": detections.to_list(),
        "timing_ms": timing.as_dict(),
    }
    return web.json_response(result)


async def post_rollback(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    name = request.match_info["name"]
    async with service.install_lock:
        model = await service.run_install(functools.partial(service.store.rollback, name))
    return web.json_response(model.describe())


def build_app(service: AgentService) -> web.Application:
    app = web.Application(client_max_size=MAX_IMAGE_BYTES, middlewares=[error_middleware])
    app[SERVICE_KEY] = service
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/v1/info", get_info)
    app.router.add_get("/v1/stats", get_stats)
    app.router.add_get("/v1/openapi.json", get_openapi)
    app.router.add_put("/v1/packages", put_package)
    app.router.add_post("/v1/infer", post_infer)
    app.router.add_post("/v1/models/{name}/rollback", post_rollback)
    return app
