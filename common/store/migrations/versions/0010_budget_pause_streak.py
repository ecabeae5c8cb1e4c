"""pauses of a provider budget in a row with no call accepted: a lone 429's held starts go
together, a storm's spread out

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("provider_budgets") as batch:
        batch.add_column(
            sa.Column("pause_streak", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("provider_budgets") as batch:
        batch.drop_column("pause_streak")
