"""Probes: GET /healthz (liveness: the process answers and reaches its database and Redis) and
GET /readyz (readiness: the database schema is at head, Redis answers, a worker is alive).

A load balancer sends traffic on /readyz; an orchestrator restarts on /healthz. Both answer
200 or 503 with every check named, never an error page.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, jsonify
from sqlalchemy import text

from app import state
from app.apidoc import doc
from shared.schemas import HealthOut

bp = Blueprint("health", __name__)

WORKER_PING_SECONDS = 1.0


def _database() -> str:
    with state.database().engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return "ok"


def _redis() -> str:
    state.redis_client().ping()
    return "ok"


def _schema() -> str:
    from shared import migrate

    current, head = migrate.current_revision(state.settings().database_url), migrate.head_revision()
    if current != head:
        raise RuntimeError(f"at {current}, head is {head}: run `tmde-finetune db upgrade`")
    return "ok"


def _worker() -> str:
    replies = state.manager().celery.control.ping(timeout=WORKER_PING_SECONDS)
    if not replies:
        raise RuntimeError("no Celery worker answered a ping; start `tmde-finetune worker`")
    return f"ok ({len(replies)} worker{'s' if len(replies) > 1 else ''})"


def _report(checks: dict[str, Callable[[], str]]):  # type: ignore[no-untyped-def]
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            detail = str(exc) if isinstance(exc, RuntimeError) else exc.__class__.__name__
            results[name] = f"error: {detail}"
    healthy = all(v.startswith("ok") for v in results.values())
    return jsonify(status="ok" if healthy else "degraded", checks=results), 200 if healthy else 503


@bp.get("/healthz")
@doc("Liveness: database and Redis", {200: HealthOut, 503: HealthOut}, public=True)
def healthz():  # type: ignore[no-untyped-def]
    return _report({"database": _database, "redis": _redis})


@bp.get("/readyz")
@doc("Readiness: schema at head, Redis, a worker", {200: HealthOut, 503: HealthOut}, public=True)
def readyz():  # type: ignore[no-untyped-def]
    return _report({"database": _schema, "redis": _redis, "worker": _worker})
