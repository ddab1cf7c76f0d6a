"""The one table from the service's exceptions to HTTP answers (status and ErrorOut body).

Routes raise; this table answers. An exception's most specific class in the table wins (its
method resolution order is walked), so a subclass may answer differently from its parent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from app.apidoc import QueryError
from shared.errors import InsufficientDataError
from shared.registry import (
    AdapterConflictError,
    AdapterError,
    AdapterIntegrityError,
    AdapterNotFoundError,
)
from shared.run_config import ConfigError
from shared.runs import RunConflictError, RunInProgressError, RunNotFoundError

Body = Callable[[Any], dict[str, Any]]


def _message(exc: Exception) -> dict[str, Any]:
    return {"error": str(exc)}


def _adapter(exc: AdapterError) -> dict[str, Any]:
    return {"error": exc.message, "code": exc.code}


# exception class -> (HTTP status, body)
ERROR_STATUS: dict[type[Exception], tuple[int, Body]] = {
    ConfigError: (400, lambda e: {"error": f"Invalid config: {e}", "fields": e.errors}),
    QueryError: (400, lambda e: {"error": f"Invalid query: {e}", "fields": e.errors}),
    RunNotFoundError: (404, _message),
    RunConflictError: (409, _message),
    RunInProgressError: (409, lambda e: {"error": str(e), "activeRunId": e.run_id}),
    InsufficientDataError: (
        422,
        lambda e: {"error": e.message, "current": e.current, "required": e.required},
    ),
    AdapterError: (400, _adapter),
    AdapterNotFoundError: (404, _adapter),
    AdapterConflictError: (409, _adapter),
    AdapterIntegrityError: (409, _adapter),
}


def answer(exc: Exception) -> tuple[int, dict[str, Any]]:
    """(status, body) for an exception of the table."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            status, body = ERROR_STATUS[cls]
            return status, body(exc)
    raise LookupError(f"{type(exc).__name__} is not in app.errors.ERROR_STATUS")


def init_app(app: Flask) -> None:
    def handle(exc: Exception):  # type: ignore[no-untyped-def]
        status, body = answer(exc)
        return jsonify(body), status

    for cls in ERROR_STATUS:
        app.register_error_handler(cls, handle)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        return jsonify(error=exc.description or exc.name), exc.code
