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
        "info": {"title": "Outpost agent", "version": __version__, "x-protocol": PROTOCOL_VERSION},
        "paths": {
            "/v1/health": {"get": _op("liveness")},
            "/v1/info": {"get": _op("agent id, platform, runtimes and installed models")},
            "/v1/stats": {"get": _op("requests, errors and server-side latency per model")},
            "/v1/packages": {
                "put": _op(
                    "install a .outpost.zip (raw body); the previous version serves until it is ready",
                    ok="201",
                    errors=("400", "413", "422"),
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
