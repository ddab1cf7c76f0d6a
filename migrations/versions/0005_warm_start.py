"""warm start: the adapter a run continues training (its parent)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.add_column(sa.Column("parent_adapter", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.drop_column("parent_adapter")
