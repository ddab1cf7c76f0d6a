"""Run control with real processes: kill -9 of the worker mid-run, then a resumed, completed run;
the scheduler tick through a real worker; two API processes racing for the single-flight slot."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import requests

from shared.db import Database
from shared.queue import make_celery
from shared.runs import RunStore
from tests.integration.conftest import EventLog, Service, start_worker, stop_worker
from worker.runtime import Runtime

pytestmark = pytest.mark.integration

TINY = {"backend": "trl", "batchSize": 2, "gradAccum": 1, "maxSeqLen": 256, "evalSamples": 0}


def _wait(predicate, timeout: float = 120, every: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")


def test_worker_killed_mid_run_is_resumed_from_its_checkpoint(
    service: Service, tiny_model: Path, tmp_path: Path
) -> None:
    from worker.watchdog import reap

    log = EventLog(service)
    config = {**TINY, "baseModel": str(tiny_model), "maxSteps": 60, "saveSteps": 5,
              "evalSteps": 100000}
    response = requests.post(f"{service.base_url}/api/finetune", json={"config": config})
    run_id = log.run_id = response.json()["runId"]
    log.wait_for(lambda e: e["type"] == "checkpoint")
    stop_worker(service.worker, signal.SIGKILL)  # the whole worker: main process and child
    killed_at = max(e["step"] for e in log.events if e["type"] == "progress")
    assert killed_at < 60

    settings = service.settings.replace(heartbeat_timeout=5)
    db = Database(settings.database_url)
    rt = Runtime(settings, db, service.redis, RunStore(db))
    celery = make_celery(settings)
    service.worker = start_worker(settings, tmp_path / "worker2.log")
    actions = _wait(lambda: reap(rt, celery), timeout=60, every=1)
    assert actions == [{"runId": run_id, "action": "resumed"}]

    terminal = log.wait_for(lambda e: e["type"] in ("complete", "error", "cancelled"), 300)
    assert terminal["type"] == "complete", terminal
    run = requests.get(f"{service.base_url}/api/finetune/{run_id}").json()
    assert run["status"] == "completed" and run["metrics"]["total_steps"] == 60
    manifest = json.loads(Path(run["loraPath"], "manifest.json").read_text())
    assert manifest["config"]["maxSteps"] == 60 and manifest["metrics"]["totalSteps"] == 60
    restart = [e for e in log.events if e["type"] == "training_start"]
    assert len(restart) == 2 and 0 < restart[1]["step"] <= killed_at
    steps = [h["step"] for h in requests.get(
        f"{service.base_url}/api/finetune/{run_id}/events?limit=5000").json()["events"]
        if h["type"] == "progress"]
    assert steps == list(range(1, 61)), "history has each step once after the resume"
    with db.session() as session:
        from shared.models import FineTuneRun

        assert session.get(FineTuneRun, run_id).attempts == 1
    db.dispose()


def test_scheduler_tick_through_a_real_worker(service: Service) -> None:
    from shared.names import TASK_SCHEDULED_CHECK

    celery = make_celery(service.settings)
    first = celery.send_task(TASK_SCHEDULED_CHECK).get(timeout=60)
    assert first["decision"] == "started"
    run = requests.get(f"{service.base_url}/api/finetune/{first['runId']}").json()
    assert run["triggeredBy"] == "scheduled"
    # a later tick while that run is active does nothing, and says why
    service.redis.delete(*service.redis.keys("finetune:schedule:tick:*"))
    second = celery.send_task(TASK_SCHEDULED_CHECK).get(timeout=60)
    assert second["decision"] == "skipped" and first["runId"] in second["reason"]
    shown = requests.get(f"{service.base_url}/api/finetune/schedule").json()
    assert shown["lastDecision"]["decision"] == "skipped"
