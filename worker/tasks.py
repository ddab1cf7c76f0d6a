"""Celery tasks: thin wrappers that take a run id and call a pipeline step.

Arguments are run ids only (never datasets or secrets), so Flower shows short, safe calls.
"""

from __future__ import annotations

from typing import Any

from shared.names import TASK_EVALUATE, TASK_EXPORT, TASK_TRAIN
from worker import pipeline
from worker.celery_app import app


@app.task(name=TASK_EXPORT)
def export_run(run_id: str) -> dict[str, Any]:
    return pipeline.export_step(run_id)


@app.task(name=TASK_TRAIN)
def train_run(run_id: str) -> dict[str, Any]:
    return pipeline.train_step(run_id)


@app.task(name=TASK_EVALUATE)
def evaluate_run(run_id: str) -> dict[str, Any]:
    return pipeline.evaluate_step(run_id)
