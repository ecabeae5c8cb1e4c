"""when a provider budget's pause began: a submit accepted after it ends the pause

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("provider_budgets") as batch:
        batch.add_column(sa.Column("paused_at", sa.Double(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("provider_budgets") as batch:
        batch.drop_column("paused_at")
