"""preference training: pair counts on runs; stage and DPO figures on progress points

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DPO_FIGURES = ("rewards_margins", "rewards_accuracies", "logps_chosen", "logps_rejected")


def upgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.add_column(sa.Column("train_pairs", sa.Integer()))
        batch.add_column(sa.Column("val_pairs", sa.Integer()))
    with op.batch_alter_table("finetune_progress") as batch:
        batch.add_column(sa.Column("stage", sa.String(8)))
        for name in DPO_FIGURES:
            batch.add_column(sa.Column(name, sa.Float()))


def downgrade() -> None:
    with op.batch_alter_table("finetune_progress") as batch:
        for name in reversed(DPO_FIGURES):
            batch.drop_column(name)
        batch.drop_column("stage")
    with op.batch_alter_table("finetune_runs") as batch:
        batch.drop_column("val_pairs")
        batch.drop_column("train_pairs")
