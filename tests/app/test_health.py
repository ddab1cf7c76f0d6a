"""/healthz and /readyz on SQLite and PostgreSQL, and the API's promise never to import torch."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.queue import make_celery
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    app = make_celery(settings)
    app.conf.update(broker_url="memory://", result_backend="cache+memory://")
    yield app
    app.close()


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_healthy(make_app: Any, migrated_url: str) -> None:
    app = make_app(database_url=migrated_url)
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_redis_unreachable_is_503(make_app: Any, database_url: str) -> None:
    client = redis.Redis(  # no retries: fail at once
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=2,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    app = make_app(database_url=database_url, redis_client=client)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "error: ConnectionError"


def test_database_unreachable_is_503(make_app: Any) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test?connect_timeout=2"
    app = make_app(database_url=url)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["database"].startswith("error: ")


def test_ready_needs_schema_at_head_and_a_worker(make_app: Any, database_url: str) -> None:
    app = make_app(database_url=database_url)
    body = app.test_client().get("/readyz").get_json()
    assert body["status"] == "degraded" and body["checks"]["redis"] == "ok"
    assert "db upgrade" in body["checks"]["database"]  # not migrated yet
    assert "no Celery worker" in body["checks"]["worker"]  # the memory broker has none


def test_ready_database_at_head(make_app: Any, migrated_url: str) -> None:
    app = make_app(database_url=migrated_url)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and response.get_json()["checks"]["database"] == "ok"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_api_never_imports_torch(tmp_path: Path) -> None:
    # First the plain import check, then build the app and serve a few requests.
    code = f"""
import app, sys; app.create_app; assert 'torch' not in sys.modules
import fakeredis
from app import create_app
from shared.settings import Settings
settings = Settings(database_url="sqlite:///{tmp_path / "runs.db"}",
                    traces_db_path=r"{tmp_path / "traces.db"}")
from shared import migrate
migrate.upgrade(settings.database_url)
app = create_app(settings, redis_client=fakeredis.FakeRedis())
client = app.test_client()
assert client.get("/api/finetune/config/default").status_code == 200
assert client.get("/healthz").status_code in (200, 503)
assert client.post("/api/finetune", json={{"config": {{"loraRank": 0}}}}).status_code == 400
assert client.post("/api/finetune", json={{}}).status_code == 422
assert client.get("/api/adapters").status_code == 200
assert client.get("/api/openapi.json").status_code == 200
assert b"tmde_runs" in client.get("/metrics").data
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft",
                                                              "trl", "worker"))
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
