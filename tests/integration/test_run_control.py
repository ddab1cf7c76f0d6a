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


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """These tests exercise processes, not storage: SQLite only (storage runs on both)."""
    return f"sqlite:///{tmp_path / 'runs.db'}"


TINY = {
    "backend": "trl",
    "objective": "sft",  # the SFT stage alone unless a test asks for DPO
    "batchSize": 2,
    "gradAccum": 1,
    "maxSeqLen": 256,
    "evalSamples": 0,
}


def _wait(predicate, timeout: float = 120, every: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")


def test_a_worker_stopped_by_sigterm_checkpoints_and_hands_the_run_over(
    service: Service, tiny_model: Path, tmp_path: Path
) -> None:
    log = EventLog(service)
    config = {**TINY, "baseModel": str(tiny_model), "maxSteps": 40, "saveSteps": 1000,
              "evalSteps": 100000}  # fmt: skip  # no checkpoint of its own before step 40
    response = requests.post(f"{service.base_url}/api/finetune", json={"config": config})
    run_id = log.run_id = response.json()["runId"]
    log.wait_for(lambda e: e["type"] == "progress" and e["step"] >= 3)
    service.worker.send_signal(signal.SIGTERM)  # the main process only, as `docker stop` does
    assert service.worker.wait(timeout=60) == 0  # it leaves once the run is handed over
    saved = [e["step"] for e in log.events if e["type"] == "checkpoint"]
    assert len(saved) == 1 and 3 <= saved[0] < 40, saved
    run = requests.get(f"{service.base_url}/api/finetune/{run_id}").json()
    assert run["status"] == "running", run  # neither failed nor completed: waiting for a worker

    service.worker = start_worker(service.settings, tmp_path / "worker2.log")
    terminal = log.wait_for(lambda e: e["type"] in ("complete", "error", "cancelled"), 300)
    assert terminal["type"] == "complete", terminal
    starts = [e["step"] for e in log.events if e["type"] == "training_start"]
    assert starts == [0, saved[0]]  # the second worker went on from the checkpoint
    events = requests.get(f"{service.base_url}/api/finetune/{run_id}/events?limit=5000").json()
    steps = [e["step"] for e in events["events"] if e["type"] == "progress"]
    assert steps == list(range(1, 41))
    db = Database(service.settings.database_url)
    with db.session() as session:
        from shared.models import FineTuneRun

        # a clean hand-over is not a lost worker: it leaves the watchdog's resumes untouched
        assert session.get(FineTuneRun, run_id).attempts == 0
    db.dispose()


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


def test_worker_killed_in_the_dpo_stage_resumes_dpo_without_repeating_sft(
    service: Service, tiny_model: Path, tmp_path: Path
) -> None:
    from worker.watchdog import reap

    log = EventLog(service)
    config = {**TINY, "baseModel": str(tiny_model), "objective": "sft+dpo", "maxSteps": 4,
              "dpoMaxSteps": 20, "saveSteps": 5, "evalSteps": 100000}  # fmt: skip
    response = requests.post(f"{service.base_url}/api/finetune", json={"config": config})
    run_id = log.run_id = response.json()["runId"]
    log.wait_for(lambda e: e["type"] == "checkpoint" and e.get("stage") == "dpo")
    stop_worker(service.worker, signal.SIGKILL)
    killed_at = max(e["step"] for e in log.events if e["type"] == "progress")
    assert 4 < killed_at < 24

    settings = service.settings.replace(heartbeat_timeout=5)
    db = Database(settings.database_url)
    rt = Runtime(settings, db, service.redis, RunStore(db))
    service.worker = start_worker(settings, tmp_path / "worker2.log")
    actions = _wait(lambda: reap(rt, make_celery(settings)), timeout=60, every=1)
    assert actions == [{"runId": run_id, "action": "resumed"}]

    terminal = log.wait_for(lambda e: e["type"] in ("complete", "error", "cancelled"), 300)
    assert terminal["type"] == "complete", terminal
    starts = [(e["stage"], e["step"]) for e in log.events if e["type"] == "training_start"]
    assert starts[:2] == [("sft", 0), ("dpo", 4)] and len(starts) == 3
    assert starts[2][0] == "dpo" and 4 < starts[2][1] <= killed_at  # DPO, from its checkpoint
    history = requests.get(f"{service.base_url}/api/finetune/{run_id}/events?limit=5000").json()
    progress = [(h["stage"], h["step"]) for h in history["events"] if h["type"] == "progress"]
    assert [step for _, step in progress] == list(range(1, 25)), "each step once after the resume"
    assert {stage for stage, step in progress if step > 4} == {"dpo"}
    metrics = requests.get(f"{service.base_url}/api/finetune/{run_id}").json()["metrics"]
    assert (metrics["sft_total_steps"], metrics["dpo_total_steps"]) == (4, 20)
    assert metrics["adapter_preference_accuracy"] is not None
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


def test_a_redis_restart_mid_run_does_not_lose_the_run(
    tmp_path: Path, migrated_url: str, trace_store, tiny_model: Path
) -> None:
    """A private Redis (the shared one must not be restarted) goes away for a few seconds
    while the run trains; the run still completes, and its record and adapter are whole."""
    import subprocess

    import redis as redis_lib

    from tests.helpers import make_settings
    from worker.demo import redis_answers, redis_server_binary, stop

    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary to run a private Redis")
    from worker.demo import free_port

    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--save",
        "",
        "--appendonly",
        "no",
    ]

    def start_redis() -> subprocess.Popen:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
        _wait(lambda: redis_answers(f"redis://127.0.0.1:{port}/0"), timeout=10, every=0.1)
        return process

    redis_process = start_redis()
    settings = make_settings(
        tmp_path, redis_url=f"redis://127.0.0.1:{port}/0", database_url=migrated_url
    )
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        from shared.db import Database
        from shared.queue import make_celery
        from shared.runs import FineTuneManager

        db = Database(migrated_url)
        client = redis_lib.Redis.from_url(settings.redis_url)
        manager = FineTuneManager(settings, db, trace_store, make_celery(settings), client)
        config = {
            **TINY,
            "baseModel": str(tiny_model),
            "maxSteps": 200,
            "saveSteps": 1000,
            "evalSteps": 1000,
        }
        run = manager.start(config, "api")
        _wait(lambda: len(manager.runs.progress(run.id)) >= 3, timeout=180)
        stop(redis_process)  # Redis gone mid-training
        assert len(manager.runs.progress(run.id)) < 200, "the run ended before Redis left"
        time.sleep(3)
        redis_process = start_redis()
        final = _wait(
            lambda: manager.get(run.id).status in ("completed", "failed") and manager.get(run.id),
            timeout=300,
        )
        assert final.status == "completed", final.error_message
        assert final.metrics_dict()["total_steps"] == 200
        assert Path(final.lora_path, "manifest.json").is_file()
        db.dispose()
    finally:
        stop_worker(worker)
        stop(redis_process)


