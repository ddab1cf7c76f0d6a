"""finetune_runs and finetune_progress (seed §3.1, §3.2)

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = "'pending', 'running', 'completed', 'failed', 'cancelled'"
TRIGGERS = "'manual', 'scheduled', 'api'"


def upgrade() -> None:
    op.create_table(
        "finetune_runs",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("started_at", sa.DateTime(), server_default=sa.func.current_timestamp()),
        sa.Column("completed_at", sa.DateTime()),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("triggered_by", sa.Text(), nullable=False, server_default="manual"),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("traces_used", sa.Integer(), server_default="0"),
        sa.Column("train_examples", sa.Integer(), server_default="0"),
        sa.Column("val_examples", sa.Integer(), server_default="0"),
        sa.Column("lora_path", sa.Text()),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text()),
        sa.Column("error_message", sa.Text()),
        sa.Column("log_path", sa.Text()),
        sa.Column("export_dir", sa.Text()),
        sa.Column("active_slot", sa.Integer(), unique=True),
        sa.Column("backend", sa.String(16)),
        sa.Column("error_code", sa.String(32)),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("task_ids", sa.Text()),
        sa.Column("updated_at", sa.DateTime()),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="ck_finetune_runs_status"),
        sa.CheckConstraint(f"triggered_by IN ({TRIGGERS})", name="ck_finetune_runs_triggered_by"),
    )
    op.create_index("idx_finetune_status", "finetune_runs", ["status"])
    op.create_index("idx_finetune_started", "finetune_runs", ["started_at"])
    op.create_table(
        "finetune_progress",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Text(), sa.ForeignKey("finetune_runs.id"), nullable=False),
        sa.Column("timestamp", sa.DateTime(), server_default=sa.func.current_timestamp()),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float()),
        sa.Column("eval_loss", sa.Float()),
        sa.Column("learning_rate", sa.Float()),
        sa.Column("eta_seconds", sa.Integer()),
        sa.Column("event_type", sa.String(16), nullable=False, server_default="progress"),
    )
    op.create_index("idx_progress_run", "finetune_progress", ["run_id"])


def downgrade() -> None:
    op.drop_index("idx_progress_run", table_name="finetune_progress")
    op.drop_table("finetune_progress")
    op.drop_index("idx_finetune_started", table_name="finetune_runs")
    op.drop_index("idx_finetune_status", table_name="finetune_runs")
    op.drop_table("finetune_runs")
