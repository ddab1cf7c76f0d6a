"""The Flask API. `create_app()` builds it; blueprints live one per module.

Never imports torch or the training stack: runs are handed to Celery by task name.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from shared.db import Database
from shared.queue import make_celery
from shared.runs import FineTuneManager
from shared.settings import Settings
from shared.traces import TraceStore

MAX_REQUEST_BYTES = 1 << 20


def create_app(
    settings: Settings | None = None, *, celery: Any = None, redis_client: Any = None
) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False
    db = Database(settings.database_url)
    redis_client = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=5)
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

    from app import finetune, health, progress

    app.register_blueprint(finetune.bp)
    app.register_blueprint(progress.bp)
    app.register_blueprint(health.bp)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        return jsonify(error=exc.description or exc.name), exc.code

    return app
