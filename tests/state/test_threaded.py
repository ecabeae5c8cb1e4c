"""SQLite work in one trip (common.store.threaded): the group committer's batches on the writer
thread commit or roll back as a whole, and the batch code runs unchanged against the thread's
synchronous connection."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import OperationalError

from common.store.database import open_database
from common.store.tables import Job
from common.store.threaded import SyncConnection, run_to_end

JOB = {
    "id": "j1",
    "kind": "video",
    "status": "RUNNING",
    "params": {},
    "request_hash": "h",
    "total_tasks": 0,
    "open_tasks": 0,
    "created_at": 0.0,
    "updated_at": 0.0,
}


async def _count_jobs(conn: SyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).select_from(Job)))


async def test_a_write_on_the_thread_commits_and_async_readers_see_it(tmp_path: Path) -> None:
    async with open_database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as db:
        assert db.batch_writer is not None
        loop_thread = threading.get_ident()

        def write(conn: Connection) -> tuple[int, int]:
            conn.execute(insert(Job).values(**JOB))
            return threading.get_ident(), run_to_end(_count_jobs(SyncConnection(conn)))

        thread, seen = await db.batch_writer.transaction(write)
        assert thread != loop_thread
        assert seen == 1
        async with db.read() as session:
            assert await session.scalar(select(Job.status).where(Job.id == "j1")) == "RUNNING"


async def test_a_write_that_raises_on_the_thread_leaves_nothing(tmp_path: Path) -> None:
    async with open_database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as db:
        assert db.batch_writer is not None

        def write(conn: Connection) -> None:
            conn.execute(insert(Job).values(**JOB))
            raise LookupError("no such task")

        with pytest.raises(LookupError):
            await db.batch_writer.transaction(write)
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(Job)) == 0


def test_run_to_end_refuses_a_step_that_awaits_anything_else() -> None:
    async def step() -> int:
        await asyncio.sleep(0)
        return 1

    with pytest.raises(RuntimeError, match="awaited something besides its connection"):
        run_to_end(step())


async def test_task_reads_see_each_commit_and_refuse_writes(tmp_path: Path) -> None:
    """The task-reads thread reads outside any transaction: no snapshot is kept from one read
    to the next (each sees what was committed before it), and its connection writes nothing."""
    async with open_database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as db:
        assert db.batch_writer is not None and db.task_reads is not None

        def count(conn: Connection) -> int:
            return int(conn.scalar(select(func.count()).select_from(Job)))

        assert await db.task_reads.read(count) == 0
        await db.batch_writer.transaction(lambda conn: conn.execute(insert(Job).values(**JOB)))
        assert await db.task_reads.read(count) == 1

        def write(conn: Connection) -> None:
            conn.execute(insert(Job).values(**{**JOB, "id": "j2"}))

        with pytest.raises(OperationalError, match="readonly"):
            await db.task_reads.read(write)
        assert await db.task_reads.read(count) == 1
        # No transaction is offered where none would be atomic.
        with pytest.raises(RuntimeError, match="not atomic"):
            await db.task_reads.transaction(count)
