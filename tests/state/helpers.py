"""What the state tests share: jobs made through the store, and reads of what it holds."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.changes import ChangeSet as Tx
from common.domain.changes import Failure, StoreTimings
from common.domain.kinds import BUILTIN_KINDS
from common.domain.records import JobRecord, TaskRecord
from common.domain.states import TaskKind, TaskStatus
from common.store import jobs, queries, sweeps
from common.store.apply import Batch
from common.store.database import Database
from common.store.records import load_tasks
from common.store.tables import Task

T = TaskStatus
TIMINGS = StoreTimings(stale_after=60, queued_stale_after=600)


async def apply(
    db: Database, tx: Tx, work: Callable[[AsyncSession, Tx], Awaitable[Any]] | None = None
) -> Any:
    """Apply one record as the committer does; raise its error like `commit` would."""
    async with db.write() as session:
        result = await work(session, tx) if work else None
        await Batch(await session.connection(), tx.now, TIMINGS, BUILTIN_KINDS).run([tx])
    if tx.error is not None:
        raise tx.error
    return result


def claim_overdue(session: AsyncSession, tx: Tx) -> Awaitable[int]:
    return sweeps.claim_overdue(session, tx, BUILTIN_KINDS)


def new_tx(now: float | None = None) -> Tx:
    return Tx(now=time.time() if now is None else now, timings=TIMINGS)


def video_job(job_id: str, n: int, key: str | None = None, digest: str = "h") -> jobs.NewJob:
    return jobs.NewJob(
        id=job_id,
        kind="video",
        priority=2,
        idempotency_key=key,
        request_hash=digest,
        params={"total_segments": n},
        max_attempts=2,
        tasks=[
            jobs.NewTask(index=i, kind=TaskKind.VIDEO_SEGMENT, payload={"i": i})
            for i in range(1, n + 1)
        ],
        plural="segments",
    )


async def create(db: Database, job: jobs.NewJob, now: float | None = None) -> tuple[str, bool]:
    return await apply(db, new_tx(now), lambda s, tx: jobs.create_job(s, tx, job))


async def tasks_of(db: Database, job_id: str) -> list[TaskRecord]:
    async with db.read() as session:
        return await load_tasks(session, Task.job_id == job_id)


async def job_of(db: Database, job_id: str) -> JobRecord:
    async with db.read() as session:
        job = await queries.get_job(session, job_id)
    assert job is not None
    return job


async def cursors(db: Database, job_id: str) -> list[int]:
    async with db.read() as session:
        return [e.seq for e in await queries.events_after(session, job_id, 0, 100_000)]


async def move(db: Database, task: TaskRecord, *path: TaskStatus, **values: Any) -> TaskRecord:
    for status in path:
        tx = new_tx()
        failure = Failure("boom", "bad_request", False) if status is T.FAILED else None
        tx.change(task, status, message=status.value, failure=failure, **values)
        await apply(db, tx)
        task = tx.after(task)
    return task
