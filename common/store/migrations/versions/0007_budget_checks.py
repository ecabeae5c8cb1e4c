"""provider calls besides attempt starts (status checks) per minute, for the retry budget

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("provider_budgets") as batch:
        batch.add_column(sa.Column("checks", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("prev_checks", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("provider_budgets") as batch:
        batch.drop_column("prev_checks")
        batch.drop_column("checks")
