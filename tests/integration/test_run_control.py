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
    config = {
        **TINY,
        "baseModel": str(tiny_model),
        "maxSteps": 60,
        "saveSteps": 5,
        "evalSteps": 100000,
    }
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
    steps = [
        h["step"]
        for h in requests.get(f"{service.base_url}/api/finetune/{run_id}/events?limit=5000").json()[
            "events"
        ]
        if h["type"] == "progress"
    ]
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


def test_two_api_processes_racing_give_one_202_and_one_409(
    tmp_path: Path, redis_url: str, migrated_url: str, trace_store
) -> None:
    import subprocess
    import sys
    import threading

    from shared.demo import free_port, stop
    from tests.conftest import make_settings
    from tests.integration.conftest import REPO, _settings_env

    settings = make_settings(tmp_path, redis_url=redis_url, database_url=migrated_url)
    ports = [free_port(), free_port()]
    apis = [
        subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "api", "--port", str(port)],
            cwd=REPO,
            env=_settings_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for port in ports
    ]
    try:
        for port in ports:
            _wait(lambda p=port: _healthy(p), timeout=60, every=0.2)
        for _ in range(3):
            barrier = threading.Barrier(2)
            answers: list[requests.Response] = []

            def post(port: int, barrier=barrier, answers=answers) -> None:  # noqa: ANN001
                barrier.wait()
                answers.append(
                    requests.post(
                        f"http://127.0.0.1:{port}/api/finetune",
                        json={"config": {"maxSteps": 1}},
                        timeout=30,
                    )
                )

            threads = [threading.Thread(target=post, args=(port,)) for port in ports]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            codes = sorted(answer.status_code for answer in answers)
            assert codes == [202, 409], [a.text for a in answers]
            winner = next(a for a in answers if a.status_code == 202).json()["runId"]
            loser = next(a for a in answers if a.status_code == 409).json()
            assert loser["activeRunId"] in (winner, None)
            cancel = requests.post(f"http://127.0.0.1:{ports[0]}/api/finetune/{winner}/cancel")
            assert cancel.status_code == 202 and cancel.json()["status"] == "cancelled"
    finally:
        for api in apis:
            stop(api)


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
