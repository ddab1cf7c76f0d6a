"""FineTuneManager (seed §2.1): create, list, get, cancel runs; the run state machine.

The database is the source of truth: a run moves pending -> running -> completed | failed |
cancelled, and every transition is a conditional UPDATE, so two processes can never both
claim, finish or cancel the same run. At most one run is active: `active_slot` is UNIQUE.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from shared.db import Database
from shared.errors import InsufficientDataError
from shared.events import ProgressEvent
from shared.models import FineTuneProgress, FineTuneRun, utcnow
from shared.names import (
    ACTIVE_STATUSES,
    RUN_STATUSES,
    STATUS_CANCELLED,
    STATUS_PENDING,
    STATUS_RUNNING,
    TERMINAL_STATUSES,
    ErrorCode,
    cancel_key,
)
from shared.run_config import FineTuneConfig, build_config
from shared.schemas import ProgressPoint, RunOut
from shared.settings import Settings
from shared.traces import PAIRS_HELP, TraceStore
from shared.warm_start import parent_adapter


class RunNotFoundError(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"Run not found: {run_id}")
        self.run_id = run_id


class RunConflictError(RuntimeError):
    """Another run is active, or the run is not in a state that allows the request."""

    def __init__(self, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunInProgressError(RunConflictError):
    """Single flight: a run is already active (`run_id` names it, None if it just ended)."""


# ProgressEvent fields stored on finetune_progress under the same names (the DPO stage's).
PROGRESS_EXTRAS = (
    "stage",
    "rewards_margins",
    "rewards_accuracies",
    "logps_chosen",
    "logps_rejected",
)


def new_run_id() -> str:
    return "run_" + secrets.token_hex(6)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def run_to_dict(run: FineTuneRun) -> dict[str, Any]:
    """The API's view of a run (camelCase, as the seed's TypeScript types): a RunOut."""
    return RunOut(
        id=run.id,
        status=run.status,
        triggered_by=run.triggered_by,
        base_model=run.base_model,
        backend=run.backend,
        started_at=_iso(run.started_at),
        completed_at=_iso(run.completed_at),
        traces_used=run.traces_used,
        train_examples=run.train_examples,
        val_examples=run.val_examples,
        train_pairs=run.train_pairs,
        val_pairs=run.val_pairs,
        parent_adapter=run.parent_adapter,
        lora_path=run.lora_path,
        config=run.config_dict(),
        metrics=run.metrics_dict(),
        promotion=run.promotion_dict(),
        error_message=run.error_message,
        error_code=run.error_code,
        cancel_requested=run.cancel_requested,
        log_path=run.log_path,
        export_dir=run.export_dir,
        progress_url=f"/api/finetune/{run.id}/progress",
    ).model_dump(mode="json")


class RunStore:
    """Conditional state transitions and progress rows; used by the manager and the tasks."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, run_id: str) -> FineTuneRun:
        with self.db.session() as session:
            run = session.get(FineTuneRun, run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            return run

    def _transition(self, run_id: str, allowed: tuple[str, ...], **values: Any) -> bool:
        with self.db.session() as session:
            result = session.execute(
                update(FineTuneRun)
                .where(FineTuneRun.id == run_id, FineTuneRun.status.in_(allowed))
                .values(updated_at=utcnow(), **values)
            )
            return result.rowcount == 1

    def claim(self, run_id: str) -> bool:
        """pending -> running, unless cancelled first; False when the run is not pending.

        One conditional UPDATE: a run whose cancel was requested stays pending (cancel() then
        moves it to cancelled) instead of being left `running` with no worker on it.
        """
        with self.db.session() as session:
            result = session.execute(
                update(FineTuneRun)
                .where(
                    FineTuneRun.id == run_id,
                    FineTuneRun.status == STATUS_PENDING,
                    FineTuneRun.cancel_requested.is_(False),
                )
                .values(status=STATUS_RUNNING, updated_at=utcnow())
            )
            return result.rowcount == 1

    def cancel_pending(self, run_id: str) -> bool:
        """pending -> cancelled in one statement; False when a worker claimed it first."""
        return self._transition(
            run_id,
            (STATUS_PENDING,),
            status=STATUS_CANCELLED,
            completed_at=utcnow(),
            active_slot=None,
            error_code=ErrorCode.CANCELLED,
            error_message="Cancelled before it started",
        )

    def update(self, run_id: str, **values: Any) -> bool:
        """Change fields of an active run; False when it is no longer active."""
        return self._transition(run_id, ACTIVE_STATUSES, **values)

    def finish(self, run_id: str, status: str, **values: Any) -> bool:
        """Move an active run to a terminal status and free the single-flight slot."""
        assert status in TERMINAL_STATUSES
        return self._transition(
            run_id,
            ACTIVE_STATUSES,
            status=status,
            completed_at=utcnow(),
            active_slot=None,
            phase=None,
            **values,
        )

    def heartbeat_sink(self, min_interval: float = 5.0) -> Callable[[ProgressEvent], None]:
        """Event sink: any event of a run refreshes its heartbeat_at (at most every few s)."""
        last = {"at": 0.0}

        def sink(event: ProgressEvent) -> None:
            now = time.monotonic()
            if event.run_id is None or now - last["at"] < min_interval:
                return
            last["at"] = now
            self.update(event.run_id, heartbeat_at=utcnow())

        return sink

    def record_event(self, event: ProgressEvent) -> None:
        """Event sink: store progress and eval events in finetune_progress."""
        if event.type not in ("progress", "eval") or event.run_id is None:
            return
        with self.db.session() as session:
            session.add(
                FineTuneProgress(
                    run_id=event.run_id,
                    step=event.step or 0,
                    total_steps=event.total_steps or 0,
                    loss=event.loss,
                    eval_loss=event.eval_loss,
                    learning_rate=event.learning_rate,
                    eta_seconds=event.eta_seconds,
                    event_type=event.type,
                    **{name: getattr(event, name) for name in PROGRESS_EXTRAS},
                )
            )

    def forget_progress_after(self, run_id: str, step: int) -> None:
        """Drop rows past `step`: a resumed run trains those steps again from its checkpoint."""
        with self.db.session() as session:
            session.execute(
                delete(FineTuneProgress).where(
                    FineTuneProgress.run_id == run_id, FineTuneProgress.step > step
                )
            )

    def progress(self, run_id: str, *, limit: int = 1000, after_id: int = 0) -> list[dict]:
        with self.db.session() as session:
            rows = session.scalars(
                select(FineTuneProgress)
                .where(FineTuneProgress.run_id == run_id, FineTuneProgress.id > after_id)
                .order_by(FineTuneProgress.id)
                .limit(limit)
            ).all()
        return [
            ProgressPoint(
                id=row.id,
                type=row.event_type,
                step=row.step,
                total_steps=row.total_steps,
                loss=row.loss,
                eval_loss=row.eval_loss,
                learning_rate=row.learning_rate,
                eta_seconds=row.eta_seconds,
                timestamp=_iso(row.timestamp),
                **{name: getattr(row, name) for name in PROGRESS_EXTRAS},
            ).model_dump(mode="json")
            for row in rows
        ]


@dataclass
class FineTuneManager:
    """Starts and controls runs. `celery` sends tasks; `redis` carries cancel flags."""

    settings: Settings
    db: Database
    traces: TraceStore
    celery: Any
    redis: Any

    def __post_init__(self) -> None:
        self.runs = RunStore(self.db)

    def default_config(self) -> dict[str, Any]:
        return build_config(self.settings).to_dict()

    def active_run(self) -> FineTuneRun | None:
        with self.db.session() as session:
            return session.scalars(
                select(FineTuneRun).where(FineTuneRun.status.in_(ACTIVE_STATUSES))
            ).first()

    def is_running(self) -> bool:
        return self.active_run() is not None

    def _require_pair_sources(self, config: FineTuneConfig) -> None:
        """422 before the run starts where no eligible trace can give a preference pair."""
        sources = self.traces.count_pair_sources(config.min_quality_score)
        if sources == 0:
            raise InsufficientDataError(
                f"objective {config.objective!r} needs preference pairs, and none of the traces "
                f"with quality >= {config.min_quality_score} has a rejected or superseded round "
                f"(0 pairs). {PAIRS_HELP}",
                current=0,
                required=1,
            )

    def start(self, overrides: dict[str, Any] | None, triggered_by: str = "api") -> FineTuneRun:
        """Validate, check single flight and data, record the run, queue its pipeline.

        Raises ConfigError (400), RunConflictError (409), InsufficientDataError (422).
        """
        config: FineTuneConfig = build_config(self.settings, overrides)
        parent = parent_adapter(self.settings, config)
        active = self.active_run()
        if active is not None:
            raise RunInProgressError("A fine-tune run is already in progress", active.id)
        stats = self.traces.get_stats(config.min_quality_score)
        required = self.settings.min_traces
        if stats.fine_tune_candidates < required:
            raise InsufficientDataError(
                f"Insufficient traces: need {required}, have {stats.fine_tune_candidates}",
                current=stats.fine_tune_candidates,
                required=required,
            )
        if config.needs_pairs:
            self._require_pair_sources(config)
        run = FineTuneRun(
            id=new_run_id(),
            status=STATUS_PENDING,
            triggered_by=triggered_by,
            base_model=config.base_model,
            backend=config.backend,
            config=json.dumps(config.to_dict()),
            active_slot=1,
            parent_adapter=parent,
        )
        run.log_path = str(self.settings.log_dir / f"{run.id}.log")
        try:
            with self.db.session() as session:
                session.add(run)
        except IntegrityError as exc:  # another process won the single-flight slot
            active = self.active_run()
            raise RunInProgressError(
                "A fine-tune run is already in progress", active.id if active else None
            ) from exc
        from shared.queue import enqueue_pipeline

        try:
            task_ids = enqueue_pipeline(self.celery, run.id)
        except Exception as exc:
            self.runs.finish(
                run.id,
                "failed",
                error_code=ErrorCode.GENERAL,
                error_message=f"Could not queue the run (is Redis at REDIS_URL up?): {exc}",
            )
            raise
        self.runs.update(run.id, task_ids=json.dumps(task_ids))
        return self.runs.get(run.id)

    def get(self, run_id: str) -> FineTuneRun:
        return self.runs.get(run_id)

    def list(
        self, *, limit: int = 20, offset: int = 0, status: str | None = None
    ) -> tuple[list[FineTuneRun], int]:
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}")
        query = select(FineTuneRun)
        count = select(func.count()).select_from(FineTuneRun)
        if status:
            query = query.where(FineTuneRun.status == status)
            count = count.where(FineTuneRun.status == status)
        with self.db.session() as session:
            total = session.scalar(count) or 0
            runs = session.scalars(
                query.order_by(FineTuneRun.started_at.desc(), FineTuneRun.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return list(runs), total

    def cancel(self, run_id: str) -> FineTuneRun:
        """Request cancellation. A queued run is cancelled at once; a running one at its next
        step (the trainer polls the flag), after which the worker marks it cancelled."""
        run = self.runs.get(run_id)
        if run.status in TERMINAL_STATUSES:
            raise RunConflictError(f"Run {run_id} is already {run.status}", run_id)
        self.runs.update(run_id, cancel_requested=True)
        # The value is when it was asked: the watchdog terminates a trainer that ignores it.
        self.redis.set(cancel_key(run_id), str(time.time()), ex=7 * 24 * 3600)
        if self.runs.cancel_pending(run_id):
            for task_id in json.loads(run.task_ids or "[]"):
                self.celery.control.revoke(task_id)
            from shared.events import Emitter, RedisPublisher

            Emitter(run_id, [RedisPublisher(self.redis)]).emit(
                "cancelled", status=STATUS_CANCELLED, message="Cancelled before it started"
            )
        return self.runs.get(run_id)
