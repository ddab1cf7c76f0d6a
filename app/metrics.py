"""GET /metrics: Prometheus text format, computed from the database and Redis at scrape time.

Nothing is counted in process memory, so every API replica reports the same numbers and a
restart loses nothing. Families (all gauges):

    tmde_runs{status}                          runs by status
    tmde_queue_depth{queue}                    Celery messages waiting per queue
    tmde_active_run_step / _total_steps / _loss / _eval_loss / _eta_seconds
        / _tokens_per_second {run_id}
    tmde_last_completed_run_tokens_per_second{run_id}
    tmde_schedule_last_decision{decision}      1 for the last beat decision; _timestamp_seconds
    tmde_active_adapter_info{adapter_id}       1 for the adapter in active.json
    tmde_feed_clients                          live SSE/websocket clients of this process
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from app import state
from app.apidoc import doc
from shared.events import latest_event
from shared.models import FineTuneRun
from shared.names import QUEUES, RUN_STATUSES, STATUS_COMPLETED
from shared.schedule import LAST_DECISION_KEY

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)

ACTIVE_RUN_FIELDS = ("step", "total_steps", "loss", "eval_loss", "eta_seconds", "tokens_per_second")


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class ServiceCollector:
    """One scrape's worth of numbers; a source that fails is skipped, not fatal."""

    def __init__(self) -> None:
        self.db = state.database()
        self.redis = state.redis_client()
        self.registry = state.registry()
        self.relay = state.relay()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for source in (self._runs, self._queues, self._schedule, self._adapter, self._feeds):
            try:
                yield from source()
            except Exception as exc:  # noqa: BLE001 - a down dependency must not break /metrics
                log.warning("metrics: %s unavailable: %s", source.__name__, exc)

    def _runs(self) -> Iterator[GaugeMetricFamily]:
        with self.db.session() as session:
            counts = dict(
                session.execute(
                    select(FineTuneRun.status, func.count()).group_by(FineTuneRun.status)
                ).all()
            )
            active = session.scalars(
                select(FineTuneRun).where(FineTuneRun.active_slot.is_not(None))
            ).first()
            done = session.scalars(
                select(FineTuneRun)
                .where(FineTuneRun.status == STATUS_COMPLETED)
                .order_by(FineTuneRun.completed_at.desc())
            ).first()
        runs = _gauge("tmde_runs", "Fine-tuning runs by status", ("status",))
        for status in RUN_STATUSES:
            runs.add_metric([status], counts.get(status, 0))
        yield runs
        if active is not None:
            yield from self._active_run(active.id)
        if done is not None and (done.metrics_dict() or {}).get("tokens_per_second"):
            speed = _gauge(
                "tmde_last_completed_run_tokens_per_second",
                "Training tokens/s of the last completed run",
                ("run_id",),
            )
            speed.add_metric([done.id], done.metrics_dict()["tokens_per_second"])
            yield speed

    def _active_run(self, run_id: str) -> Iterator[GaugeMetricFamily]:
        event = latest_event(self.redis, run_id) or {}
        for field in ACTIVE_RUN_FIELDS:
            value = event.get(field)
            if isinstance(value, int | float):
                gauge = _gauge(
                    f"tmde_active_run_{field}", f"Active run: latest {field}", ("run_id",)
                )
                gauge.add_metric([run_id], value)
                yield gauge

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        depth = _gauge("tmde_queue_depth", "Celery messages waiting per queue", ("queue",))
        for queue in QUEUES:
            depth.add_metric([queue], self.redis.llen(queue))
        yield depth

    def _schedule(self) -> Iterator[GaugeMetricFamily]:
        raw = self.redis.get(LAST_DECISION_KEY)
        if not raw:
            return
        decision: dict[str, Any] = json.loads(raw)
        gauge = _gauge("tmde_schedule_last_decision", "Last scheduler decision", ("decision",))
        gauge.add_metric([decision.get("decision", "unknown")], 1)
        yield gauge
        if decision.get("at"):
            when = _gauge("tmde_schedule_last_decision_timestamp_seconds", "When it was taken")
            when.add_metric([], datetime.fromisoformat(decision["at"]).timestamp())
            yield when

    def _adapter(self) -> Iterator[GaugeMetricFamily]:
        adapter_id = self.registry.active_id()
        if adapter_id:
            info = _gauge("tmde_active_adapter_info", "The active adapter", ("adapter_id",))
            info.add_metric([adapter_id], 1)
            yield info

    def _feeds(self) -> Iterator[GaugeMetricFamily]:
        clients = _gauge("tmde_feed_clients", "Live progress clients of this API process")
        clients.add_metric([], self.relay.stats().get("clients", 0))
        yield clients


@bp.get("/metrics")
@doc("Prometheus metrics", {200: "text/plain"}, public=True)
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector())  # type: ignore[arg-type]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
