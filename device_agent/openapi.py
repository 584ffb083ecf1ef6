"""A compact OpenAPI 3 description of API v1, served at ``GET /v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from device_agent import PROTOCOL_VERSION, __version__
from device_agent.protocol_version import (
    PROTOCOL_HEADER,
    PROTOCOL_MIN,
    PROTOCOL_MIN_HEADER,
    UPGRADE_STATUS,
)
from runtimes.detections import MAX_TOP_K
from runtimes.preprocess import FRAME_CHANNELS, NPY_CONTENT_TYPE

_ERROR = {
    "description": "refused",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_JSON = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
_UPGRADE = {
    "description": (
        f"protocol mismatch: the request's {PROTOCOL_HEADER} / {PROTOCOL_MIN_HEADER} range does "
        "not meet the agent's; the one-line error names the side to update, and the answer "
        f"carries the agent's own {PROTOCOL_HEADER} and {PROTOCOL_MIN_HEADER} headers"
    ),
    "headers": {
        PROTOCOL_HEADER: {"schema": {"type": "integer"}},
        PROTOCOL_MIN_HEADER: {"schema": {"type": "integer"}},
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_PROTOCOL_PARAMS = [
    {"$ref": "#/components/parameters/OutpostProtocol"},
    {"$ref": "#/components/parameters/OutpostProtocolMin"},
]


def _op(
    summary: str, ok: str = "200", errors: tuple[str, ...] = (), **extra: Any
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: _JSON, **{code: _ERROR for code in errors}}
    return {"summary": summary, "responses": responses, **extra}


def openapi_spec() -> dict[str, Any]:
    """The description; every operation takes the protocol headers and may answer 426, except
    ``GET /v1/info``, which always answers (it reports ``protocol`` and ``protocol_min``)."""
    spec = _spec()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            operation["parameters"] = [*operation.get("parameters", []), *_PROTOCOL_PARAMS]
            if (method, path) != ("get", "/v1/info"):
                operation["responses"][str(UPGRADE_STATUS)] = _UPGRADE
            if "requestBody" in operation:  # too large from its length, or it stopped short
                operation["responses"].setdefault("408", _ERROR)
                operation["responses"].setdefault("413", _ERROR)
    return spec


def _spec() -> dict[str, Any]:
    unit = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Outpost agent",
            "version": __version__,
            "x-protocol": PROTOCOL_VERSION,
            "x-protocol-min": PROTOCOL_MIN,
            "x-protocol-negotiation": (
                f"The desktop sends {PROTOCOL_HEADER}: <the protocol it speaks> and "
                f"{PROTOCOL_MIN_HEADER}: <the oldest it accepts> on every request; when that "
                "range does not meet the agent's (protocol_min..protocol in GET /v1/info, "
                f"proto/proto_min in the mDNS TXT record) the agent answers {UPGRADE_STATUS} "
                "with a one-line error naming the side to update. GET /v1/info always answers. "
                "Requests without the headers are taken as the agent's own protocol."
            ),
            "x-auth": (
                "Every route except GET /v1/info, POST /v1/pair and GET /v1/ready (status only "
                "for an unpaired client) answers 401 unless the request is signed by a paired desktop key (X-Outpost-Key, -Timestamp, -Nonce, "
                "-Content-SHA256, -Signature: Ed25519 over agent id, method, path with query, "
                "content type, timestamp, nonce, body sha256). Responses to a request with "
                "X-Outpost-Nonce carry X-Outpost-Agent-Key and X-Outpost-Signature. A "
                "timestamp more than 300 s off the agent's clock gets 401 with agent_time (the "
                "agent's clock; sign again with it, same nonce). An "
                "application's API key (Authorization: Bearer, outpost-agent keys create) opens "
                "POST /v1/infer, POST /v1/models/{name}/infer and GET /v1/health only."
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
                    "agent id, version, protocol (what the agent speaks) and protocol_min (the "
                    "oldest desktop protocol it accepts), public keys, agent_time (its clock: "
                    "the desktop signs with it); for a paired desktop also platform, runtimes and "
                    "installed models; never answers 426"
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
                    "install a .outpost.zip (raw body, one request: small packages; big ones "
                    "use /v1/uploads); the previous version serves until it is ready; 507 when "
                    "the device lacks about 3x the package size in free disk; answers the "
                    "install result (see /v1/uploads/{id}/commit)",
                    ok="201",
                    errors=("400", "413", "422", "507"),
                    parameters=[
                        {"name": "activate", "in": "query", "schema": {"enum": ["1", "0"]}},
                        {"name": "provider", "in": "query", "schema": {"type": "string"}},
                    ],
                    requestBody={
                        "required": True,
                        "content": {"application/zip": {}, "application/octet-stream": {}},
                    },
                )
            },
            **_inference_paths(unit),
            "/v1/models/{name}/rollback": {
                "post": _op(
                    "make the previous version active again; 507 when the storage refuses "
                    "the switch",
                    errors=("404", "409", "422", "507"),
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
            **_install_paths(),
        },
        "components": {
            "parameters": {
                "OutpostProtocol": {
                    "name": PROTOCOL_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "the protocol version the desktop speaks",
                    "schema": {"type": "integer", "minimum": 1},
                },
                "OutpostProtocolMin": {
                    "name": PROTOCOL_MIN_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "the oldest agent protocol the desktop accepts",
                    "schema": {"type": "integer", "minimum": 1},
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            },
        },
    }


def _top_k_parameter() -> dict[str, Any]:
    """A classifier's ``top_k`` (query parameter; its schema also in JSON bodies)."""
    return {
        "name": "top_k",
        "in": "query",
        "description": "a classifier: how many classes to answer (default: the package's)",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
    }


