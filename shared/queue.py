"""Celery configuration shared by the API (which only sends tasks) and the workers.

The API never imports `worker`: it sends tasks by name (shared/names.py) through a client app
built from the same configuration, so both sides agree on queues, serialisation and routing.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery, chain

from shared.names import QUEUE_EXPORT, TASK_EVALUATE, TASK_EXPORT, TASK_QUEUES, TASK_TRAIN
from shared.settings import Settings

# Training can run for hours. With Redis, an unacknowledged message is redelivered after the
# visibility timeout, so training tasks are acknowledged early (acks_late off) and the
# database, not the broker, decides whether a run resumes.
VISIBILITY_TIMEOUT_SECONDS = 24 * 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "task_default_queue": QUEUE_EXPORT,
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        "result_expires": 7 * 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
    }


def make_celery(settings: Settings, main: str = "tmde") -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


def enqueue_pipeline(app: Celery, run_id: str) -> list[str]:
    """Queue export -> train -> evaluate for `run_id`; return the three task ids.

    The ids are chosen here so that they can be stored on the run and revoked on cancel.
    Signatures are immutable: each task takes only the run id and reads the rest from the DB.
    """
    ids = [str(uuid.uuid4()) for _ in range(3)]
    steps = [
        app.signature(name, args=(run_id,), immutable=True, queue=TASK_QUEUES[name]).set(
            task_id=task_id
        )
        for name, task_id in zip((TASK_EXPORT, TASK_TRAIN, TASK_EVALUATE), ids, strict=True)
    ]
    chain(*steps).apply_async()
    return ids
