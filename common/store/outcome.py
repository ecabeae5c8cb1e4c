"""How a job ends: its outcome and message, from its output tasks once none is open."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from common.domain.states import JobStatus, TaskKind, TaskStatus, job_outcome
from common.store.tables import Base, Task

_tasks = Base.metadata.tables[Task.__tablename__]


async def finish(
    conn: AsyncConnection, job_id: str, kind: str, *, cancelled: bool
) -> tuple[JobStatus, str]:
    """The terminal status of a job with no open task, and a message naming what is not done."""
    output = (_tasks.c.job_id == job_id, _tasks.c.kind != TaskKind.STORY_PLAN)
    counts = {
        r[0]: r[1]
        for r in await conn.execute(
            select(_tasks.c.status, func.count()).where(*output).group_by(_tasks.c.status)
        )
    }
    not_done = (
        await conn.scalars(
            select(_tasks.c.index)
            .where(*output, _tasks.c.status != TaskStatus.SUCCEEDED)
            .order_by(_tasks.c.index)
            .limit(21)
        )
    ).all()
    succeeded = counts.get(TaskStatus.SUCCEEDED, 0)
    total = sum(counts.values())
    outcome = job_outcome(succeeded=succeeded, unsuccessful=total - succeeded, cancelled=cancelled)
    noun = "sets" if kind == "story" else "segments"
    message = f"{succeeded} of {total} {noun} succeeded"
    if not_done:
        shown = ", ".join(str(i) for i in not_done[:20])
        message += f"; not done: {shown}{'…' if len(not_done) > 20 else ''}"
    return outcome, message
