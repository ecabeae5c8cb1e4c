"""job owners (idempotency keys unique per owner) and worker leases

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("owner", sa.String(length=64), server_default=sa.text("''"), nullable=False)
        )
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_jobs_owner_idempotency_key", ["owner", "idempotency_key"]
        )
        batch.create_index("ix_jobs_owner_created", ["owner", "created_at", "id"], unique=False)
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("worker", sa.String(length=64), nullable=True))
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("lease_until", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    with op.batch_alter_table("workers") as batch:
        batch.create_index("ix_workers_lease", ["lease_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_index("ix_workers_lease")
    op.drop_table("workers")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("worker")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_owner_created")
        batch.drop_constraint("uq_jobs_owner_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch.drop_column("owner")
