"""Engines and sessions for the state store: SQLite (default) or PostgreSQL (DATABASE_URL).

SQLite is tuned for several processes sharing one file: WAL (readers never block the writer),
a busy timeout (writers of other processes wait instead of failing), and write transactions that
start with BEGIN IMMEDIATE (a deferred transaction that reads and then writes fails with
SQLITE_BUSY when another process wrote in between; IMMEDIATE takes the write lock up front).
Inside one process the write engine has a single connection, so coroutines queue for it in
asyncio instead of spinning in SQLite's busy handler. Reads use a second engine with ordinary
deferred transactions, so watchers never wait for writers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from common import tracing
from common.store.migrate import upgrade_to_head
from common.store.threaded import SqliteThread

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_engine(
    url: URL, *, immediate: bool, pool_size: int, foreign_keys: bool = True
) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)
    tune_sqlite(engine.sync_engine, immediate=immediate, foreign_keys=foreign_keys)
    return engine


def tune_sqlite(
    engine: Engine,
    *,
    immediate: bool,
    foreign_keys: bool = True,
    read_only: bool = False,
    begin: bool = True,
) -> None:
    """Pragmas on every new connection of a SQLite engine (`read_only`: it refuses writes), and
    BEGIN (IMMEDIATE for writers) taken over; `begin=False`: no BEGIN at all, each statement
    its own transaction (for reads of a single statement)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver, so BEGIN is ours (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        if read_only:
            cursor.execute("PRAGMA query_only = ON")
        cursor.close()

    if not begin:
        return

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """The write and read engines of one database, and sessions bound to them."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        # Group-commit batches written, and tasks loaded by id, in one trip each (SQLite on
        # disk; common.store.threaded).
        self.batch_writer: SqliteThread | None = None
        self.task_reads: SqliteThread | None = None
        if self.is_sqlite:
            if self.on_disk:
                Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
            self.write_engine = _sqlite_engine(parsed, immediate=True, pool_size=1)
            self.read_engine = _sqlite_engine(parsed, immediate=False, pool_size=4)
            if self.on_disk:  # an in-memory database is one connection's alone
                self.batch_writer = SqliteThread(
                    parsed, partial(tune_sqlite, immediate=True), "batch-writer"
                )
                self.task_reads = SqliteThread(
                    # One statement per read (common.store.records): no BEGIN and COMMIT
                    # around it, a third of a read's cost.
                    parsed,
                    partial(tune_sqlite, immediate=False, read_only=True, begin=False),
                    "task-reads",
                    transactions=False,
                )
                tracing.instrument_engine(self.batch_writer.engine)
                tracing.instrument_engine(self.task_reads.engine)
        else:
            self.write_engine = create_async_engine(parsed, pool_size=10, max_overflow=10)
            self.read_engine = self.write_engine
        tracing.instrument_engine(self.write_engine)
        if self.read_engine is not self.write_engine:
            tracing.instrument_engine(self.read_engine)
        self._writer = async_sessionmaker(
            self.write_engine, expire_on_commit=False, autoflush=False
        )
        self._reader = async_sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)

    @property
    def on_disk(self) -> bool:
        """A SQLite file (not an in-memory database, which only its own connection sees)."""
        database = self.url.database or ""
        return self.is_sqlite and database not in ("", ":memory:") and "mode=memory" not in database

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)})"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in a write transaction, committed on normal exit, rolled back on error."""
        async with self._writer() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads (one consistent snapshot per transaction)."""
        async with self._reader() as session, session.begin():
            yield session

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision; safe to call from many processes.

        On SQLite the migration runs on a connection of its own with foreign keys off: a schema
        change there rebuilds the table (copy, drop, rename), and dropping a parent table with
        foreign keys on would cascade-delete its children.
        """
        if not self.is_sqlite:
            async with self.write_engine.begin() as conn:
                await conn.run_sync(upgrade_to_head)
            return
        engine = _sqlite_engine(self.url, immediate=True, pool_size=1, foreign_keys=False)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade_to_head)
        finally:
            await engine.dispose()

    async def close(self) -> None:
        for thread in (self.batch_writer, self.task_reads):
            if thread is not None:
                await thread.close()
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


@asynccontextmanager
async def open_database(url: str, *, migrate: bool = True) -> AsyncIterator[Database]:
    db = Database(url)
    try:
        if migrate:
            await db.migrate()
        yield db
    finally:
        await db.close()
