"""Scheduled retraining (seed §2.2): celery-beat ticks on FINETUNE_SCHEDULE, this decides.

Shared because the beat task (worker/tasks.py) runs the tick and the API shows its state.

Each tick checks the seed's conditions — the scheduler is enabled, nothing is running, and at
least FINETUNE_MIN_TRACES traces with quality >= FINETUNE_MIN_QUALITY arrived since the last
completed run — and either starts a run (`triggered_by='scheduled'`) or records why not. The
decision is kept in Redis for `GET /api/finetune/schedule`.

Two beats (a mistake, or a fail-over) must not both start runs: a tick first claims its
minute with SET NX, so only the first beat's tick for that minute does anything; the database's
single-flight slot is the last line of defence. Missed ticks after downtime are not replayed:
the beat entry expires (see worker/celery_app.py), so at most one late tick runs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from croniter import croniter
from sqlalchemy import select

from shared.errors import InsufficientDataError
from shared.models import FineTuneRun
from shared.names import STATUS_COMPLETED
from shared.run_config import build_config
from shared.runs import FineTuneManager, RunConflictError
from shared.settings import Settings
from shared.warm_start import scheduled_overrides

LAST_DECISION_KEY = "finetune:schedule:last"
TICK_CLAIM_PREFIX = "finetune:schedule:tick:"
TICK_CLAIM_TTL_SECONDS = 3600


def next_fire_time(schedule: str, after: datetime | None = None) -> datetime:
    return croniter(schedule, after or datetime.now(UTC)).get_next(datetime)


def crontab_fields(schedule: str) -> dict[str, str]:
    """FINETUNE_SCHEDULE's five fields as celery.schedules.crontab keyword arguments."""
    minute, hour, day_of_month, month_of_year, day_of_week = schedule.split()
    return {
        "minute": minute,
        "hour": hour,
        "day_of_month": day_of_month,
        "month_of_year": month_of_year,
        "day_of_week": day_of_week,
    }


def _last_completed_start(manager: FineTuneManager) -> datetime | None:
    with manager.db.session() as session:
        return session.scalar(
            select(FineTuneRun.started_at)
            .where(FineTuneRun.status == STATUS_COMPLETED)
            .order_by(FineTuneRun.started_at.desc())
            .limit(1)
        )


def check_conditions(manager: FineTuneManager) -> str | None:
    """None when a scheduled run should start, else the reason it should not (seed §2.2)."""
    settings = manager.settings
    if not settings.enabled:
        return "the scheduler is disabled (FINETUNE_ENABLED=false)"
    active = manager.active_run()
    if active is not None:
        return f"run {active.id} is {active.status}"
    since = _last_completed_start(manager)
    since_iso = since.replace(tzinfo=UTC).isoformat() if since else None
    stats = manager.traces.get_stats(settings.min_quality, since=since_iso)
    if stats.fine_tune_candidates < settings.min_traces:
        where = f"since the last completed run ({since_iso})" if since_iso else "in the store"
        return (
            f"only {stats.fine_tune_candidates} new traces with quality >= "
            f"{settings.min_quality} {where}; need {settings.min_traces}"
        )
    return None


def _record(redis: Any, decision: dict[str, Any]) -> dict[str, Any]:
    redis.set(LAST_DECISION_KEY, json.dumps(decision))
    return decision


def scheduled_tick(manager: FineTuneManager, now: datetime | None = None) -> dict[str, Any]:
    """One beat tick: claim the minute, check the conditions, start a run or say why not."""
    now = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    claim = TICK_CLAIM_PREFIX + now.strftime("%Y%m%dT%H%M")
    if not manager.redis.set(claim, "1", nx=True, ex=TICK_CLAIM_TTL_SECONDS):
        return {"decision": "duplicate", "reason": "another beat already ran this tick"}
    decision: dict[str, Any] = {"at": now.isoformat(), "runId": None}
    reason = check_conditions(manager)
    if reason is None:
        try:
            warm = scheduled_overrides(manager.settings, build_config(manager.settings))
            run = manager.start(warm, triggered_by="scheduled")
        except (RunConflictError, InsufficientDataError) as exc:
            reason = str(exc)
        else:
            return _record(manager.redis, {**decision, "decision": "started", "runId": run.id})
    return _record(manager.redis, {**decision, "decision": "skipped", "reason": reason})


def schedule_status(settings: Settings, redis: Any) -> dict[str, Any]:
    """What `GET /api/finetune/schedule` shows."""
    raw = redis.get(LAST_DECISION_KEY)
    return {
        "enabled": settings.enabled,
        "schedule": settings.schedule,
        "nextFireTime": next_fire_time(settings.schedule).isoformat() if settings.enabled else None,
        "minTraces": settings.min_traces,
        "minQuality": settings.min_quality,
        "lastDecision": json.loads(raw) if raw else None,
    }
