"""Per-process handles for tasks: settings, database, Redis, run store, event emitters.

Created lazily in the process that runs the task and dropped after a fork, so a pool child
never shares a parent's database connections or sockets.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from shared.db import Database
from shared.events import Emitter, RedisPublisher, file_sink
from shared.names import cancel_key, worker_stopping_key
from shared.runs import FineTuneManager, RunStore
from shared.settings import Settings
from shared.traces import TraceStore


@dataclass
class Runtime:
    settings: Settings
    db: Database
    redis: redis.Redis
    runs: RunStore

    def emitter(self, run_id: str, *, log_path: Path | None = None) -> Emitter:
        sinks = [self.runs.record_event, self.runs.heartbeat_sink(), RedisPublisher(self.redis)]
        if log_path is not None:
            sinks.append(file_sink(log_path))
        return Emitter(run_id, sinks)

    def manager(self, celery: Any) -> FineTuneManager:
        """A FineTuneManager for tasks that start runs (the scheduled check)."""
        return FineTuneManager(
            self.settings, self.db, TraceStore(self.settings.traces_db_path), celery, self.redis
        )

    def cancel_requested(self, run_id: str) -> bool:
        try:
            return bool(self.redis.exists(cancel_key(run_id)))
        except redis.RedisError:
            logging.getLogger(__name__).warning("Redis unreachable; checking cancel in the DB")
            return self.runs.get(run_id).cancel_requested

    def worker_stopping(self) -> bool:
        """True once the worker running this task shuts down: its main process is this one
        (solo pool) or the parent of this pool child."""
        host = socket.gethostname()
        keys = (worker_stopping_key(host, os.getppid()), worker_stopping_key(host, os.getpid()))
        try:
            return bool(self.redis.exists(*keys))
        except redis.RedisError:  # Redis gone: the worker's SIGKILL and the watchdog still resume
            return False


@functools.cache
def runtime() -> Runtime:
    settings = Settings.from_env()
    db = Database(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    return Runtime(settings=settings, db=db, redis=client, runs=RunStore(db))


def reset_after_fork() -> None:
    """Drop handles inherited from a parent process (engine pool, Redis sockets)."""
    if runtime.cache_info().currsize:
        rt = runtime()
        rt.db.engine.dispose(close=False)
    runtime.cache_clear()
