"""GET /api/openapi.json: the API's contract (OpenAPI 3.1), generated.

Built from the app's URL map, each view's `@doc` declaration (app/apidoc.py) and the pydantic
models of shared/schemas.py and shared/run_config.py: the schemas are the validators' own, so
a bound in the document is the bound the API enforces. tests/app/test_openapi.py checks that
it names exactly the routes Flask serves; schemathesis (tests/integration/test_api_contract.py)
and tests/app/test_responses_documented.py check that real answers match it.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from pydantic import BaseModel
from pydantic.alias_generators import to_camel
from pydantic.json_schema import models_json_schema

from app.apidoc import Operation, Response, doc, operation_of
from shared.schemas import ErrorOut

bp = Blueprint("openapi", __name__)

JSON = "application/json"
REF = "#/components/schemas/{model}"
IGNORED_ENDPOINTS = {"static"}
DESCRIPTIONS = {101: "Switching Protocols", 200: "OK", 202: "Accepted", 204: "No Content"}


def _path(rule: str) -> str:
    """`/api/finetune/<run_id>` -> `/api/finetune/{runId}`."""
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{" + to_camel(m.group(1)) + "}", rule)


def _operations(app: Flask) -> list[tuple[str, str, Operation, list[str]]]:
    """(path, method, declaration, path parameters) for every route the app serves."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in IGNORED_ENDPOINTS:
            continue
        operation = operation_of(app.view_functions[rule.endpoint])
        if operation is None:
            raise LookupError(f"route {rule.rule} ({rule.endpoint}) has no @doc declaration")
        params = [to_camel(name) for name in rule.arguments]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((_path(rule.rule), method.lower(), operation, params))
    return found


def _models(operations: list[tuple[str, str, Operation, list[str]]]) -> list[Any]:
    models: dict[tuple[type[BaseModel], str], None] = {(ErrorOut, "serialization"): None}
    for _, _, operation, _ in operations:
        if operation.body is not None:
            models[(operation.body, "validation")] = None
        for response in operation.responses.values():
            if isinstance(response, type):
                models[(response, "serialization")] = None
    return list(models)


def _response(status: int, response: Response, refs: dict[Any, Any]) -> dict[str, Any]:
    description = DESCRIPTIONS.get(status, "Error" if status >= 400 else "OK")
    if response is None:
        return {"description": description}
    if isinstance(response, str):  # a media type: an opaque document or a text body
        schema = {"type": "object"} if response == JSON else {"type": "string"}
        return {"description": response, "content": {response: {"schema": schema}}}
    return {
        "description": description,
        "content": {JSON: {"schema": refs[(response, "serialization")]}},
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF)
    return [
        {"name": name, "in": "query", "required": False, "schema": _without_null(prop)}
        for name, prop in schema["properties"].items()
    ]


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query string cannot carry null: an optional parameter is simply left out."""
    options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
    if len(options) != 1:
        return prop
    rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    return {**rest, **options[0]}


def _operation(operation: Operation, params: list[str], refs: dict[Any, Any]) -> dict[str, Any]:
    responses = dict(operation.responses)
    if not operation.public:
        responses.setdefault(401, ErrorOut)
    document: dict[str, Any] = {
        "summary": operation.summary,
        "responses": {str(s): _response(s, r, refs) for s, r in sorted(responses.items())},
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in params
    ]
    if operation.query is not None:
        parameters += _query_parameters(operation.query)
    if parameters:
        document["parameters"] = parameters
    if operation.body is not None:
        document["requestBody"] = {
            "required": False,
            "content": {JSON: {"schema": refs[(operation.body, "validation")]}},
        }
    if operation.public:
        document["security"] = [{}]
    return document


def build_document(app: Flask) -> dict[str, Any]:
    operations = _operations(app)
    refs, schemas = models_json_schema(_models(operations), by_alias=True, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, operation, params in operations:
        paths.setdefault(path, {})[method] = _operation(operation, params, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tmde-finetune",
            "version": "1.0.0",
            "description": "LoRA fine-tuning from debate traces",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],  # required only when API_TOKEN is set
    }


def _document_of(app: Flask) -> dict[str, Any]:
    """Built once per app (routes do not change after start-up)."""
    if "tmde.openapi" not in app.extensions:
        app.extensions["tmde.openapi"] = build_document(app)
    return app.extensions["tmde.openapi"]


@bp.get("/api/openapi.json")
@doc("This document (OpenAPI 3.1)", {200: JSON}, public=True)
def openapi():  # type: ignore[no-untyped-def]
    return jsonify(_document_of(current_app._get_current_object()))  # type: ignore[attr-defined]
