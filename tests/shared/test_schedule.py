"""Scheduled retraining: the seed §2.2 conditions, one decision per tick, the API view."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from shared import schedule
from shared.db import Database
from shared.models import FineTuneRun
from shared.runs import FineTuneManager
from shared.settings import Settings
from shared.traces import Trace, TraceStore
from tests.helpers import memory_celery


@pytest.fixture
def manager(settings: Settings, migrated_url: str, trace_store: TraceStore, monkeypatch):  # type: ignore[no-untyped-def]
    celery = memory_celery(settings)
    monkeypatch.setattr("shared.queue.enqueue_pipeline", lambda app, run_id: ["a", "b", "c"])
    db = Database(migrated_url)
    yield FineTuneManager(
        settings.replace(database_url=migrated_url),
        db,
        trace_store,
        celery,
        fakeredis.FakeRedis(server=fakeredis.FakeServer()),
    )
    db.dispose()


def _completed_run(manager: FineTuneManager, started: datetime) -> None:
    with manager.db.session() as session:
        session.add(
            FineTuneRun(
                id="run_000000000001",
                status="completed",
                base_model="m",
                config="{}",
                started_at=started.replace(tzinfo=None),
            )
        )


def test_tick_starts_a_scheduled_run_when_conditions_hold(manager: FineTuneManager) -> None:
    decision = schedule.scheduled_tick(manager, datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    assert decision["decision"] == "started"
    run = manager.get(decision["runId"])
    assert run.triggered_by == "scheduled" and run.status == "pending"
    status = schedule.schedule_status(manager.settings, manager.redis)
    assert status["lastDecision"]["runId"] == run.id


def test_tick_during_an_active_run_does_nothing(manager: FineTuneManager) -> None:
    active = manager.start({}, triggered_by="api")
    decision = schedule.scheduled_tick(manager, datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    assert decision["decision"] == "skipped" and active.id in decision["reason"]
    runs, total = manager.list()
    assert total == 1


def test_only_new_traces_since_the_last_completed_run_count(manager: FineTuneManager) -> None:
    # every demo trace is older than this completed run
    _completed_run(manager, datetime(2027, 1, 1, tzinfo=UTC))
    decision = schedule.scheduled_tick(manager, datetime(2027, 1, 2, 2, 0, tzinfo=UTC))
    assert decision["decision"] == "skipped"
    assert "only 0 new traces" in decision["reason"] and "need 10" in decision["reason"]
    fresh = [
        Trace(
            id=f"new{i}",
            query=f"New question {i}?",
            final_answer="A",
            quality_score=9,
            created_at=(datetime(2027, 1, 1, 12, tzinfo=UTC) + timedelta(minutes=i)).isoformat(),
        )
        for i in range(10)
    ]
    manager.traces.add_many(fresh)
    decision = schedule.scheduled_tick(manager, datetime(2027, 1, 3, 2, 0, tzinfo=UTC))
    assert decision["decision"] == "started"


def test_two_beats_on_the_same_tick_decide_once(manager: FineTuneManager) -> None:
    tick = datetime(2026, 3, 1, 2, 0, 17, tzinfo=UTC)
    first = schedule.scheduled_tick(manager, tick)
    second = schedule.scheduled_tick(manager, tick + timedelta(seconds=20))
    assert first["decision"] == "started" and second["decision"] == "duplicate"


def test_disabled_scheduler_records_why(manager: FineTuneManager) -> None:
    manager.settings = manager.settings.replace(enabled=False)
    decision = schedule.scheduled_tick(manager)
    assert decision["decision"] == "skipped" and "FINETUNE_ENABLED=false" in decision["reason"]
    assert schedule.schedule_status(manager.settings, manager.redis)["nextFireTime"] is None


def test_next_fire_time_and_crontab_fields() -> None:
    after = datetime(2026, 2, 18, 12, 0, tzinfo=UTC)  # a Wednesday
    assert schedule.next_fire_time("0 2 * * 0", after) == datetime(2026, 2, 22, 2, 0, tzinfo=UTC)
    fields: dict[str, Any] = schedule.crontab_fields("*/15 3 1 * 1-5")
    assert fields == {
        "minute": "*/15",
        "hour": "3",
        "day_of_month": "1",
        "month_of_year": "*",
        "day_of_week": "1-5",
    }
    from celery.schedules import crontab

    crontab(**fields)  # celery accepts every field FINETUNE_SCHEDULE validation allows


def test_api_shows_the_schedule(manager: FineTuneManager) -> None:
    from app import create_app

    app = create_app(manager.settings, celery=manager.celery, redis_client=manager.redis)
    schedule.scheduled_tick(manager, datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    body = app.test_client().get("/api/finetune/schedule").get_json()
    assert body["schedule"] == "0 2 * * 0" and body["enabled"] is True
    assert datetime.fromisoformat(body["nextFireTime"]) > datetime.now(UTC)
    assert body["lastDecision"]["decision"] == "started"
