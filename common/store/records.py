"""Reading tasks, jobs and events as immutable records (common.domain.records)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.records import EventRecord, JobRecord, TaskRecord
from common.store.database import Database
from common.store.tables import Event, Job, Task

TASK_COLUMNS = [Task.__table__.c[f.name] for f in fields(TaskRecord)]
JOB_COLUMNS = [Job.__table__.c[f.name] for f in fields(JobRecord)]
# In field order: `EventRecord(*row)`.
EVENT_COLUMNS = [Event.__table__.c[f.name] for f in fields(EventRecord)]
# Built once: SQLAlchemy then computes its cache key once, not on every load.
_TASKS_BY_ID = select(*TASK_COLUMNS).where(Task.id.in_(bindparam("ids", expanding=True)))


async def load_tasks(session: AsyncSession, *where: Any) -> list[TaskRecord]:
    rows = await session.execute(select(*TASK_COLUMNS).where(*where).order_by(Task.index))
    return [TaskRecord.of(r) for r in rows]


async def load_job(session: AsyncSession, job_id: str) -> JobRecord | None:
    row = (await session.execute(select(*JOB_COLUMNS).where(Job.id == job_id))).one_or_none()
    return None if row is None else JobRecord.of(row)


class TaskLoader:
    """Loads tasks by id, batching concurrent loads into one query.

    Every message a worker handles starts by reading its task; with dozens of messages in
    flight, one `WHERE id IN (...)` per round replaces dozens of single-row queries (each a
    thread hop through aiosqlite). While one round is in flight the next one gathers.
    """

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self.db = db
        self.max_batch = max_batch
        self._waiting: dict[int, list[asyncio.Future[TaskRecord | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def load(self, task_id: int) -> TaskRecord | None:
        future: asyncio.Future[TaskRecord | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="task-loader")
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            ids = list(self._waiting)[: self.max_batch]
            waiters = {i: self._waiting.pop(i) for i in ids}
            try:
                found = await self._read(ids)
            except Exception as exc:
                for futures in waiters.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(exc)
                continue
            for task_id, futures in waiters.items():
                for f in futures:
                    if not f.done():
                        f.set_result(found.get(task_id))

    async def _read(self, ids: list[int]) -> dict[int, TaskRecord]:
        thread = self.db.task_reads
        if thread is not None:  # SQLite: in one trip (common.store.threaded)
            return await thread.read(lambda conn: _by_id(conn.execute(_TASKS_BY_ID, {"ids": ids})))
        async with self.db.read() as session:
            return _by_id(await session.execute(_TASKS_BY_ID, {"ids": ids}))

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _by_id(rows: Iterable[Sequence[Any]]) -> dict[int, TaskRecord]:
    # The columns are the record's fields, in order.
    return {r[0]: TaskRecord(*r) for r in rows}
