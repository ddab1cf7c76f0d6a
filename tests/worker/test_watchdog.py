"""The watchdog's decisions: kill a hung trainer, resume a lost one, fail without checkpoint."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from shared.db import Database
from shared.models import FineTuneRun, utcnow
from shared.runs import RunStore
from shared.settings import Settings
from worker import watchdog
from worker.runtime import Runtime
from worker.training import stages


class FakeControl:
    def __init__(self, active: dict[str, list[dict]] | None) -> None:
        self._active = active
        self.revoked: list[tuple[str, dict]] = []

    def inspect(self, timeout: float) -> Any:
        control = self

        class Inspect:
            def active(self) -> Any:
                return control._active

        return Inspect()

    def revoke(self, task_id: str, **kwargs: Any) -> None:
        self.revoked.append((task_id, kwargs))


class FakeCelery:
    def __init__(self, active: dict[str, list[dict]] | None = None) -> None:
        self.control = FakeControl(active)
        self.sent: list[str] = []


@pytest.fixture
def rt(settings: Settings, migrated_url: str) -> Runtime:
    db = Database(migrated_url)
    return Runtime(
        settings.replace(database_url=migrated_url, heartbeat_timeout=60),
        db,
        fakeredis.FakeRedis(),
        RunStore(db),
    )


def _run(
    rt: Runtime, *, phase: str, age: float, task: str | None = "task-1", attempts: int = 0
) -> str:
    with rt.db.session() as session:
        session.add(
            FineTuneRun(
                id="run_00000000000a",
                status="running",
                base_model="m",
                config="{}",
                active_slot=1,
                phase=phase,
                heartbeat_at=utcnow() - timedelta(seconds=age),
                current_task_id=task,
                attempts=attempts,
            )
        )
    return "run_00000000000a"


def _checkpoint(rt: Runtime, run_id: str, step: int) -> Path:
    folder = rt.settings.lora_output_dir / ".work" / run_id / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_fresh_heartbeats_are_left_alone(rt: Runtime) -> None:
    _run(rt, phase="training", age=5)
    assert watchdog.reap(rt, FakeCelery()) == []


def test_queued_runs_do_not_need_a_heartbeat(rt: Runtime) -> None:
    _run(rt, phase="queued", age=3600)
    assert watchdog.reap(rt, FakeCelery()) == []


def test_hung_trainer_is_killed_and_failed(rt: Runtime) -> None:
    run_id = _run(rt, phase="training", age=120)
    celery = FakeCelery({"w1@h": [{"id": "task-1"}]})
    assert watchdog.reap(rt, celery) == [{"runId": run_id, "action": "killed"}]
    assert celery.control.revoked == [("task-1", {"terminate": True, "signal": "SIGKILL"})]
    run = rt.runs.get(run_id)
    assert run.status == "failed" and run.error_code == "HUNG" and run.active_slot is None
    assert "no heartbeat for" in run.error_message
    assert json.loads(rt.redis.get(f"finetune:latest:{run_id}"))["code"] == "HUNG"


def test_lost_worker_with_a_checkpoint_is_resumed(rt: Runtime, monkeypatch) -> None:
    run_id = _run(rt, phase="training", age=120)
    _checkpoint(rt, run_id, 2)
    _checkpoint(rt, run_id, 10)
    sent: list[tuple] = []
    monkeypatch.setattr(
        watchdog,
        "requeue",
        lambda celery, rt_, run, names: (
            sent.append(names) or rt_.runs.update(run.id, phase="queued", attempts=run.attempts + 1)
        ),
    )
    assert watchdog.reap(rt, FakeCelery({"w2@h": []})) == [{"runId": run_id, "action": "resumed"}]
    assert sent == [("tmde.finetune.train", "tmde.finetune.evaluate")]
    run = rt.runs.get(run_id)
    assert run.status == "running" and run.attempts == 1 and run.phase == "queued"
    latest = stages.latest_checkpoint(
        rt.settings.lora_output_dir / ".work" / run_id / "checkpoints"
    )
    assert latest is not None and latest.name == "checkpoint-10"


def test_lost_worker_without_checkpoint_fails_with_the_reason(rt: Runtime) -> None:
    run_id = _run(rt, phase="training", age=120)
    assert watchdog.reap(rt, FakeCelery(None))[0]["action"] == "failed"
    run = rt.runs.get(run_id)
    assert run.error_code == "WORKER_LOST" and "no checkpoint" in run.error_message


def test_resumes_are_bounded(rt: Runtime) -> None:
    run_id = _run(rt, phase="training", age=120, attempts=watchdog.MAX_RESUMES)
    _checkpoint(rt, run_id, 4)
    watchdog.reap(rt, FakeCelery({}))
    assert rt.runs.get(run_id).error_code == "WORKER_LOST"


def test_incomplete_checkpoints_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-7").mkdir()
    assert stages.latest_checkpoint(tmp_path) is None


def test_trainer_ignoring_a_cancel_is_terminated_after_the_grace_period(rt: Runtime) -> None:
    import time

    run_id = _run(rt, phase="training", age=1)
    rt.runs.update(run_id, cancel_requested=True)
    rt.redis.set(f"finetune:cancel:{run_id}", str(time.time() - 5))
    celery = FakeCelery({"w@h": [{"id": "task-1"}]})
    assert watchdog.reap(rt, celery) == []  # still inside the grace period
    rt.redis.set(f"finetune:cancel:{run_id}", str(time.time() - watchdog.CANCEL_GRACE_SECONDS - 1))
    assert watchdog.reap(rt, celery) == [{"runId": run_id, "action": "terminated"}]
    assert celery.control.revoked == [("task-1", {"terminate": True, "signal": "SIGKILL"})]
    run = rt.runs.get(run_id)
    assert run.status == "cancelled" and run.active_slot is None
    assert json.loads(rt.redis.get(f"finetune:latest:{run_id}"))["type"] == "cancelled"


def test_a_task_sees_its_own_workers_stop_marker_only(rt: Runtime) -> None:
    import os
    import socket

    from shared.names import worker_stopping_key

    host = socket.gethostname()
    assert not rt.worker_stopping()
    rt.redis.set(worker_stopping_key(host, os.getppid() + 1), "1")  # another worker stops
    rt.redis.set(worker_stopping_key("elsewhere", os.getppid()), "1")  # same pid, other host
    assert not rt.worker_stopping()
    rt.redis.set(worker_stopping_key(host, os.getppid()), "1")  # the pool child's main process
    assert rt.worker_stopping()
