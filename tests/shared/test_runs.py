"""FineTuneManager on SQLite and PostgreSQL: start (single flight, data checks, queueing) and
cancel. Fixtures are in tests/shared/conftest.py."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from celery import Celery
from sqlalchemy.exc import IntegrityError

from shared import queue as queue_module
from shared.db import Database
from shared.errors import InsufficientDataError
from shared.events import latest_event
from shared.models import FineTuneRun
from shared.names import (
    QUEUE_EXPORT,
    QUEUE_TRAIN,
    TASK_EVALUATE,
    TASK_EXPORT,
    TASK_SCHEDULED_CHECK,
    TASK_TRAIN,
    ExitCode,
    cancel_key,
    progress_channel,
)
from shared.run_config import ConfigError
from shared.runs import (
    FineTuneManager,
    RunConflictError,
    RunNotFoundError,
)
from shared.settings import Settings
from shared.traces import TraceStore
from tests.helpers import drain, insert_run, next_message

# --- start -------------------------------------------------------------------------------------


def test_start_records_a_pending_run_and_queues_the_pipeline(
    manager: FineTuneManager, celery_app: Celery
) -> None:
    assert not manager.is_running()
    run = manager.start({"loraRank": 8, "maxSteps": 5}, triggered_by="api")

    assert run.id.startswith("run_")
    assert run.status == "pending"
    assert run.active_slot == 1
    assert run.triggered_by == "api"
    assert run.base_model == manager.settings.base_model
    assert run.backend == manager.settings.backend
    assert run.config_dict()["loraRank"] == 8
    assert run.config_dict()["maxSteps"] == 5
    assert run.config_dict()["epochs"] == manager.settings.epochs
    assert run.log_path == str(manager.settings.log_dir / f"{run.id}.log")
    assert run.started_at is not None and run.completed_at is None
    assert manager.is_running() and manager.active_run().id == run.id

    task_ids = json.loads(run.task_ids)
    assert len(task_ids) == 3 and len(set(task_ids)) == 3

    # The chain goes out as one message on the export queue, carrying train and evaluate.
    (message,) = drain(celery_app, QUEUE_EXPORT)
    assert drain(celery_app, QUEUE_TRAIN) == []
    assert message.headers["task"] == TASK_EXPORT
    assert message.headers["id"] == task_ids[0]
    assert message.delivery_info["routing_key"] == QUEUE_EXPORT
    args, kwargs, embed = message.payload
    assert args == [run.id] and kwargs == {}
    rest = list(reversed(embed["chain"]))  # Celery stores the rest of a chain reversed
    assert [step["task"] for step in rest] == [TASK_TRAIN, TASK_EVALUATE]
    assert [step["options"]["queue"] for step in rest] == [QUEUE_TRAIN, QUEUE_TRAIN]
    assert [step["options"]["task_id"] for step in rest] == task_ids[1:]
    assert all(step["args"] == [run.id] and step["immutable"] for step in rest)


def test_enqueue_pipeline_alone(settings: Settings, celery_app: Celery) -> None:
    ids = queue_module.enqueue_pipeline(celery_app, "run_0123456789ab")
    (message,) = drain(celery_app, QUEUE_EXPORT)
    assert message.headers["id"] == ids[0]
    assert message.headers["argsrepr"] == "('run_0123456789ab',)"


def test_celery_config_routes_tasks_to_their_queues(settings: Settings) -> None:
    config = queue_module.celery_config(settings)
    assert config["broker_url"] == settings.redis_url
    routes = config["task_routes"]
    assert routes[TASK_EXPORT] == {"queue": QUEUE_EXPORT}
    assert routes[TASK_TRAIN] == routes[TASK_EVALUATE] == {"queue": QUEUE_TRAIN}
    # control tasks (beat ticks) never wait behind a training run
    assert routes[TASK_SCHEDULED_CHECK] == {"queue": QUEUE_EXPORT}
    assert config["task_acks_late"] is False and config["worker_prefetch_multiplier"] == 1
    assert config["accept_content"] == ["json"]


def test_second_start_conflicts(manager: FineTuneManager, celery_app: Celery) -> None:
    first = manager.start(None)
    drain(celery_app, QUEUE_EXPORT)
    with pytest.raises(RunConflictError) as info:
        manager.start({})
    assert info.value.run_id == first.id
    assert "already in progress" in str(info.value)
    assert drain(celery_app, QUEUE_EXPORT) == []  # nothing queued for the refused run
    assert manager.list()[1] == 1
    assert manager.runs.claim(first.id)  # a running run blocks a start as well
    with pytest.raises(RunConflictError):
        manager.start(None)


def test_losing_the_slot_race_is_a_conflict(
    manager: FineTuneManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes both see no active run; the UNIQUE slot lets only one insert."""
    first = manager.start(None)
    real = FineTuneManager.active_run
    calls = []

    def stale_then_real(self: FineTuneManager) -> FineTuneRun | None:
        calls.append(1)
        return None if len(calls) == 1 else real(self)  # the first look misses the winner

    monkeypatch.setattr(FineTuneManager, "active_run", stale_then_real)
    with pytest.raises(RunConflictError) as info:
        manager.start(None)
    assert isinstance(info.value.__cause__, IntegrityError)
    assert info.value.run_id == first.id
    assert manager.list()[1] == 1


