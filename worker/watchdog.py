"""The watchdog (seed §9.3, adapted): runs whose heartbeat stopped are killed, resumed or failed.

A working step (export, training, evaluation) refreshes `finetune_runs.heartbeat_at` on every
event it emits, at least every 10 s while training. A beat task calls `reap()` every few
seconds; a run whose heartbeat is older than FINETUNE_HEARTBEAT_TIMEOUT is one of:

- hung: its task is still active on a live worker. The task is terminated (SIGKILL through
  Celery's revoke, which reaches the worker wherever it runs) and the run fails with `HUNG`.
- lost: no live worker has its task (the worker was killed, the machine lost). A training
  run with a checkpoint is resumed from it by the next `train` worker, at most
  MAX_RESUMES times; an evaluation is re-queued (its staged adapter is complete); anything else
  fails with `WORKER_LOST` and the reason.

Because the training task is acknowledged early, the broker never re-delivers it: only the
watchdog re-queues, and only after checking that no worker is still running it, so a run is
never trained twice at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery, chain
from sqlalchemy import select

from shared.models import FineTuneRun, utcnow
from shared.names import (
    PHASE_EVALUATING,
    PHASE_QUEUED,
    PHASE_TRAINING,
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_RUNNING,
    TASK_EVALUATE,
    TASK_QUEUES,
    TASK_TRAIN,
    WORKING_PHASES,
    ErrorCode,
    cancel_key,
)
from worker.runtime import Runtime
from worker.training.artifacts import RunPaths
from worker.training.stages import resume_point

log = logging.getLogger(__name__)

MAX_RESUMES = 3
CANCEL_GRACE_SECONDS = 30.0
INSPECT_TIMEOUT_SECONDS = 2.0


def stale_runs(rt: Runtime) -> list[FineTuneRun]:
    cutoff = utcnow() - timedelta(seconds=rt.settings.heartbeat_timeout)
    with rt.db.session() as session:
        return list(
            session.scalars(
                select(FineTuneRun).where(
                    FineTuneRun.status == STATUS_RUNNING,
                    FineTuneRun.phase.in_(WORKING_PHASES),
                    FineTuneRun.heartbeat_at < cutoff,
                )
            )
        )


def active_task_ids(celery: Celery) -> set[str] | None:
    """Ids of tasks running on any live worker; None when no worker answered at all."""
    replies = celery.control.inspect(timeout=INSPECT_TIMEOUT_SECONDS).active()
    if replies is None:
        return None
    return {task["id"] for tasks in replies.values() for task in tasks}


def requeue(
    celery: Celery,
    rt: Runtime,
    run: FineTuneRun,
    names: tuple[str, ...],
    *,
    count_as_resume: bool = True,
) -> list[str]:
    """Queue `names` for `run` again as one chain; a train step resumes from the newest
    checkpoint. `count_as_resume`: a lost worker counts toward MAX_RESUMES; a worker that
    stopped cleanly (SIGTERM) and handed the run over does not."""
    ids = [str(uuid.uuid4()) for _ in names]
    rt.runs.update(
        run.id,
        phase=PHASE_QUEUED,
        attempts=run.attempts + int(count_as_resume),
        heartbeat_at=utcnow(),
        current_task_id=None,
    )
    steps = [
        celery.signature(name, args=(run.id,), immutable=True, queue=TASK_QUEUES[name]).set(
            task_id=task_id
        )
        for name, task_id in zip(names, ids, strict=True)
    ]
    chain(*steps).apply_async()
    return ids


def _fail(rt: Runtime, run: FineTuneRun, code: ErrorCode, message: str) -> None:
    if rt.runs.finish(run.id, STATUS_FAILED, error_code=code, error_message=message):
        rt.emitter(run.id, log_path=Path(run.log_path) if run.log_path else None).emit(
            "error", code=code, message=message, status=STATUS_FAILED
        )


def handle_stale(rt: Runtime, celery: Celery, run: FineTuneRun, active: set[str]) -> dict:
    age = int((utcnow() - run.heartbeat_at).total_seconds()) if run.heartbeat_at else None
    silence = f"no heartbeat for {age} s while {run.phase}"
    if run.current_task_id and run.current_task_id in active:
        celery.control.revoke(run.current_task_id, terminate=True, signal="SIGKILL")
        _fail(rt, run, ErrorCode.HUNG, f"The trainer hung ({silence}) and was terminated")
        return {"runId": run.id, "action": "killed"}
    paths = RunPaths(rt.settings.lora_output_dir, run.id)
    if run.attempts >= MAX_RESUMES:
        _fail(
            rt, run, ErrorCode.WORKER_LOST, f"Worker lost ({silence}) after {run.attempts} resumes"
        )
        return {"runId": run.id, "action": "failed"}
    if run.phase == PHASE_TRAINING and resume_point(paths.checkpoint_dir):
        requeue(celery, rt, run, (TASK_TRAIN, TASK_EVALUATE))
        log.warning("run %s: worker lost (%s); resuming from its last checkpoint", run.id, silence)
        return {"runId": run.id, "action": "resumed"}
    if run.phase == PHASE_EVALUATING and (paths.staging_dir / "metrics.json").is_file():
        requeue(celery, rt, run, (TASK_EVALUATE,))
        return {"runId": run.id, "action": "re-evaluating"}
    _fail(
        rt, run, ErrorCode.WORKER_LOST, f"Worker lost ({silence}) and no checkpoint to resume from"
    )
    return {"runId": run.id, "action": "failed"}


def overdue_cancels(rt: Runtime, now: float | None = None) -> list[FineTuneRun]:
    """Running runs whose cancel was asked more than CANCEL_GRACE_SECONDS ago."""
    now = time.time() if now is None else now
    with rt.db.session() as session:
        asked = session.scalars(
            select(FineTuneRun).where(
                FineTuneRun.status == STATUS_RUNNING, FineTuneRun.cancel_requested.is_(True)
            )
        ).all()
    overdue = []
    for run in asked:
        raw = rt.redis.get(cancel_key(run.id))
        if raw is not None and now - float(raw) > CANCEL_GRACE_SECONDS:
            overdue.append(run)
    return overdue


def terminate_cancelled(rt: Runtime, celery: Celery, run: FineTuneRun) -> dict[str, Any]:
    """A trainer that did not stop at its next step within the grace period is terminated
    (SIGKILL via revoke: prefork pool children ignore SIGINT) and the run is cancelled."""
    if run.current_task_id:
        celery.control.revoke(run.current_task_id, terminate=True, signal="SIGKILL")
    RunPaths(rt.settings.lora_output_dir, run.id).discard()
    if rt.runs.finish(
        run.id,
        STATUS_CANCELLED,
        error_code=ErrorCode.CANCELLED,
        error_message="Cancelled; terminated after the grace period",
    ):
        rt.emitter(run.id).emit(
            "cancelled", status=STATUS_CANCELLED, message="terminated after the cancel grace period"
        )
    return {"runId": run.id, "action": "terminated"}


def reap(rt: Runtime, celery: Celery) -> list[dict[str, Any]]:
    """One watchdog pass: overdue cancels first, then runs whose heartbeat stopped."""
    actions = [terminate_cancelled(rt, celery, run) for run in overdue_cancels(rt)]
    stale = stale_runs(rt)
    if stale:
        active = active_task_ids(celery) or set()
        actions += [handle_stale(rt, celery, run, active) for run in stale]
    return actions
