"""/metrics: Prometheus text that a Prometheus parser reads, with numbers from the DB and Redis."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
from prometheus_client.parser import text_string_to_metric_families

from shared.db import Database
from shared.models import FineTuneRun
from shared.registry import AdapterRegistry
from shared.schedule import LAST_DECISION_KEY
from shared.settings import Settings
from tests.adapters import make_adapter


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics(settings: Settings, make_app: Any, app_database_url: str) -> None:
    db = Database(app_database_url)
    with db.session() as session:
        session.add(
            FineTuneRun(
                id="run_000001",
                status="completed",
                base_model="m",
                config="{}",
                metrics=json.dumps({"tokens_per_second": 75.5}),
            )
        )
        session.add(
            FineTuneRun(
                id="run_000002", status="running", base_model="m", config="{}", active_slot=1
            )
        )
    db.dispose()
    redis = fakeredis.FakeRedis()
    redis.set(
        "finetune:latest:run_000002",
        json.dumps(
            {
                "type": "progress",
                "run_id": "run_000002",
                "step": 7,
                "total_steps": 20,
                "loss": 1.25,
                "tokens_per_second": 61.5,
            }  # fmt: skip
        ),
    )
    redis.rpush("train", "m1", "m2")
    redis.set(
        LAST_DECISION_KEY, json.dumps({"at": "2026-11-29T02:00:00+00:00", "decision": "skipped"})
    )
    make_adapter(settings.lora_output_dir, "run_000001")
    AdapterRegistry(settings.lora_output_dir).activate("run_000001")
    response = make_app(redis_client=redis).test_client().get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = _samples(response.get_data(as_text=True))
    assert samples[("tmde_runs", (("status", "completed"),))] == 1
    assert samples[("tmde_runs", (("status", "running"),))] == 1
    assert samples[("tmde_runs", (("status", "failed"),))] == 0
    assert samples[("tmde_queue_depth", (("queue", "train"),))] == 2
    assert samples[("tmde_active_run_step", (("run_id", "run_000002"),))] == 7
    assert samples[("tmde_active_run_loss", (("run_id", "run_000002"),))] == 1.25
    assert samples[("tmde_active_run_tokens_per_second", (("run_id", "run_000002"),))] == 61.5
    assert (
        samples[("tmde_last_completed_run_tokens_per_second", (("run_id", "run_000001"),))] == 75.5
    )
    assert samples[("tmde_schedule_last_decision", (("decision", "skipped"),))] == 1
    assert samples[("tmde_active_adapter_info", (("adapter_id", "run_000001"),))] == 1


def test_metrics_survive_a_redis_outage(make_app: Any) -> None:
    redis = fakeredis.FakeRedis()
    redis.connected = False  # every command raises ConnectionError
    response = make_app(redis_client=redis).test_client().get("/metrics")
    assert response.status_code == 200
    assert ("tmde_runs", (("status", "pending"),)) in _samples(response.get_data(as_text=True))
