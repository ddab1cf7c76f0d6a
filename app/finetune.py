"""/api/finetune: start, list, get and cancel runs; the default config (seed §4).

Failures are raised and answered by app/errors.py; what each route takes and answers is
declared with `@doc` and published by app/openapi.py.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, abort, jsonify, request

from app import state
from app.apidoc import doc, parse_query
from shared.events import latest_event
from shared.run_config import FineTuneConfig
from shared.runs import RunNotFoundError, run_to_dict
from shared.schemas import (
    MAX_EVENTS_PAGE,
    ErrorOut,
    EventsPage,
    EventsQuery,
    RunDetail,
    RunListQuery,
    RunOut,
    RunPage,
    ScheduleOut,
    StartBody,
    StartOut,
)

bp = Blueprint("finetune", __name__, url_prefix="/api/finetune")

RUN_ID = re.compile(r"^run_[0-9a-f]{6,32}$")


def _run_or_404(run_id: str):  # type: ignore[no-untyped-def]
    if not RUN_ID.fullmatch(run_id):
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
@doc(
    "Start a run (202); 409 while one is active; 422 with too few traces",
    {202: StartOut, 400: ErrorOut, 409: ErrorOut, 413: ErrorOut, 422: ErrorOut},
    body=StartBody,
)
def start():  # type: ignore[no-untyped-def]
    body = request.get_json(silent=True) if request.get_data() else {}
    if not isinstance(body, dict):
        abort(400, description='Request body must be a JSON object like {"config": {...}}')
    unknown = sorted(set(body) - {"config"})
    if unknown:
        message = (
            f'Unknown top-level field(s): {", ".join(unknown)}; put run settings under "config"'
        )
        return jsonify(error=message, fields={k: "unknown" for k in unknown}), 400
    run = state.manager().start(body.get("config"), triggered_by="api")
    return jsonify(
        runId=run.id, status=run.status, progressUrl=f"/api/finetune/{run.id}/progress"
    ), 202


@bp.get("")
@doc("List runs, newest first", {200: RunPage, 400: ErrorOut}, query=RunListQuery)
def list_runs():  # type: ignore[no-untyped-def]
    query = parse_query(RunListQuery)
    runs, total = state.manager().list(limit=query.limit, offset=query.offset, status=query.status)
    return jsonify(
        runs=[run_to_dict(r) for r in runs], total=total, limit=query.limit, offset=query.offset
    )


@bp.get("/config/default")
@doc("The default FineTuneConfig (the settings' defaults)", {200: FineTuneConfig})
def default_config():  # type: ignore[no-untyped-def]
    return jsonify(state.manager().default_config())


@bp.get("/schedule")
@doc("The beat schedule and its last decision", {200: ScheduleOut, 503: ErrorOut})
def schedule():  # type: ignore[no-untyped-def]
    """The beat schedule: next fire time and the last decision (started, or why not)."""
    from shared.schedule import schedule_status

    try:
        return jsonify(schedule_status(state.settings(), state.redis_client()))
    except Exception as exc:  # noqa: BLE001 - Redis down: say so instead of a 500
        return jsonify(error=f"schedule state unavailable: {exc.__class__.__name__}"), 503


@bp.get("/<run_id>")
@doc("One run with its latest event", {200: RunDetail, 404: ErrorOut})
def get_run(run_id: str):  # type: ignore[no-untyped-def]
    run = _run_or_404(run_id)
    return jsonify({**run_to_dict(run), "latestEvent": _latest(run.id)})


@bp.post("/<run_id>/cancel")
@doc("Cancel a run", {202: RunOut, 404: ErrorOut, 409: ErrorOut})
def cancel(run_id: str):  # type: ignore[no-untyped-def]
    _run_or_404(run_id)
    return jsonify(run_to_dict(state.manager().cancel(run_id))), 202


@bp.get("/<run_id>/events")
@doc(
    "Stored progress/eval events, paged by id",
    {200: EventsPage, 400: ErrorOut, 404: ErrorOut},
    query=EventsQuery,
)
def events(run_id: str):  # type: ignore[no-untyped-def]
    """The stored progress/eval history of a run, paged by `after` (an event id)."""
    _run_or_404(run_id)
    query = parse_query(EventsQuery)
    limit = min(query.limit, MAX_EVENTS_PAGE)
    rows = state.manager().runs.progress(run_id, limit=limit, after_id=query.after)
    return jsonify(events=rows, next=rows[-1]["id"] if rows else query.after)
