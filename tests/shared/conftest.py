"""Fixtures for the run-management tests: a FineTuneManager on SQLite and PostgreSQL with
fakeredis and the memory broker, and helpers to insert runs and read pub/sub messages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from celery import Celery

from shared.db import Database
from shared.models import FineTuneRun
from shared.runs import (
    FineTuneManager,
    new_run_id,
)
from shared.settings import Settings
from shared.traces import TraceStore


@pytest.fixture
def redis_client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def run_settings(settings: Settings, migrated_url: str) -> Settings:
    return settings.replace(database_url=migrated_url)


@pytest.fixture
def manager(
    run_settings: Settings, trace_store: TraceStore, celery_app: Celery, redis_client: Any
) -> Iterator[FineTuneManager]:
    db = Database(run_settings.database_url)
    yield FineTuneManager(run_settings, db, trace_store, celery_app, redis_client)
    db.dispose()


@pytest.fixture
def revoked(manager: FineTuneManager, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Task ids passed to celery.control.revoke (the memory broker has no worker to ask)."""
    ids: list[str] = []
    monkeypatch.setattr(manager.celery.control, "revoke", lambda task_id, **kw: ids.append(task_id))
    return ids


def insert_run(manager: FineTuneManager, status: str, **values: Any) -> str:
    run_id = new_run_id()
    with manager.db.session() as session:
        session.add(FineTuneRun(id=run_id, status=status, base_model="m", config="{}", **values))
    return run_id


def next_message(pubsub: Any, timeout: float = 2.0) -> dict | None:
    """The next published message (redis-py answers None for an ignored subscribe reply)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    return None