def _channels_parameter() -> dict[str, Any]:
    """``channels``: the channel order of a decoded frame (``application/x-npy`` bodies only)."""
    return {
        "name": "channels",
        "in": "query",
        "description": "a decoded frame's channel order (application/x-npy only; default bgr)",
        "schema": {"type": "string", "enum": list(FRAME_CHANNELS)},
    }


def _inference_paths(unit: dict[str, Any]) -> dict[str, Any]:
    """The inference API's routes (device_agent/inference.py)."""
    top_k = _top_k_parameter()
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    image = {"type": "string", "format": "binary"}
    options = [
        {"name": "conf", "in": "query", "schema": unit},
        {"name": "iou", "in": "query", "schema": unit},
        {"name": "max_det", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        top_k,
        _channels_parameter(),
    ]
    body = {
        "required": True,
        "content": {
            "image/jpeg": {},
            "image/png": {},
            "application/octet-stream": {},
            NPY_CONTENT_TYPE: {"schema": image},
            "multipart/form-data": {"schema": {"type": "object", "properties": {"image": image}}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image_base64"],
                    "properties": {
                        "image_base64": {"type": "string"},
                        "conf": unit,
                        "iou": unit,
                        "max_det": {"type": "integer", "minimum": 1},
                        "top_k": top_k["schema"],
                    },
                }
            },
        },
    }
    inputs = (
        "the image as multipart field 'image', a raw JPEG/PNG body, JSON {\"image_base64\", "
        '"conf", "iou", "max_det", "top_k"}, or a decoded frame as application/x-npy (np.save '
        "of uint8 HxWx3, channels bgr or rgb; protocol 5)"
    )
    return {
        "/v1/infer": {
            "post": _op(
                f"run one image through ?model= (or the only model served); {inputs}; answers "
                "task, detections [{class_id, class_name, confidence, xyxy}] (plus mask or "
                "keypoints for segment and pose models), for a classifier classification "
                "[{class_id, class_name, confidence}] (the top_k most probable classes), and "
                "timing_ms; also open to an application's API key (Authorization: Bearer); "
                "503 with Retry-After when the inference queue is full",
                errors=("400", "401", "404", "409", "503"),
                parameters=[
                    {"name": "model", "in": "query", "schema": {"type": "string"}},
                    *options,
                ],
                requestBody=body,
            )
        },
        "/v1/models/{name}/infer": {
            "post": _op(
                f"run one image through the named model; {inputs}; answers model, version, "
                "runtime, task, detections [{class_id, "
                "class_name, confidence, xyxy}] (the keys of /v1/infer, plus 'class' and "
                "'score': the same values under their protocol-1 names, deprecated; mask or "
                "keypoints for segment and pose models), for a classifier classification "
                "[{class_id, class_name, confidence}] (the top_k most probable classes), and "
                "timing_ms; also open to an application's API key (Authorization: Bearer); "
                "503 with Retry-After when the inference queue is full",
                errors=("400", "401", "404", "409", "503"),
                parameters=[name, *options],
                requestBody=body,
            )
        },
        "/v1/models/{name}/bench": {
            "post": _op(
                "time the named model on this device ({runs}, default 50, warm-up excluded) on "
                "its self-test sample, or a synthetic image of its input size",
                errors=("400", "404", "409", "503"),
                parameters=[name],
                requestBody={
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "runs": {"type": "integer", "minimum": 1, "maximum": 1000}
                                },
                            }
                        }
                    }
                },
            )
        },
    }


