"""Fixtures for the live-feed tests: an app on SQLite + fakeredis, optionally served over HTTP.

`feed_env` gives the app, its Redis, a publisher like the worker's and a helper that creates a
run row; `feed_server` serves the same app on a real socket (websockets need one). Feed timings
are shortened through the FEED_* app config so heartbeats and grace periods take fractions of
a second.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
from celery import Celery
from flask import Flask

from app import create_app
from shared import migrate
from shared.events import Emitter, RedisPublisher
from shared.models import FineTuneRun
from shared.queue import make_celery
from shared.runs import new_run_id
from shared.settings import Settings


@dataclass
class FeedEnv:
    app: Flask
    redis: fakeredis.FakeRedis

    def make_run(self, status: str = "running", **values: Any) -> str:
        run_id = new_run_id()
        with self.app.extensions["tmde.db"].session() as session:
            session.add(
                FineTuneRun(
                    id=run_id,
                    status=status,
                    triggered_by="api",
                    base_model="tiny",
                    config="{}",
                    **values,
                )
            )
        return run_id

    def finish(self, run_id: str, status: str = "completed", **values: Any) -> None:
        assert self.app.extensions["tmde.manager"].runs.finish(run_id, status, **values)

    def emitter(self, run_id: str) -> Emitter:
        return Emitter(run_id, [RedisPublisher(self.redis)])

    @property
    def relay(self) -> Any:
        return self.app.extensions["tmde.relay"]


@pytest.fixture
def feed_env(settings: Settings) -> Iterator[FeedEnv]:
    url = f"sqlite:///{settings.lora_output_dir.parent / 'feeds.db'}"
    migrate.upgrade(url)
    celery = make_celery(settings)
    celery.conf.update(broker_url="memory://", result_backend="cache+memory://")
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    app = create_app(settings.replace(database_url=url), celery=celery, redis_client=client)
    app.config.update(
        TESTING=True,
        FEED_HEARTBEAT_SECONDS=0.3,
        FEED_STATUS_CHECK_SECONDS=0.3,
        FEED_TERMINAL_GRACE_SECONDS=0.3,
    )
    app.extensions["tmde.relay"].poll_seconds = 0.05  # quick shutdown
    yield FeedEnv(app, client)
    app.extensions["tmde.relay"].close()
    app.extensions["tmde.db"].dispose()
    celery.close()


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


@pytest.fixture
def sqlite_app(settings: Settings, celery_app: Celery) -> Iterator[Callable[..., Flask]]:
    """A factory of apps on one migrated SQLite database (`settings.database_url` of the
    apps is `sqlite_app.database_url`), the memory broker and a fresh fakeredis; keyword
    arguments change settings, `redis_client=` replaces the fakeredis."""
    url = f"sqlite:///{settings.data_dir / 'app.db'}"
    migrate.upgrade(url)
    apps: list[Flask] = []

    def make(redis_client: Any = None, **changes: Any) -> Flask:
        app = create_app(
            settings.replace(database_url=url, **changes),
            celery=celery_app,
            redis_client=redis_client if redis_client is not None else fakeredis.FakeRedis(),
        )
        app.config["TESTING"] = True
        apps.append(app)
        return app

    make.database_url = url  # type: ignore[attr-defined]
    yield make
    for app in apps:
        app.extensions["tmde.db"].dispose()
