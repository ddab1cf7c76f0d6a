"""The Celery app of the workers: queues, routes and process signals.

    celery -A worker.celery_app worker -Q export          # CPU worker
    celery -A worker.celery_app worker -Q train -c 1 --max-tasks-per-child 1   # GPU worker

(`tmde-finetune worker` runs the same with the right flags.) Configuration comes from
shared/queue.py so the API, which only sends tasks, agrees with it.
"""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from shared.queue import make_celery
from shared.settings import Settings

app = make_celery(Settings.from_env(), main="tmde")
app.conf.include = ["worker.tasks"]


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # A pool child must not reuse the parent's database pool or Redis sockets.
    from worker.runtime import reset_after_fork

    reset_after_fork()
    logging.getLogger().setLevel(logging.INFO)
