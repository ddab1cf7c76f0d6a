"""run liveness: heartbeat_at, phase, attempts, current_task_id (watchdog and crash resume)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime()))
        batch.add_column(sa.Column("phase", sa.String(16)))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("current_task_id", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.drop_column("current_task_id")
        batch.drop_column("attempts")
        batch.drop_column("phase")
        batch.drop_column("heartbeat_at")
