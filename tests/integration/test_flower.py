"""Flower sees the training task's PROGRESS; the sink behind it is throttled and task-bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.db import Database
from shared.events import Emitter, context_sinks
from shared.models import FineTuneRun
from shared.names import TASK_TRAIN
from tests.integration.conftest import REPO, Service, _settings_env
from worker.demo import free_port

LONG_RUN = {
    "backend": "trl",
    "maxSteps": 3000,
    "objective": "sft",  # the total is the SFT steps alone
    "evalSteps": 100000,
    "saveSteps": 100000,
    "batchSize": 2,
    "gradAccum": 1,
    "maxSeqLen": 128,
    "evalSamples": 1,
}


class FakeTask:
    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def update_state(self, state: str, meta: dict[str, Any]) -> None:
        self.states.append({"state": state, **meta})

    def send_event(self, type_: str, **fields: Any) -> None:
        self.events.append({"type": type_, **fields})


def test_progress_sink_is_throttled_and_bound_to_the_task() -> None:
    from worker.tasks import TaskProgressSink

    task = FakeTask()
    emitter = Emitter("run_a1", [])  # built elsewhere; the task adds its sink around the call
    with context_sinks(TaskProgressSink(task, min_interval=60)):
        emitter.emit("export_complete", train_count=5, val_count=1)
        emitter.emit("training_start", step=0, total_steps=3)
        for step in (1, 2):
            emitter.emit("progress", step=step, total_steps=3, loss=2.0 / step)
        emitter.emit("eval", step=2, total_steps=3, loss=1.0, eval_loss=1.5)
        emitter.emit("progress", step=3, total_steps=3, loss=0.5)  # the last step always
    emitter.emit("progress", step=4, total_steps=3, loss=0.1)  # outside: not reported
    assert [(s["state"], s["step"]) for s in task.states] == [
        ("PROGRESS", 0),
        ("PROGRESS", 2),
        ("PROGRESS", 3),
    ]
    last = task.states[-1]
    assert (last["total"], last["loss"], last["eval_loss"], last["run_id"]) == (
        3,
        0.5,
        1.5,
        "run_a1",
    )
    assert [e["type"] for e in task.events] == ["task-progress"] * 3
    assert task.events[-1]["result"] == "step 3/3 loss 0.5000 eval_loss 1.5000"


def test_progress_in_the_dpo_stage_is_named_in_flower() -> None:
    from worker.tasks import TaskProgressSink

    task = FakeTask()
    emitter = Emitter("run_a1", [])
    with context_sinks(TaskProgressSink(task, min_interval=0)):
        emitter.emit("progress", step=4, total_steps=7, loss=1.0, stage="sft")
        emitter.emit("training_start", step=4, total_steps=7, stage="dpo")
        emitter.emit("progress", step=5, total_steps=7, loss=0.69, stage="dpo")
    assert [s["stage"] for s in task.states] == ["sft", "dpo", "dpo"]
    assert task.events[-1]["result"] == "dpo step 5/7 loss 0.6900"


def test_a_failing_progress_report_never_stops_training() -> None:
    from worker.tasks import TaskProgressSink

    class Broken(FakeTask):
        def update_state(self, state: str, meta: dict[str, Any]) -> None:
            raise ConnectionError("result backend down")

    seen: list[str] = []
    with context_sinks(TaskProgressSink(Broken())):
        Emitter("r", [lambda e: seen.append(e.type)]).emit("progress", step=1, total_steps=2)
    assert seen == ["progress"]


FLOWER_AUTH = ("tmde", "test-only-password")


def _get(url: str) -> Any:
    try:
        response = requests.get(url, timeout=5, auth=FLOWER_AUTH)
    except requests.RequestException:
        return None
    return response.json() if response.status_code == 200 else None


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2, auth=FLOWER_AUTH).status_code
    except requests.RequestException:
        return None


def _poll(fetch: Any, predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if last is not None and predicate(last):
            return last
        time.sleep(0.3)
    raise TimeoutError(f"{what}; last answer: {last}")


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_flower_reads_the_training_task_and_its_progress(
    service: Service, tiny_model: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = open(tmp_path / "flower.log", "w")  # noqa: SIM115 - closed below
    flower = subprocess.Popen(
        [
            *(sys.executable, "-m", "shared.cli", "flower", "--port", str(port)),
            *("--basic-auth", ":".join(FLOWER_AUTH)),
        ],
        cwd=REPO,
        env=_settings_env(service.settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _poll(
            lambda: -1 if flower.poll() is not None else _status(f"{base}/healthcheck"),
            lambda code: code in (200, -1),
            30,
            "flower did not answer",
        )
        assert flower.poll() is None, (tmp_path / "flower.log").read_text()
        response = requests.post(
            f"{service.base_url}/api/finetune",
            json={"config": {"baseModel": str(tiny_model), **LONG_RUN}},
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["runId"]
        db = Database(service.settings.database_url)
        with db.session() as session:
            train_id = json.loads(session.get(FineTuneRun, run_id).task_ids)[1]
        db.dispose()

        assert requests.get(f"{base}/api/tasks", timeout=5).status_code == 401  # auth is on
        info = _poll(
            lambda: _get(f"{base}/api/task/info/{train_id}"),
            lambda task: task.get("state") == "PROGRESS" and " loss " in task.get("result", ""),
            120,
            "the training task never showed PROGRESS in Flower",
        )
        assert info["name"] == TASK_TRAIN and run_id in info["args"]
        assert len(info["args"]) < 40  # a run id, never a dataset
        assert info["result"].startswith("step ") and "/3000 loss " in info["result"]
        listed = _get(f"{base}/api/tasks?taskname={TASK_TRAIN}")
        assert listed[train_id]["state"] == "PROGRESS"
        result = _get(f"{base}/api/task/result/{train_id}")
        assert result == {"task-id": train_id, "state": "PROGRESS"}  # not ready: no result yet

        from celery.result import AsyncResult

        from shared.queue import make_celery

        celery = make_celery(service.settings)
        meta = AsyncResult(train_id, app=celery).info
        assert meta["run_id"] == run_id and meta["total"] == 3000
        assert meta["step"] >= 1 and isinstance(meta["loss"], float)
        celery.close()

        assert requests.post(f"{service.base_url}/api/finetune/{run_id}/cancel").status_code == 202
        done = _poll(
            lambda: _get(f"{base}/api/task/info/{train_id}"),
            lambda task: task.get("state") == "SUCCESS",
            60,
            "the cancelled training task did not finish",
        )
        assert "cancelled" in done["result"]
    finally:
        os.killpg(flower.pid, 15)
        try:
            flower.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(flower.pid, 9)
            flower.wait()
        log.close()
