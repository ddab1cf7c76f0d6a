"""Real components: a Redis server, a Celery worker process, the API over real HTTP.

Redis: the one at TEST_REDIS_URL (default redis://127.0.0.1:6379/15), else an embedded
redis-server started for the session (the same fallback `make demo` uses).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shared.settings import Settings
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]


def _settings_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "TRACES_DB_PATH": str(settings.traces_db_path),
        "REDIS_URL": settings.redis_url,
        "LORA_OUTPUT_DIR": str(settings.lora_output_dir),
        "FINETUNE_TEMP_DIR": str(settings.temp_dir),
        "FINETUNE_LOG_DIR": str(settings.log_dir),
        "MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "FINETUNE_MIN_TRACES": str(settings.min_traces),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from shared.demo import redis_answers, start_embedded_redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    process = None
    if not redis_answers(url):
        process, url = start_embedded_redis(tmp_path_factory.mktemp("redis"))
        url = url.rsplit("/", 1)[0] + "/15"
    redis.Redis.from_url(url).flushdb()
    yield url
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Service:
    settings: Settings
    base_url: str
    redis: redis.Redis
    worker: subprocess.Popen


@pytest.fixture
def service(tmp_path: Path, redis_url: str, migrated_url: str, trace_store) -> Iterator[Service]:
    """API (werkzeug, threaded, real sockets) + one Celery worker process on both queues."""
    from werkzeug.serving import make_server

    from app import create_app

    settings = make_settings(tmp_path, redis_url=redis_url, database_url=migrated_url)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "worker",
            "--queues",
            "export,train",
            "--name",
            f"test-{uuid.uuid4().hex[:8]}@%h",
            "--loglevel",
            "INFO",
        ],
        cwd=REPO,
        env=_settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _wait_for_worker(tmp_path / "worker.log", worker)
    try:
        yield Service(settings, f"http://127.0.0.1:{server.server_port}", client, worker)
    finally:
        server.shutdown()
        os.killpg(worker.pid, 15)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait()
        log.close()


def _wait_for_worker(log_path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log_path.read_text()}")
        if " ready." in log_path.read_text():
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready:\n{log_path.read_text()}")
