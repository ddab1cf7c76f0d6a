"""GET /api/openapi.json: the API's contract (OpenAPI 3.0), written by hand next to the routes.

tests/app/test_openapi.py checks that it names exactly the routes Flask serves, and a
schemathesis run against a live server checks that responses match it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)

JSON = "application/json"
OBJ: dict[str, Any] = {"type": "object"}
NULLABLE_NUM = {"type": "number", "nullable": True}
NULLABLE_STR = {"type": "string", "nullable": True}
RUN_ID = {"name": "runId", "in": "path", "required": True, "schema": {"type": "string"}}
ADAPTER_ID = {"name": "adapterId", "in": "path", "required": True, "schema": {"type": "string"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json(_ref("Error"), "Error") for code in codes}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": False, "content": {JSON: {"schema": schema}}}}


CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "baseModel": {"type": "string", "minLength": 1},
        "backend": {"type": "string", "enum": ["auto", "trl", "unsloth", "axolotl"]},
        "loraRank": {"type": "integer", "minimum": 1, "maximum": 1024},
        "loraAlpha": {"type": "integer", "minimum": 1, "maximum": 4096},
        "loraDropout": {"type": "number", "minimum": 0, "maximum": 0.9},
        "targetModules": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 1000},
        "maxSteps": {"type": "integer", "minimum": 1, "nullable": True},
        "learningRate": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
        "batchSize": {"type": "integer", "minimum": 1, "maximum": 4096},
        "gradAccum": {"type": "integer", "minimum": 1, "maximum": 4096},
        "maxSeqLen": {"type": "integer", "minimum": 16, "maximum": 1048576},
        "minQualityScore": {"type": "number", "minimum": 0, "maximum": 10},
        "valSplit": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 0.5},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2147483647},
        "evalSteps": {"type": "integer", "minimum": 1},
        "saveSteps": {"type": "integer", "minimum": 1},
        "saveTotalLimit": {"type": "integer", "minimum": 1, "maximum": 1000},
        "loggingSteps": {"type": "integer", "minimum": 1},
        "packing": {"type": "boolean"},
        "evalSamples": {"type": "integer", "minimum": 0, "maximum": 1000},
    },
}
RUN = {
    "type": "object",
    "required": ["id", "status", "baseModel", "config", "progressUrl"],
    "properties": {
        "id": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["pending", "running", "completed", "failed", "cancelled"],
        },
        "triggeredBy": {"type": "string"},
        "baseModel": {"type": "string"},
        "backend": NULLABLE_STR,
        "startedAt": NULLABLE_STR,
        "completedAt": NULLABLE_STR,
        "loraPath": NULLABLE_STR,
        "config": OBJ,
        "metrics": {"type": "object", "nullable": True},
        "promotion": {"type": "object", "nullable": True},
        "errorMessage": NULLABLE_STR,
        "errorCode": NULLABLE_STR,
        "cancelRequested": {"type": "boolean"},
        "progressUrl": {"type": "string"},
    },
}
ADAPTER = {
    "type": "object",
    "required": ["id", "isActive"],
    "properties": {
        "id": {"type": "string"},
        "createdAt": {"type": "string"},
        "baseModel": {"type": "string"},
        "isActive": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "sha256": {"type": "string"},
        "sizeBytes": {"type": "integer"},
        "metrics": OBJ,
        "promotion": OBJ,
        "provenance": OBJ,
        "path": {"type": "string"},
    },
}
ACTIVE_STATE = {
    "type": "object",
    "required": ["adapterId", "history"],
    "properties": {
        "adapterId": NULLABLE_STR,
        "activatedAt": NULLABLE_STR,
        "path": NULLABLE_STR,
        "history": {"type": "array", "items": OBJ},
        "exportTaskId": {"type": "string"},
    },
}
HEALTH = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {"status": {"type": "string"}, "checks": OBJ},
}
REASON = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"reason": {"type": "string", "maxLength": 500}},
}

PATHS: dict[str, Any] = {
    "/api/finetune": {
        "post": _op(
            "Start a run (202); 409 while one is active; 422 with too few traces",
            {"202": _json(OBJ, "Accepted"), **_errors(400, 401, 409, 413, 422)},
            **_body(
                {"type": "object", "additionalProperties": False, "properties": {"config": CONFIG}}
            ),
        ),
        "get": _op(
            "List runs, newest first",
            {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "runs": {"type": "array", "items": _ref("Run")},
                            "total": {"type": "integer"},
                        },
                    }
                ),
                **_errors(400, 401),
            },
            parameters=[
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                },
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "status", "in": "query", "schema": RUN["properties"]["status"]},  # type: ignore[index]
            ],
        ),
    },
    "/api/finetune/config/default": {
        "get": _op("The default FineTuneConfig", {"200": _json(OBJ), **_errors(401)})
    },
    "/api/finetune/schedule": {
        "get": _op(
            "The beat schedule and its last decision",
            {"200": _json(OBJ), **_errors(401, 503)},
        )
    },
    "/api/finetune/feeds": {
        "get": _op("This API process's live-feed counters", {"200": _json(OBJ), **_errors(401)})
    },
    "/api/finetune/{runId}": {
        "get": _op(
            "One run with its latest event",
            {"200": _json(_ref("Run")), **_errors(401, 404)},
            parameters=[RUN_ID],
        )
    },
    "/api/finetune/{runId}/cancel": {
        "post": _op(
            "Cancel a run",
            {"202": _json(_ref("Run")), **_errors(401, 404, 409)},
            parameters=[RUN_ID],
        )
    },
    "/api/finetune/{runId}/events": {
        "get": _op(
            "Stored progress/eval events, paged by id",
            {"200": _json(OBJ), **_errors(400, 401, 404)},
            parameters=[
                RUN_ID,
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            ],
        )
    },
    "/api/finetune/{runId}/progress": {
        "get": _op(
            "Server-Sent Events until the run ends (Last-Event-ID resumes)",
            {
                "200": {
                    "description": "text/event-stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_errors(401, 404),
            },
            parameters=[RUN_ID],
        )
    },
    "/api/finetune/{runId}/ws": {
        "get": _op(
            "WebSocket feed (upgrade): state, latest event, every event, terminal event",
            {"101": {"description": "Switching Protocols"}, **_errors(400, 401, 404)},
            parameters=[RUN_ID, {"name": "after", "in": "query", "schema": {"type": "integer"}}],
        )
    },
    "/api/adapters": {
        "get": _op(
            "Published adapters, newest first",
            {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "adapters": {"type": "array", "items": _ref("Adapter")},
                            "activeId": NULLABLE_STR,
                            "total": {"type": "integer"},
                        },
                    }
                ),
                **_errors(401),
            },
        )
    },
    "/api/adapters/active": {
        "get": _op(
            "active.json and the active adapter", {"200": _json(ACTIVE_STATE), **_errors(401, 409)}
        )
    },
    "/api/adapters/rollback": {
        "post": _op(
            "Back to the previously active adapter",
            {"200": _json(ACTIVE_STATE), **_errors(400, 401, 409)},
            **_body(REASON),
        )
    },
    "/api/adapters/{adapterId}": {
        "get": _op(
            "One adapter: manifest, path, samples",
            {"200": _json(_ref("Adapter")), **_errors(401, 404)},
            parameters=[ADAPTER_ID],
        ),
        "patch": _op(
            "Replace the tags",
            {"200": _json(_ref("Adapter")), **_errors(400, 401, 404, 409)},
            parameters=[ADAPTER_ID],
            **_body(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
                }
            ),
        ),
        "delete": _op(
            "Delete (refused for the active adapter)",
            {"204": {"description": "Deleted"}, **_errors(401, 404, 409)},
            parameters=[ADAPTER_ID],
        ),
    },
    "/api/adapters/{adapterId}/activate": {
        "post": _op(
            "Activate after verifying the sha256",
            {"200": _json(ACTIVE_STATE), **_errors(400, 401, 404, 409)},
            parameters=[ADAPTER_ID],
            **_body(REASON),
        )
    },
    "/api/adapters/{adapterId}/export-gguf": {
        "post": _op(
            "Queue a GGUF LoRA + Modelfile export",
            {"202": _json(OBJ), **_errors(401, 404, 409)},
            parameters=[ADAPTER_ID],
        )
    },
    "/api/openapi.json": {"get": _op("This document", {"200": _json(OBJ)})},
    "/healthz": {
        "get": _op("Liveness: database and Redis", {"200": _json(HEALTH), "503": _json(HEALTH)})
    },
    "/readyz": {
        "get": _op(
            "Readiness: schema at head, Redis, a worker",
            {"200": _json(HEALTH), "503": _json(HEALTH)},
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics",
            {
                "200": {
                    "description": "text/plain",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
    },
    "/": {
        "get": _op(
            "The dashboard",
            {
                "200": {
                    "description": "text/html",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        )
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "tmde-finetune",
        "version": "1.0.0",
        "description": "LoRA fine-tuning from debate traces",
    },
    "paths": PATHS,
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "Run": RUN,
            "Adapter": ADAPTER,
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}, {}],  # required only when API_TOKEN is set
}


@bp.get("/api/openapi.json")
def openapi():  # type: ignore[no-untyped-def]
    return jsonify(DOCUMENT)
