"""fair shares, deadlines, reuse, shared provider budgets, model durations

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("max_concurrency", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("deadline_at", sa.Double(), nullable=True))
        batch.add_column(
            sa.Column(
                "reuse_results", sa.Boolean(), server_default=sa.text("false"), nullable=False
            )
        )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("payload_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("history", sa.JSON(), nullable=True))
        batch.create_index("ix_tasks_holding", ["holds_slot", "kind"], unique=False)
        batch.create_index("ix_tasks_reuse", ["payload_hash", "status"], unique=False)
    op.create_table(
        "provider_budgets",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("paused_until", sa.Double(), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=False),
        sa.Column("tpm", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.Double(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("prev_requests", sa.Integer(), nullable=False),
        sa.Column("prev_retries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_provider_budgets")),
    )
    op.create_table(
        "model_stats",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("mean_seconds", sa.Double(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_model_stats")),
    )


def downgrade() -> None:
    op.drop_table("model_stats")
    op.drop_table("provider_budgets")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_reuse")
        batch.drop_index("ix_tasks_holding")
        batch.drop_column("history")
        batch.drop_column("expires_at")
        batch.drop_column("payload_hash")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reuse_results")
        batch.drop_column("deadline_at")
        batch.drop_column("max_concurrency")
