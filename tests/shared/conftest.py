"""Fixtures for the run-management tests: a FineTuneManager on SQLite and PostgreSQL with
fakeredis and the memory broker (the helpers they use live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from celery import Celery

from shared.db import Database
from shared.runs import FineTuneManager
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
