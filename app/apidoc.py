"""Route declarations for the OpenAPI document: `@doc(...)` under each route decorator.

A small registry of our own over pydantic's JSON schemas rather than spectree or
flask-openapi3: the routes stay plain Flask views (blueprints, flask-sock's websocket route,
streaming responses), the schemas are exactly the models' own (`model_json_schema`), and the
document needs no dependency beyond pydantic. app/openapi.py walks the app's URL map and reads
these declarations, so a route without one fails tests/app/test_openapi.py.

    @bp.get("/<run_id>")
    @doc("One run with its latest event", {200: RunDetail, 404: ErrorOut})
    def get_run(run_id): ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from shared.fields import field_errors

ATTRIBUTE = "__apidoc__"
View = TypeVar("View", bound=Callable[..., Any])
# A response is a model (JSON), a media type ("text/event-stream": a string body) or None.
Response = type[BaseModel] | str | None
Q = TypeVar("Q", bound=BaseModel)


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, Response]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    public: bool = False  # served without the bearer token (no 401)


def doc(
    summary: str,
    responses: Mapping[int, Response],
    *,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    public: bool = False,
) -> Callable[[View], View]:
    """Declare what a view takes and answers; the OpenAPI document is built from this."""
    operation = Operation(summary, responses, body, query, public)

    def mark(view: View) -> View:
        setattr(view, ATTRIBUTE, operation)
        return view

    return mark


def operation_of(view: Callable[..., Any]) -> Operation | None:
    return getattr(view, ATTRIBUTE, None)


class QueryError(ValueError):
    """Query parameters the route's query model refuses; the API answers 400 naming each."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in errors.items()))
        self.errors = errors


def parse_query(model: type[Q]) -> Q:
    """The request's query string validated by `model` (the one its document shows)."""
    known = {info.alias or name for name, info in model.model_fields.items()}
    values = {key: value for key, value in request.args.items() if key in known}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise QueryError(field_errors(exc, model.model_fields)) from None
