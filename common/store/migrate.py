"""Run Alembic migrations on an open connection (every process does so at start).

Concurrent starts are safe: on PostgreSQL the upgrade runs under an advisory lock; on SQLite the
write transaction begins IMMEDIATE, which serialises it. The second process finds the schema at
head and does nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant; identifies this schema's migration lock among other advisory locks.
_PG_LOCK_KEY = 0x6F726368


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    command.upgrade(alembic_config(connection), "head")
