"""/api/finetune: start, list, get and cancel runs; the default config (seed §4)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, abort, jsonify, request

from app import state
from shared.errors import InsufficientDataError
from shared.events import latest_event
from shared.names import RUN_STATUSES
from shared.run_config import ConfigError
from shared.runs import RunConflictError, RunNotFoundError, run_to_dict

bp = Blueprint("finetune", __name__, url_prefix="/api/finetune")

RUN_ID = re.compile(r"^run_[0-9a-f]{6,32}$")
MAX_PAGE = 200
MAX_SQL_INT = 2**63 - 1  # larger numbers overflow the database's integer type


def _error(status: int, message: str, **extra: Any):  # type: ignore[no-untyped-def]
    return jsonify(error=message, **extra), status


def _run_or_404(run_id: str):  # type: ignore[no-untyped-def]
    if not RUN_ID.match(run_id):
        abort(404, description=f"Run not found: {run_id}")
    try:
        return state.manager().get(run_id)
    except RunNotFoundError as exc:
        abort(404, description=str(exc))


def _latest(run_id: str) -> dict[str, Any] | None:
    try:
        return latest_event(state.redis_client(), run_id)
    except Exception:  # noqa: BLE001 - Redis down: the run itself is still served from the DB
        return None


@bp.post("")
def start():  # type: ignore[no-untyped-def]
    body = request.get_json(silent=True) if request.get_data() else {}
    if not isinstance(body, dict):
        return _error(400, 'Request body must be a JSON object like {"config": {...}}')
    unknown = sorted(set(body) - {"config"})
    if unknown:
        return _error(
            400,
            f'Unknown top-level field(s): {", ".join(unknown)}; put run settings under "config"',
            fields={k: "unknown" for k in unknown},
        )
    try:
        run = state.manager().start(body.get("config"), triggered_by="api")
    except ConfigError as exc:
        return _error(400, f"Invalid config: {exc}", fields=exc.errors)
    except RunConflictError as exc:
        return _error(409, str(exc), activeRunId=exc.run_id)
    except InsufficientDataError as exc:
        return _error(422, exc.message, current=exc.current, required=exc.required)
    return jsonify(
        runId=run.id, status=run.status, progressUrl=f"/api/finetune/{run.id}/progress"
    ), 202


@bp.get("")
def list_runs():  # type: ignore[no-untyped-def]
    try:
        limit = int(request.args.get("limit", 20))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        return _error(400, "limit and offset must be integers")
    if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= MAX_SQL_INT:
        return _error(400, f"limit must be 1-{MAX_PAGE} and offset between 0 and {MAX_SQL_INT}")
    status = request.args.get("status")
    if status is not None and status not in RUN_STATUSES:
        return _error(400, f"status must be one of {', '.join(RUN_STATUSES)}")
    runs, total = state.manager().list(limit=limit, offset=offset, status=status)
    return jsonify(runs=[run_to_dict(r) for r in runs], total=total, limit=limit, offset=offset)


@bp.get("/config/default")
def default_config():  # type: ignore[no-untyped-def]
    return jsonify(state.manager().default_config())


@bp.get("/schedule")
def schedule():  # type: ignore[no-untyped-def]
    """The beat schedule: next fire time and the last decision (started, or why not)."""
    from shared.schedule import schedule_status

    try:
        return jsonify(schedule_status(state.settings(), state.redis_client()))
    except Exception as exc:  # noqa: BLE001 - Redis down: say so instead of a 500
        return _error(503, f"schedule state unavailable: {exc.__class__.__name__}")


@bp.get("/<run_id>")
def get_run(run_id: str):  # type: ignore[no-untyped-def]
    run = _run_or_404(run_id)
    return jsonify({**run_to_dict(run), "latestEvent": _latest(run.id)})


@bp.post("/<run_id>/cancel")
def cancel(run_id: str):  # type: ignore[no-untyped-def]
    _run_or_404(run_id)
    try:
        run = state.manager().cancel(run_id)
    except RunConflictError as exc:
        return _error(409, str(exc))
    return jsonify(run_to_dict(run)), 202


@bp.get("/<run_id>/events")
def events(run_id: str):  # type: ignore[no-untyped-def]
    """The stored progress/eval history of a run, paged by `after` (an event id)."""
    _run_or_404(run_id)
    try:
        after = int(request.args.get("after", 0))
        limit = min(int(request.args.get("limit", 1000)), 5000)
    except ValueError:
        return _error(400, "after and limit must be integers")
    if not 0 <= after <= MAX_SQL_INT or limit < 1:
        return _error(400, f"after must be between 0 and {MAX_SQL_INT}, and limit >= 1")
    rows = state.manager().runs.progress(run_id, limit=limit, after_id=after)
    return jsonify(events=rows, next=rows[-1]["id"] if rows else after)
