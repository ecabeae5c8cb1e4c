"""Reads: jobs, their tasks and events, for GetJob, ListJobs, WatchJob and webhooks."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.states import TaskKind, TaskStatus
from common.store.tables import Event, Job, Task


async def get_job(session: AsyncSession, job_id: str) -> Job | None:
    return await session.get(Job, job_id, populate_existing=True)


async def task_counts(session: AsyncSession, job_id: str) -> dict[TaskStatus, int]:
    """Output tasks (segments, sets; not the story plan) per status."""
    rows = await session.execute(
        select(Task.status, func.count())
        .where(Task.job_id == job_id, Task.kind != TaskKind.STORY_PLAN)
        .group_by(Task.status)
    )
    return {TaskStatus(status): n for status, n in rows.all()}


async def any_recoverable(session: AsyncSession, job_id: str) -> bool:
    found = await session.scalar(
        select(Task.id)
        .where(
            Task.job_id == job_id,
            or_(
                Task.status.in_([TaskStatus.CANCELLED, TaskStatus.SKIPPED]),
                (Task.status == TaskStatus.FAILED) & Task.recoverable.is_(True),
            ),
        )
        .limit(1)
    )
    return found is not None


async def list_jobs(
    session: AsyncSession,
    *,
    limit: int,
    kind: str | None = None,
    statuses: Sequence[str] = (),
    before: tuple[float, str] | None = None,
) -> Sequence[Job]:
    """Newest first; `before` is the (created_at, id) of the last job of the previous page."""
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if statuses:
        stmt = stmt.where(Job.status.in_(statuses))
    if before is not None:
        created_at, job_id = before
        stmt = stmt.where(
            or_(Job.created_at < created_at, (Job.created_at == created_at) & (Job.id < job_id))
        )
    return (await session.scalars(stmt)).all()


async def events_after(
    session: AsyncSession, job_id: str, cursor: int, limit: int = 500
) -> Sequence[Event]:
    return (
        await session.scalars(
            select(Event)
            .where(Event.job_id == job_id, Event.seq > cursor)
            .order_by(Event.seq)
            .limit(limit)
        )
    ).all()


async def task_by_request_id(session: AsyncSession, request_id: str) -> Task | None:
    return (
        await session.scalars(select(Task).where(Task.request_id == request_id).limit(1))
    ).first()


async def count_by_status(session: AsyncSession, table: str) -> dict[str, int]:
    """Rows of `jobs` or `tasks` per status (for /metrics)."""
    column = {"jobs": Job.status, "tasks": Task.status}[table]
    rows = await session.execute(select(column, func.count()).group_by(column))
    return {status: n for status, n in rows.all()}
