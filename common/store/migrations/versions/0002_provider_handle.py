"""provider handle: the adapter's opaque JSON instead of fal's three URL columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_URLS = ("status_url", "response_url", "cancel_url")


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("handle", sa.JSON(), nullable=True))
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.Integer()),
        sa.column("handle", sa.JSON()),
        *(sa.column(name, sa.Text()) for name in _URLS),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(tasks.c.id, *(tasks.c[name] for name in _URLS)).where(
            tasks.c.status_url.is_not(None)
        )
    ).all()
    if rows:
        conn.execute(
            sa.update(tasks).where(tasks.c.id == sa.bindparam("_id")),
            [{"_id": r.id, "handle": {name: r._mapping[name] for name in _URLS}} for r in rows],
        )
    with op.batch_alter_table("tasks") as batch:
        for name in _URLS:
            batch.drop_column(name)


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for name in _URLS:
            batch.add_column(sa.Column(name, sa.Text(), nullable=True))
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.Integer()),
        sa.column("handle", sa.JSON()),
        *(sa.column(name, sa.Text()) for name in _URLS),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(tasks.c.id, tasks.c.handle).where(tasks.c.handle.is_not(None))
    ).all()
    if rows:
        conn.execute(
            sa.update(tasks).where(tasks.c.id == sa.bindparam("_id")),
            [{"_id": r.id, **{name: (r.handle or {}).get(name) for name in _URLS}} for r in rows],
        )
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("handle")