def test_bad_config_is_refused_before_anything_is_written(manager: FineTuneManager) -> None:
    with pytest.raises(ConfigError) as info:
        manager.start({"loraRank": 0, "nope": 1})
    assert set(info.value.errors) == {"loraRank", "nope"}
    assert manager.list() == ([], 0)


def test_too_few_traces(
    run_settings: Settings, trace_store: TraceStore, celery_app: Celery, redis_client: Any
) -> None:
    candidates = trace_store.get_stats(run_settings.min_quality).fine_tune_candidates
    settings = run_settings.replace(min_traces=candidates + 1)
    db = Database(settings.database_url)
    try:
        manager = FineTuneManager(settings, db, trace_store, celery_app, redis_client)
        with pytest.raises(InsufficientDataError) as info:
            manager.start(None)
        assert info.value.current == candidates
        assert info.value.required == candidates + 1
        assert info.value.exit_code == ExitCode.INSUFFICIENT_DATA == 2
        assert f"need {candidates + 1}, have {candidates}" in info.value.message
        # the run's own minQualityScore decides what counts
        with pytest.raises(InsufficientDataError) as info:
            manager.start({"minQualityScore": 10})
        assert info.value.current < candidates
        assert manager.list() == ([], 0)
        assert drain(celery_app, QUEUE_EXPORT) == []
        # exactly enough is enough
        manager.settings = settings.replace(min_traces=candidates)
        assert manager.start(None).status == "pending"
    finally:
        db.dispose()


def test_missing_trace_database_means_no_data(
    run_settings: Settings, celery_app: Celery, redis_client: Any, tmp_path
) -> None:  # noqa: ANN001
    db = Database(run_settings.database_url)
    try:
        store = TraceStore(tmp_path / "absent" / "traces.db")
        manager = FineTuneManager(run_settings, db, store, celery_app, redis_client)
        with pytest.raises(InsufficientDataError) as info:
            manager.start(None)
        assert (info.value.current, info.value.required) == (0, run_settings.min_traces)
    finally:
        db.dispose()


def test_queue_failure_fails_the_run_and_frees_the_slot(
    manager: FineTuneManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(app: Any, run_id: str) -> list[str]:
        raise ConnectionError("Error 111 connecting to redis")

    monkeypatch.setattr(queue_module, "enqueue_pipeline", broken)
    with pytest.raises(ConnectionError):
        manager.start(None)
    (run,), total = manager.list()
    assert total == 1
    assert run.status == "failed" and run.active_slot is None
    assert run.error_code == "GENERAL"
    assert "Could not queue the run" in run.error_message
    assert "Error 111" in run.error_message
    assert not manager.is_running()


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_pending_run(
    manager: FineTuneManager, redis_client: Any, revoked: list[str], celery_app: Celery
) -> None:
    run = manager.start(None)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(progress_channel(run.id))

    cancelled = manager.cancel(run.id)
    assert cancelled.status == "cancelled"
    assert cancelled.active_slot is None
    assert cancelled.completed_at is not None
    assert cancelled.cancel_requested is True
    assert cancelled.error_code == "CANCELLED"
    assert cancelled.error_message == "Cancelled before it started"
    assert revoked == json.loads(run.task_ids)
    assert abs(float(redis_client.get(cancel_key(run.id))) - time.time()) < 60

    message = next_message(pubsub)
    assert message is not None
    event = json.loads(message["data"])
    assert event["type"] == "cancelled" and event["status"] == "cancelled"
    assert event["run_id"] == run.id
    assert latest_event(redis_client, run.id)["type"] == "cancelled"
    pubsub.close()

    # the slot is free: a new run starts
    drain(celery_app, QUEUE_EXPORT)
    assert not manager.is_running()
    assert manager.start(None).status == "pending"


def test_cancel_running_run_requests_it(
    manager: FineTuneManager, redis_client: Any, revoked: list[str]
) -> None:
    run = manager.start(None)
    assert manager.runs.claim(run.id)
    result = manager.cancel(run.id)
    assert result.status == "running"
    assert result.cancel_requested is True
    assert result.active_slot == 1  # still active until the worker stops
    assert abs(float(redis_client.get(cancel_key(run.id))) - time.time()) < 60
    assert 0 < redis_client.ttl(cancel_key(run.id)) <= 7 * 24 * 3600
    assert revoked == []
    assert latest_event(redis_client, run.id) is None  # the worker reports the cancellation
    with pytest.raises(RunConflictError):
        manager.start(None)


def test_cancel_finished_or_unknown_run(manager: FineTuneManager) -> None:
    for status in ("completed", "failed", "cancelled"):
        run_id = insert_run(manager, status)
        with pytest.raises(RunConflictError) as conflict:
            manager.cancel(run_id)
        assert conflict.value.run_id == run_id
        assert f"already {status}" in str(conflict.value)
        assert manager.get(run_id).cancel_requested is False
    with pytest.raises(RunNotFoundError) as info:
        manager.cancel("run_000000000000")
    assert info.value.run_id == "run_000000000000"


def test_claim_refuses_a_run_whose_cancel_was_requested(
    manager: FineTuneManager, revoked: list[str]
) -> None:
    """A worker racing a cancel must not leave the run `running` with nobody working on it."""
    run = manager.start(None)
    manager.runs.update(run.id, cancel_requested=True)  # cancel() has got this far
    assert manager.runs.claim(run.id) is False
    assert manager.get(run.id).status == "pending"
    assert manager.cancel(run.id).status == "cancelled"
    assert not manager.is_running()
