"""promotion: the gate's decision and numbers for a completed run (JSON)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.add_column(sa.Column("promotion", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.drop_column("promotion")
