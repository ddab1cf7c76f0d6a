"""The Flask API. `create_app()` builds it; blueprints live one per module.

Never imports torch or the training stack: runs are handed to Celery by task name.

Redis connections per API process are bounded and do not grow with viewers: one pub/sub
connection for the progress relay (`tmde-api-relay`) plus a blocking pool of at most
REDIS_POOL_SIZE (`tmde-api`) for commands; a request waits for a free pooled connection rather
than opening another. The client names make them countable in `CLIENT LIST`.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask

from app.relay import Relay
from shared.db import Database
from shared.queue import make_celery
from shared.runs import FineTuneManager
from shared.settings import Settings
from shared.traces import TraceStore

MAX_REQUEST_BYTES = 64 * 1024  # run configs and tags are small; larger bodies get 413
REDIS_POOL_SIZE = 16
API_CLIENT_NAME = "tmde-api"
RELAY_CLIENT_NAME = "tmde-api-relay"


def create_app(
    settings: Settings | None = None, *, celery: Any = None, redis_client: Any = None
) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False
    db = Database(settings.database_url)
    app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": 4096}  # clients send nothing
    if redis_client is None:
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REDIS_POOL_SIZE,
            timeout=5,
            socket_timeout=5,
            client_name=API_CLIENT_NAME,
        )
        redis_client = redis.Redis(connection_pool=pool)

        def relay_connection() -> Any:
            return redis.Redis.from_url(
                settings.redis_url,
                client_name=RELAY_CLIENT_NAME,
                socket_connect_timeout=5,
                socket_keepalive=True,
                health_check_interval=30,
            )
    else:  # injected (tests: fakeredis): the relay listens through the same client

        def relay_connection() -> Any:
            return redis_client

    app.extensions["tmde.relay"] = Relay(relay_connection)
    app.extensions["tmde.settings"] = settings
    app.extensions["tmde.db"] = db
    app.extensions["tmde.redis"] = redis_client
    app.extensions["tmde.manager"] = FineTuneManager(
        settings=settings,
        db=db,
        traces=TraceStore(settings.traces_db_path),
        celery=celery or make_celery(settings, main="tmde-api"),
        redis=redis_client,
    )

    from app import adapters, auth, dashboard, errors, finetune, health, metrics, openapi, progress

    auth.init_app(app, token=settings.api_token, cors_origins=settings.cors_origins)
    app.register_blueprint(finetune.bp)
    app.register_blueprint(adapters.bp)
    app.register_blueprint(progress.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    errors.init_app(app)
    return app
