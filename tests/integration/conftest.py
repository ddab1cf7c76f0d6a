"""Real components: a Redis server, a Celery worker process, the API over real HTTP.

Redis: the one at TEST_REDIS_URL (default redis://127.0.0.1:6379/<8-15>), else an embedded
redis-server started for the session (the same fallback `make demo` uses).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.names import QUEUES, progress_channel
from shared.settings import Settings
from tests.helpers import make_settings

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
        "FINETUNE_PROBE_PROMPTS": str(settings.probe_prompts),
        "FINETUNE_PROBE_MAX_NEW_TOKENS": str(settings.probe_max_new_tokens),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from worker.demo import redis_answers, start_embedded_redis

    # Celery queues live in the database number, so concurrent test sessions on one Redis
    # pick different numbers (8-15; 0-7 are left to people and `make demo`).
    url = os.environ.get("TEST_REDIS_URL", f"redis://127.0.0.1:6379/{8 + os.getpid() % 8}")
    process = None
    if not redis_answers(url):
        process, url = start_embedded_redis(tmp_path_factory.mktemp("redis"))
        url = url.rsplit("/", 1)[0] + "/8"
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


def start_worker(
    settings: Settings, log_path: Path, queues: str = ",".join(QUEUES), **extra_env: str
) -> subprocess.Popen:
    """A real Celery worker process (prefork, its own session so it can be killed whole)."""
    log = open(log_path, "a")  # noqa: SIM115 - the child keeps it; closed when it exits
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "worker",
            "--queues",
            queues,
            "--name",
            f"test-{uuid.uuid4().hex[:8]}@%h",
            "--loglevel",
            "INFO",
        ],
        cwd=REPO,
        env={**_settings_env(settings), **extra_env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    _wait_for_worker(log_path, process)
    return process


def stop_worker(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def service(tmp_path: Path, redis_url: str, migrated_url: str, trace_store) -> Iterator[Service]:
    """API (werkzeug, threaded, real sockets) + one Celery worker process on both queues."""
    from werkzeug.serving import make_server

    from app import create_app

    settings = make_settings(tmp_path, redis_url=redis_url, database_url=migrated_url)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    worker = start_worker(settings, tmp_path / "worker.log")
    service = Service(settings, f"http://127.0.0.1:{server.server_port}", client, worker)
    try:
        yield service
    finally:
        server.shutdown()
        stop_worker(service.worker)


def _wait_for_worker(log_path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log_path.read_text()}")
        if " ready." in log_path.read_text():
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready:\n{log_path.read_text()}")


class EventLog:
    """Collects runs' events from Redis in a background thread. Pub/sub channels are global to
    a Redis server (not per database), so events are filtered by this test's run id."""

    def __init__(self, service: Service) -> None:
        self.run_id: str | None = None
        self.all_events: list[dict] = []
        self.pubsub = service.redis.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(progress_channel("*"))
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            for message in self.pubsub.listen():
                if message["type"] == "pmessage":
                    self.all_events.append(json.loads(message["data"]))
        except (redis.ConnectionError, ValueError):
            return  # the test's Redis went away (a restart test, or the session's end)

    @property
    def events(self) -> list[dict]:
        return [e for e in list(self.all_events) if e.get("run_id") == self.run_id]

    def wait_for(self, predicate, timeout: float = 180) -> dict:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            time.sleep(0.1)
        raise TimeoutError(f"no matching event; saw {[e['type'] for e in self.events]}")


@pytest.fixture
def page() -> Iterator[Any]:
    """A page of a real headless Chromium (tests/integration/browser.py)."""
    from tests.integration.browser import open_page

    yield from open_page()
