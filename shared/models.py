"""SQLAlchemy models of seed §3: `finetune_runs` and `finetune_progress`.

Columns, CHECK constraints and indexes follow the seed; the extra columns are marked.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.names import RUN_STATUSES, TRIGGERS
from shared.run_config import FineTuneConfig


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    pass


class FineTuneRun(Base):
    __tablename__ = "finetune_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="ck_finetune_runs_status"),
        CheckConstraint(_in("triggered_by", TRIGGERS), name="ck_finetune_runs_triggered_by"),
        Index("idx_finetune_status", "status"),
        Index("idx_finetune_started", "started_at"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    started_at: Mapped[datetime | None] = mapped_column(
        DateTime, default=utcnow, server_default=func.current_timestamp()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="pending")
    triggered_by: Mapped[str] = mapped_column(Text, nullable=False, default="manual")
    base_model: Mapped[str] = mapped_column(Text, nullable=False)
    traces_used: Mapped[int | None] = mapped_column(Integer, default=0)
    train_examples: Mapped[int | None] = mapped_column(Integer, default=0)
    val_examples: Mapped[int | None] = mapped_column(Integer, default=0)
    # --- extra columns: preference pairs exported for the DPO stage ---
    train_pairs: Mapped[int | None] = mapped_column(Integer)
    val_pairs: Mapped[int | None] = mapped_column(Integer)
    lora_path: Mapped[str | None] = mapped_column(Text)
    config: Mapped[str] = mapped_column(Text, nullable=False)  # JSON: FineTuneConfig
    metrics: Mapped[str | None] = mapped_column(Text)  # JSON: FineTuneMetrics
    error_message: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(Text)
    export_dir: Mapped[str | None] = mapped_column(Text)
    # --- extra columns ---
    # 1 while the run is pending or running, NULL otherwise: a UNIQUE column, so the database
    # itself refuses a second active run (NULLs never collide, on SQLite and PostgreSQL alike).
    active_slot: Mapped[int | None] = mapped_column(Integer, unique=True)
    backend: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(32))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    task_ids: Mapped[str | None] = mapped_column(Text)  # JSON list of Celery task ids
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # --- liveness (migration 0002): the watchdog reads these ---
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    # exporting | queued | training | evaluating: only a working phase must keep beating
    phase: Mapped[str | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    current_task_id: Mapped[str | None] = mapped_column(String(64))
    # --- migration 0003: the promotion gate's decision (JSON, shared.promotion.decide) ---
    promotion: Mapped[str | None] = mapped_column(Text)
    # --- migration 0005: the adapter this run continues (initFrom "active"), else NULL ---
    parent_adapter: Mapped[str | None] = mapped_column(Text)

    def config_dict(self) -> dict[str, Any]:
        """The stored config as the API shows it (camelCase)."""
        return json.loads(self.config)

    def run_config(self) -> FineTuneConfig:
        """The stored config, typed: what the pipeline's steps read."""
        return FineTuneConfig.model_validate_json(self.config)

    def metrics_dict(self) -> dict[str, Any] | None:
        return json.loads(self.metrics) if self.metrics else None

    def promotion_dict(self) -> dict[str, Any] | None:
        return json.loads(self.promotion) if self.promotion else None


class FineTuneProgress(Base):
    __tablename__ = "finetune_progress"
    __table_args__ = (Index("idx_progress_run", "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(Text, ForeignKey("finetune_runs.id"), nullable=False)
    timestamp: Mapped[datetime | None] = mapped_column(
        DateTime, default=utcnow, server_default=func.current_timestamp()
    )
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    total_steps: Mapped[int] = mapped_column(Integer, nullable=False)
    loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[int | None] = mapped_column(Integer)
    # --- extra column: 'progress' or 'eval' (seed §5.1 event type) ---
    event_type: Mapped[str] = mapped_column(String(16), nullable=False, default="progress")
    # --- extra columns: the training stage ('sft', 'dpo'; NULL before it existed) and the DPO
    # stage's own figures (ProgressEvent) ---
    stage: Mapped[str | None] = mapped_column(String(8))
    rewards_margins: Mapped[float | None] = mapped_column(Float)
    rewards_accuracies: Mapped[float | None] = mapped_column(Float)
    logps_chosen: Mapped[float | None] = mapped_column(Float)
    logps_rejected: Mapped[float | None] = mapped_column(Float)