def _swap_worker(service: Service, tmp_path: Path, **env: str) -> None:
    stop_worker(service.worker)
    service.worker = start_worker(service.settings, tmp_path / "worker-hooked.log", **env)


def test_watchdog_kills_a_hung_trainer_and_fails_the_run(
    service: Service, tiny_model: Path, tmp_path: Path
) -> None:
    from worker.watchdog import reap

    _swap_worker(service, tmp_path, TMDE_TEST_HANG_AT_STEP="3")
    log = EventLog(service)
    config = {
        **TINY,
        "baseModel": str(tiny_model),
        "maxSteps": 50,
        "saveSteps": 1000,
        "evalSteps": 1000,
    }
    response = requests.post(f"{service.base_url}/api/finetune", json={"config": config})
    run_id = log.run_id = response.json()["runId"]
    log.wait_for(lambda e: e["type"] == "progress" and e["step"] == 2)  # it hangs in step 3
    settings = service.settings.replace(heartbeat_timeout=5)
    db = Database(settings.database_url)
    rt = Runtime(settings, db, service.redis, RunStore(db))
    actions = _wait(lambda: reap(rt, make_celery(settings)), timeout=90, every=1)
    assert actions == [{"runId": run_id, "action": "killed"}]
    terminal = log.wait_for(lambda e: e["type"] in ("complete", "error", "cancelled"))
    assert terminal["type"] == "error" and terminal["code"] == "HUNG"
    run = requests.get(f"{service.base_url}/api/finetune/{run_id}").json()
    assert run["status"] == "failed" and run["errorCode"] == "HUNG"
    assert "no heartbeat" in run["errorMessage"]
    # the slot is free again and the killed pool process was replaced
    assert (
        requests.post(
            f"{service.base_url}/api/finetune", json={"config": {"baseModel": "nosuch:1b"}}
        ).status_code
        == 202
    )
    db.dispose()


def test_oom_in_a_real_worker_retries_then_fails_with_code_oom(
    service: Service, tiny_model: Path, tmp_path: Path
) -> None:
    _swap_worker(service, tmp_path, TMDE_TEST_RAISE_OOM="2:1")
    log = EventLog(service)
    config = {**TINY, "baseModel": str(tiny_model), "maxSteps": 6, "batchSize": 2}
    response = requests.post(f"{service.base_url}/api/finetune", json={"config": config})
    run_id = log.run_id = response.json()["runId"]
    terminal = log.wait_for(lambda e: e["type"] in ("complete", "error", "cancelled"))
    assert terminal["type"] == "error" and terminal["code"] == "OOM"
    assert terminal["suggestion"] == "Reduce batch_size or max_seq_length"
    run = requests.get(f"{service.base_url}/api/finetune/{run_id}").json()
    assert run["status"] == "failed" and run["errorCode"] == "OOM"
    assert (run["config"]["batchSize"], run["config"]["gradAccum"]) == (1, 2)  # it retried
