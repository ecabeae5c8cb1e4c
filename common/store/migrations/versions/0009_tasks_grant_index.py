"""an index for a freed slot's candidates: each job's oldest waiting tasks of a kind

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 03:45:00
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_grant", "tasks", ["status", "kind", "job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_grant", table_name="tasks")
