"""Celery tasks: thin wrappers that take a run id and call a pipeline step.

Arguments are run ids only (never datasets or secrets), so Flower shows short, safe calls.
The training task also reports a `PROGRESS` state (step, total, loss) for Flower and for any
`AsyncResult` reader, from the same events the pipeline publishes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.events import ProgressEvent, context_sinks
from shared.names import (
    TASK_EVALUATE,
    TASK_EXPORT,
    TASK_EXPORT_GGUF,
    TASK_SCHEDULED_CHECK,
    TASK_TRAIN,
    TASK_WATCHDOG,
)
from worker import pipeline
from worker.celery_app import app

log = logging.getLogger(__name__)

PROGRESS_STATE = "PROGRESS"
PROGRESS_MIN_INTERVAL_SECONDS = 2.0  # result-backend writes and Flower events, at most this often


class TaskProgressSink:
    """Event sink bound to a running task: step events become its PROGRESS state.

    Throttled, because the result backend and Flower's event stream are not meant to take a
    write per optimizer step; the first step, evaluations and the last step always go out.
    Both channels: `update_state` (the result backend: `AsyncResult(id).info` has the meta)
    and a `task-progress` event, which Flower turns into state PROGRESS (its task list and
    /api/task/info). Flower shows only its own task fields, so the event also carries a
    one-line `result` ("step 12/300 loss 1.2345"); the real result replaces it on success.
    """

    def __init__(self, task: Any, min_interval: float = PROGRESS_MIN_INTERVAL_SECONDS) -> None:
        self.task = task
        self.min_interval = min_interval
        self._last_sent = float("-inf")
        self.meta: dict[str, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.type not in ("training_start", "progress", "eval"):
            return
        self.meta = {
            "run_id": event.run_id,
            "step": event.step or 0,
            "total": event.total_steps,
            "loss": event.loss if event.loss is not None else self.meta.get("loss"),
            "eval_loss": event.eval_loss
            if event.eval_loss is not None
            else self.meta.get("eval_loss"),
            "learning_rate": event.learning_rate,
            "eta_seconds": event.eta_seconds,
            "stage": event.stage or self.meta.get("stage"),
        }
        now = time.monotonic()
        last_step = event.total_steps is not None and event.step == event.total_steps
        if event.type == "progress" and not last_step and now - self._last_sent < self.min_interval:
            return
        self._last_sent = now
        self.task.update_state(state=PROGRESS_STATE, meta=self.meta)
        try:
            self.task.send_event("task-progress", result=self.describe(), **self.meta)
        except Exception:  # noqa: BLE001 - monitoring must never fail training
            log.debug("could not send a task-progress event", exc_info=True)

    def describe(self) -> str:
        meta = self.meta
        text = f"step {meta['step']}/{meta['total'] or '?'}"
        if meta.get("stage") == "dpo":
            text = "dpo " + text
        if meta.get("loss") is not None:
            text += f" loss {meta['loss']:.4f}"
        if meta.get("eval_loss") is not None:
            text += f" eval_loss {meta['eval_loss']:.4f}"
        return text


@app.task(name=TASK_EXPORT)
def export_run(run_id: str) -> dict[str, Any]:
    return pipeline.export_step(run_id)


@app.task(name=TASK_TRAIN, bind=True)
def train_run(self: Any, run_id: str) -> dict[str, Any]:
    with context_sinks(TaskProgressSink(self)):
        result = pipeline.train_step(run_id)
    if result["status"] == pipeline.STEP_HANDED_OVER:
        _hand_over(run_id)
    return result


def _hand_over(run_id: str) -> None:
    """This worker shuts down mid-run (SIGTERM): train (from the checkpoint just saved) and
    evaluate go back on their queues for the next worker, and this chain stops here."""
    from celery.exceptions import Ignore

    from worker.runtime import runtime
    from worker.watchdog import requeue

    rt = runtime()
    requeue(app, rt, rt.runs.get(run_id), (TASK_TRAIN, TASK_EVALUATE), count_as_resume=False)
    raise Ignore()  # not "succeeded": the evaluate step of this chain must not run


@app.task(name=TASK_EVALUATE)
def evaluate_run(run_id: str) -> dict[str, Any]:
    return pipeline.evaluate_step(run_id)


@app.task(name=TASK_SCHEDULED_CHECK)
def scheduled_check() -> dict[str, Any]:
    """A celery-beat tick: start a scheduled run when the seed §2.2 conditions hold."""
    from shared.schedule import scheduled_tick
    from worker.runtime import runtime

    return scheduled_tick(runtime().manager(app))


@app.task(name=TASK_WATCHDOG)
def watchdog() -> list[dict[str, Any]]:
    """A celery-beat tick: kill hung trainers, resume or fail runs whose worker was lost."""
    from worker.runtime import runtime
    from worker.watchdog import reap

    return reap(runtime(), app)


@app.task(name=TASK_EXPORT_GGUF)
def export_gguf(adapter_id: str) -> dict[str, Any]:
    """GGUF LoRA + Ollama Modelfile for an adapter (on activation when OLLAMA_EXPORT=true)."""
    from worker.delivery import export_gguf as export
    from worker.runtime import runtime

    return export(runtime().settings, adapter_id)