def _install_paths() -> dict[str, Any]:
    """Resumable uploads and the model lifecycle (device_agent/uploads.py, store.py)."""
    upload_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    obj = {"application/json": {"schema": {"type": "object"}}}
    return {
        "/v1/uploads": {
            "post": _op(
                "open a resumable upload: JSON {size, sha256, name?, piece_size?, pieces?} -> "
                "{id, chunk_size, offset: 0, size, expires_at[, piece_size, pieces (count)]}; "
                "pieces lists the sha256 of every piece_size piece (at most 8192) and lets the "
                "rest come as one stream; or (protocol 2) {size, piece_size, head_sha256, "
                "name?, fresh?} for a chained stream: head_sha256 is the sha256 of the first "
                "piece only, so sending starts at once; an unfinished chained upload of the "
                "same size and first piece answers again with offset, received and "
                "sha256_prefix (the sha256 of its verified prefix, for the desktop to compare "
                "with its file; fresh: true starts over); the same unfinished package again "
                "answers its upload and offset; 413 too big, 429 too many open uploads, 507 "
                "disk too full",
                ok="201",
                errors=("400", "413", "429", "507"),
                requestBody={"required": True, "content": obj},
            )
        },
        "/v1/uploads/{id}": {
            "get": _op(
                "{offset, size, ...}: where to resume (offset: the verified prefix; "
                "received: whole pieces of a chained stream on disk past it, not verified yet)",
                errors=("404",),
                parameters=[upload_id],
            ),
            "put": _op(
                "append one chunk (application/octet-stream, signed like any request) at "
                "header Upload-Offset: N -> {offset}; or, with Content-Type "
                "application/x-outpost-pieces (an upload opened with pieces), the rest of the "
                "package from N in one stream whose signed body sha256 is the sha256 of the "
                "concatenated hex digests of the pieces it carries: each piece is checked as it "
                "arrives and kept only when it matches (422 with 'offset' when one does not); "
                "the verified prefix is fsynced before the answer and after a broken connection; "
                "or, with Content-Type application/x-outpost-chain (protocol 2, an upload "
                "opened with head_sha256) and header Upload-Proof-From: V, the package bytes "
                "from N (the end of the received pieces) then a proof: for every piece after "
                "V, the 32-byte sha256 of the package from byte 0 to that piece's end, and the "
                "desktop's Ed25519 signature over them, the agent, the upload, V and the "
                "request's nonce; pieces count as verified up to the first digest that does "
                "not match (the file is cut there: 422 with 'offset'); the last digest is the "
                "whole package's sha256; or, with Content-Type application/x-outpost-sealed "
                "(protocol 4), the same stream ending with a 128-byte seal instead: the "
                "package's sha256, its manifest.json's sha256 and the desktop's signature over "
                "both, the agent, the upload, its size and the nonce (422 when it does not "
                "verify; the commit holds the manifest to it and every file to the manifest). "
                "409 with the agent's 'offset' when N differs; 507 "
                "when the disk fills up while it is written (the upload is removed)",
                errors=("400", "404", "409", "422", "507"),
                parameters=[
                    upload_id,
                    {
                        "name": "Upload-Offset",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {
                        "name": "Upload-Proof-From",
                        "in": "header",
                        "required": False,
                        "description": "a chained stream: the verified offset its proof starts at",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                requestBody={
                    "required": True,
                    "content": {
                        "application/octet-stream": {},
                        "application/x-outpost-pieces": {},
                        "application/x-outpost-chain": {},
                        "application/x-outpost-sealed": {},
                    },
                },
            ),
            "delete": _op("drop an upload", errors=("404",), parameters=[upload_id]),
        },
        "/v1/uploads/{id}/commit": {
            "post": _op(
                "check the whole sha256 and install: verify, extract, load on the fastest "
                "execution provider, run the package's self-test, switch; JSON {activate?: "
                "bool, provider?: str}; answers the model plus activated, self_test, "
                "benchmark, fallback {wanted, using, reason} and warnings; repeatable",
                ok="201",
                errors=("404", "409", "422", "507"),
                parameters=[upload_id],
                requestBody={"required": False, "content": obj},
            )
        },
        "/v1/models": {
            "get": _op("every model on the device, serving or not: active, previous, staged")
        },
        "/v1/models/{name}": {
            "delete": _op(
                "uninstall every version; 409 when it is the only model serving unless ?force=1",
                errors=("404", "409", "507"),
                parameters=[name, {"name": "force", "in": "query", "schema": {"enum": ["1", "0"]}}],
            )
        },
        "/v1/models/{name}/activate": {
            "post": _op(
                "serve the model again, or switch to JSON {version} (staged, active or "
                "previous; default: the staged one)",
                errors=("404", "422", "507"),
                parameters=[name],
                requestBody={"required": False, "content": obj},
            )
        },
        "/v1/models/{name}/deactivate": {
            "post": _op(
                "stop serving the model; its files stay",
                errors=("404", "507"),
                parameters=[name],
            )
        },
    }
