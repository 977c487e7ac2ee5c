"""The OpenAPI 3 description of the backend's HTTP endpoints, served at ``GET /openapi.json``.

The document describes the bodies Label Studio sends (``/setup``, ``/predict``, ``/webhook``) as
far as the backend reads them; every other field is allowed and ignored. Limits that come from the
settings (tasks per request, smart regions per context) appear as ``maxItems``, so a client (or a
fuzzer) sees the same limits the server enforces. Every error answer is the
``{"status", "code", "message"}`` object of :mod:`xsam_backend.errors`.
"""

from __future__ import annotations

from typing import Any

from xsam_backend.settings import Settings

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "malformed request: the message names the field, what was expected and what arrived",
        401: "basic auth is configured and the request lacks valid credentials",
        403: "the task's image is outside what the backend may read (SSRF guard, path traversal)",
        404: "the task's image does not exist (single interactive task)",
        405: "the method is not allowed on this path",
        413: "the body, the task count or the prompt region count is over a limit",
        422: "the label config or the prompt is one the backend cannot serve",
        502: "Label Studio or the storage did not answer for the task's image",
        503: "the task broker (Redis) is down; retry later",
        504: "no worker answered within the time limit",
    }
    return {
        str(status): {"description": reasons[status], "content": _json(_ERROR_REF)} for status in statuses
    }


def _schemas(settings: Settings) -> dict[str, Any]:
    region = {
        "type": "object",
        "description": (
            "a smart region as Label Studio sends it; coordinates are percent (0-100) of "
            "original_width / original_height, the image's pixel size after EXIF orientation"
        ),
        "required": ["from_name", "type", "value"],
        "properties": {
            "from_name": {"type": "string"},
            "to_name": {"type": "string"},
            "type": {"type": "string"},
            "original_width": {"type": "integer", "minimum": 1},
            "original_height": {"type": "integer", "minimum": 1},
            "is_positive": {"type": "boolean"},
            "value": {"type": "object"},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer", "description": "the HTTP status, repeated"},
                "code": {"type": "string", "description": "machine-readable error code"},
                "message": {
                    "type": "string",
                    "minLength": 1,
                    "description": "what was expected and what arrived",
                },
            },
        },
        "Task": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "id": {"type": "integer"},
                "data": {
                    "type": "object",
                    "description": "task data; the <Image> tag's variable holds the image URL",
                    "additionalProperties": {},
                },
            },
        },
        "PredictRequest": {
            "type": "object",
            "required": ["tasks", "label_config"],
            "properties": {
                "tasks": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_tasks_per_request,
                    "items": {"$ref": "#/components/schemas/Task"},
                },
                "label_config": {"type": "string", "description": "the project's label config XML"},
                "project": {"type": "string", "description": "'<id>.<created timestamp>'"},
                "params": {
                    "type": "object",
                    "nullable": True,
                    "properties": {
                        "context": {
                            "type": "object",
                            "nullable": True,
                            "description": "absent or null: automatic pre-labelling",
                            "properties": {
                                "result": {
                                    "type": "array",
                                    "maxItems": settings.max_prompt_regions,
                                    "items": region,
                                }
                            },
                        }
                    },
                },
            },
        },
        "Prediction": {
            "type": "object",
            "required": ["result", "score", "model_version"],
            "properties": {
                "result": {"type": "array", "items": {"type": "object"}},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "model_version": {"type": "string"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "engine", "model_version", "dispatcher"],
            "properties": {
                "status": {"type": "string", "enum": ["UP", "DEGRADED"]},
                "engine": {"type": "string"},
                "model_version": {"type": "string", "nullable": True},
                "dispatcher": {"type": "string", "enum": ["inline", "celery"]},
                "broker": {"type": "string", "description": "'ok' or 'down: <reason>' (Celery only)"},
            },
        },
    }


