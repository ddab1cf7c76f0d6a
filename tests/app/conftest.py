"""Fixtures for the API tests, as in Flask's tutorial: `app` and `client`, built by one
`make_app` factory (an app on a migrated SQLite database, the memory broker and fakeredis;
keyword arguments change settings, `database_url=` or `redis_client=` replace the defaults).

`app_database_url` is the database the apps use; a module overrides it to run over SQLite and
PostgreSQL (tests/app/test_finetune_api.py). `feed_env` is an app with feed timings shortened
through the FEED_* app config, so heartbeats and grace periods take fractions of a second;
`feed_server` serves it on a real socket (websockets need one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from shared import migrate
from shared.settings import Settings
from shared.traces import TraceStore
from tests.app.feeds import FeedEnv


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis_client(fake_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fake_server)


@pytest.fixture
def app_database_url(settings: Settings) -> str:
    url = f"sqlite:///{settings.data_dir / 'app.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def make_app(
    settings: Settings, celery_app: Celery, redis_client: Any, app_database_url: str
) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []
    default_redis = redis_client

    def make(*, database_url: str | None = None, redis_client: Any = None, **changes: Any):
        app = create_app(
            settings.replace(database_url=database_url or app_database_url, **changes),
            celery=celery_app,
            redis_client=default_redis if redis_client is None else redis_client,
        )
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["tmde.relay"].close()
        app.extensions["tmde.db"].dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask], trace_store: TraceStore) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def feed_env(make_app: Callable[..., Flask], redis_client: fakeredis.FakeRedis) -> FeedEnv:
    app = make_app()
    app.config.update(
        FEED_HEARTBEAT_SECONDS=0.3,
        FEED_STATUS_CHECK_SECONDS=0.3,
        FEED_TERMINAL_GRACE_SECONDS=0.3,
    )
    app.extensions["tmde.relay"].poll_seconds = 0.05  # quick shutdown
    return FeedEnv(app, redis_client)


@pytest.fixture
def feed_server(feed_env: FeedEnv) -> Iterator[str]:
    """The feed_env app on 127.0.0.1 (werkzeug, threaded); yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, feed_env.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)
