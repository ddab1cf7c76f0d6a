"""The Celery app of the workers: queues, routes and process signals.

    celery -A worker.celery_app worker -Q export          # CPU worker
    celery -A worker.celery_app worker -Q train -c 1 --max-tasks-per-child 1   # GPU worker
    celery -A worker.celery_app beat                      # the schedule (one per deployment)

(`tmde-finetune worker` runs the same with the right flags.) Configuration comes from
shared/queue.py so the API, which only sends tasks, agrees with it.
"""

from __future__ import annotations

import logging
import os
import socket

import redis
from celery.schedules import crontab
from celery.signals import (
    after_setup_logger,
    worker_process_init,
    worker_ready,
    worker_shutting_down,
)

from shared.names import TASK_QUEUES, TASK_SCHEDULED_CHECK, TASK_WATCHDOG, worker_stopping_key
from shared.queue import make_celery
from shared.schedule import crontab_fields
from shared.settings import Settings

WATCHDOG_INTERVAL_SECONDS = 10.0
STOPPING_TTL_SECONDS = 3600  # the marker outlives any stop grace period, then goes

settings = Settings.from_env()
app = make_celery(settings, main="tmde")
app.conf.include = ["worker.tasks"]
# celery-beat (`tmde-finetune beat`). A tick that could not be delivered within 5 minutes
# expires instead of firing late, so downtime never releases a burst of missed ticks.
app.conf.beat_schedule = {
    "finetune-scheduled-check": {
        "task": TASK_SCHEDULED_CHECK,
        "schedule": crontab(**crontab_fields(settings.schedule)),
        "options": {"expires": 300, "queue": TASK_QUEUES[TASK_SCHEDULED_CHECK]},
    },
    "finetune-watchdog": {
        "task": TASK_WATCHDOG,
        "schedule": WATCHDOG_INTERVAL_SECONDS,
        "options": {"expires": WATCHDOG_INTERVAL_SECONDS, "queue": TASK_QUEUES[TASK_WATCHDOG]},
    },
}


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # A pool child must not reuse the parent's database pool or Redis sockets.
    from worker.runtime import reset_after_fork

    reset_after_fork()
    logging.getLogger().setLevel(logging.INFO)
    _preload_unsloth()


@worker_shutting_down.connect
def _hand_over_training(**_: object) -> None:
    """SIGTERM (docker stop, a deploy): Celery lets the running task finish, and a training task
    would outlast the stop grace period and be killed. This marker makes it save a checkpoint
    at its next step and hand the run to the next train worker (worker/pipeline.py)."""
    _stopping_marker(lambda client, key: client.set(key, "1", ex=STOPPING_TTL_SECONDS))


@worker_ready.connect
def _clear_stale_marker(**_: object) -> None:
    # A restarted container has the same host name and pid (1) as the one that stopped.
    _stopping_marker(lambda client, key: client.delete(key))


def _stopping_marker(action) -> None:  # noqa: ANN001 - (Redis, key) -> Any
    key = worker_stopping_key(socket.gethostname(), os.getpid())
    try:
        action(redis.Redis.from_url(settings.redis_url, socket_timeout=5), key)
    except redis.RedisError as exc:
        logging.getLogger(__name__).warning("could not update %s: %s", key, exc)


def _preload_unsloth() -> None:
    """Unsloth patches transformers when imported and warns if that happens after transformers
    is loaded: import it first in a training child that will use it (never in the parent)."""
    import importlib.util

    if settings.backend not in ("auto", "unsloth") or importlib.util.find_spec("unsloth") is None:
        return
    from worker.training.backends import resolve_backend

    if resolve_backend(settings.backend) == "unsloth":
        import unsloth  # noqa: F401


@after_setup_logger.connect
def _log_format(logger: logging.Logger, **_: object) -> None:
    """LOG_FORMAT for the worker's own handlers; every line carries the run id."""
    from shared.logs import configure

    configure(settings.log_format, logger.level or logging.INFO)