def _body(ref: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": _json({"$ref": f"#/components/schemas/{ref}"}),
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the backend as configured by ``settings``, a JSON-safe dict.

    With basic auth configured every operation but ``GET /health`` requires it; without, the
    ``basicAuth`` scheme is listed but optional.
    """
    security: list[dict[str, list[str]]] = (
        [{"basicAuth": []}] if settings.basic_auth_enabled else [{"basicAuth": []}, {}]
    )
    health = {
        "summary": "Liveness and serving state; never behind auth",
        "security": [],
        "responses": {
            "200": {
                "description": "UP or DEGRADED",
                "content": _json({"$ref": "#/components/schemas/Health"}),
            }
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "X-SAM Label Studio ML backend",
            "version": API_VERSION,
            "description": "Label Studio's ML backend protocol served by X-SAM (or the weight-free fallback engine).",
        },
        "security": security,
        "paths": {
            "/health": {"get": {**health, "operationId": "health"}},
            "/": {"get": {**health, "operationId": "root", "security": security}},
            "/setup": {
                "post": {
                    "operationId": "setup",
                    "summary": "Check that the backend can serve a project's label config",
                    "requestBody": {
                        "required": True,
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["schema"],
                                "properties": {
                                    "schema": {"type": "string", "description": "the label config XML"},
                                    "project": {"type": "string"},
                                    "hostname": {"type": "string"},
                                    "access_token": {"type": "string"},
                                },
                            }
                        ),
                    },
                    "responses": {
                        "200": {
                            "description": "the model version that will answer",
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["model_version"],
                                    "properties": {"model_version": {"type": "string"}},
                                }
                            ),
                        },
                        **_errors(400, 401, 413, 422),
                    },
                }
            },
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Predict regions for tasks (interactive when params.context holds smart regions)",
                    "requestBody": _body("PredictRequest", "Label Studio's predict request"),
                    "responses": {
                        "200": {
                            "description": "one prediction per task, in order; a failed task of a batch is empty",
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["results"],
                                    "properties": {
                                        "results": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Prediction"},
                                        }
                                    },
                                }
                            ),
                        },
                        **_errors(400, 401, 403, 404, 413, 422, 502, 503, 504),
                    },
                }
            },
            "/webhook": {
                "post": {
                    "operationId": "webhook",
                    "summary": "Label Studio events; answers at once",
                    "requestBody": {
                        "required": True,
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["action"],
                                "properties": {"action": {"type": "string"}, "project": {"type": "object"}},
                            }
                        ),
                    },
                    "responses": {
                        "200": {"description": "event received", "content": _json({"type": "object"})},
                        **_errors(400, 401, 413, 422),
                    },
                }
            },
            "/train": {
                "post": {
                    "operationId": "train",
                    "summary": "Queue a training job for a project (Label Studio's legacy Start training)",
                    "requestBody": {
                        "required": True,
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["project"],
                                "properties": {
                                    "project": {
                                        "oneOf": [
                                            {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
                                            {"type": "integer", "minimum": 0},
                                        ]
                                    }
                                },
                            }
                        ),
                    },
                    "responses": {
                        "201": {"description": "queued, or why not", "content": _json({"type": "object"})},
                        **_errors(400, 401, 413, 422),
                    },
                }
            },
            "/versions": {
                "get": {
                    "operationId": "versions",
                    "summary": "Model versions (of one project with ?project=<id>)",
                    "parameters": [
                        {"name": "project", "in": "query", "required": False, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "the versions this backend can serve",
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["versions"],
                                    "properties": {
                                        "versions": {"type": "array", "items": {"type": "string"}}
                                    },
                                }
                            ),
                        },
                        **_errors(401),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "OpenAPI 3 document", "content": _json({"type": "object"})},
                        **_errors(401),
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": (
                        "BASIC_AUTH_USER / BASIC_AUTH_PASS. Label Studio's auto-created webhook sends no "
                        "Authorization header: add one with PATCH /api/webhooks/{id} "
                        '{"headers": {"Authorization": "Basic <base64 user:pass>"}}'
                    ),
                }
            },
        },
    }
