"""A compact OpenAPI 3 description of API v1, served at ``GET /v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from device_agent import PROTOCOL_VERSION, __version__

_ERROR = {
    "description": "refused",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_JSON = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}


def _op(
    summary: str, ok: str = "200", errors: tuple[str, ...] = (), **extra: Any
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: _JSON, **{code: _ERROR for code in errors}}
    return {"summary": summary, "responses": responses, **extra}


def openapi_spec() -> dict[str, Any]:
    unit = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Outpost agent",
            "version": __version__,
            "x-protocol": PROTOCOL_VERSION,
            "x-auth": (
                "Every route except GET /v1/info, POST /v1/pair and GET /v1/ready (status only "
                "for an unpaired client) answers 401 unless the request is signed by a paired desktop key (X-Outpost-Key, -Timestamp, -Nonce, "
                "-Content-SHA256, -Signature: Ed25519 over agent id, method, path with query, "
                "content type, timestamp, nonce, body sha256). Responses to a request with "
                "X-Outpost-Nonce carry X-Outpost-Agent-Key and X-Outpost-Signature."
            ),
        },
        "paths": {
            "/v1/health": {"get": _op("liveness")},
            "/v1/ready": {
                "get": _op(
                    "readiness: 200 once every active model is loaded (or none is installed), "
                    "else 503; open to unpaired clients (local supervisors), who get only "
                    "'status'; a paired desktop also gets the reason in 'error'",
                    errors=("503",),
                )
            },
            "/v1/metrics": {
                "get": {
                    "summary": (
                        "Prometheus text exposition (0.0.4): outpost_requests_total, "
                        "outpost_errors_total, outpost_inference_latency_ms (summary, quantiles "
                        "0.5/0.9/0.99) per model, and outpost_models_installed"
                    ),
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/v1/info": {
                "get": _op(
                    "agent id, version, protocol and public keys; for a paired desktop also "
                    "platform, runtimes and installed models"
                )
            },
            "/v1/pair": {
                "post": _op(
                    "pair a desktop key with a one-time code (signed by that key; see x-auth)",
                    errors=("400", "403", "429"),
                    requestBody={
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["desktop_key", "exchange_key", "proof"],
                                    "properties": {
                                        "desktop_key": {"type": "string", "format": "byte"},
                                        "exchange_key": {"type": "string", "format": "byte"},
                                        "proof": {"type": "string"},
                                        "name": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                ),
                "delete": _op("forget the paired desktop that signs this request"),
            },
            "/v1/stats": {"get": _op("requests, errors and server-side latency per model")},
            "/v1/packages": {
                "put": _op(
                    "install a .outpost.zip (raw body); the previous version serves until it is "
                    "ready; 507 when the device lacks about 3x the package size in free disk",
                    ok="201",
                    errors=("400", "413", "422", "507"),
                    requestBody={
                        "required": True,
                        "content": {"application/zip": {}, "application/octet-stream": {}},
                    },
                )
            },
            "/v1/infer": {
                "post": _op(
                    "detect objects in one image (raw JPEG/PNG body, or multipart field 'image')",
                    errors=("400", "404", "409", "413"),
                    parameters=[
                        {"name": "model", "in": "query", "schema": {"type": "string"}},
                        {"name": "conf", "in": "query", "schema": unit},
                        {"name": "iou", "in": "query", "schema": unit},
                    ],
                    requestBody={
                        "required": True,
                        "content": {
                            "image/jpeg": {},
                            "image/png": {},
                            "application/octet-stream": {},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"image": {"type": "string", "format": "binary"}},
                                }
                            },
                        },
                    },
                )
            },
            "/v1/models/{name}/rollback": {
                "post": _op(
                    "make the previous version active again",
                    errors=("404", "409", "422"),
                    parameters=[
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                )
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }
