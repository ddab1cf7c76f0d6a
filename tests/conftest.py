"""Shared fixtures.

- `settings`: Settings pointing every path into a temporary folder.
- `database_url`: parametrised over SQLite and PostgreSQL (127.0.0.1:5432, database `test`);
  each PostgreSQL test gets its own schema, dropped afterwards.
- `migrated_url`: the same, with the migrations applied.
- `trace_store`: a TraceStore with the synthetic demo traces.
- `tiny_model`: a tiny random Llama + tokenizer, built once per session.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.helpers import drain, make_settings, memory_celery

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
        return
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    # libpq `options` puts every connection of this test into its own schema.
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def migrated_url(database_url: str) -> str:
    from shared import migrate

    migrate.upgrade(database_url)
    return database_url


@pytest.fixture
def trace_store(settings: Settings):
    from shared.demo_traces import generate
    from shared.traces import TraceStore

    store = TraceStore(settings.traces_db_path)
    store.add_many(generate(120))
    return store


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shared.demo_traces import generate
    from tests.tiny_model import build_tiny_model

    texts = [t.query + " " + t.final_answer for t in generate(200)]
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts)


@pytest.fixture
def celery_app(settings: Settings):  # type: ignore[no-untyped-def]
    from shared.names import QUEUE_EXPORT, QUEUE_TRAIN

    app = memory_celery(settings)
    for name in (QUEUE_EXPORT, QUEUE_TRAIN):
        drain(app, name)
    yield app
    for name in (QUEUE_EXPORT, QUEUE_TRAIN):
        drain(app, name)
    app.close()
