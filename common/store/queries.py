"""Reads: jobs, their tasks and events, for GetJob, ListJobs, WatchJob and webhooks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Integer, bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.records import EventRecord, JobRecord, TaskRecord
from common.domain.states import TaskStatus
from common.store.records import EVENT_COLUMNS, JOB_COLUMNS, TASK_COLUMNS, load_job
from common.store.tables import Event, Job, ProviderSlots, Task

# The reads every webhook and every feed makes, built once (see common.store.apply).
EVENTS_AFTER = (
    select(*EVENT_COLUMNS)
    .where(Event.job_id == bindparam("job_id"), Event.seq > bindparam("cursor"))
    .order_by(Event.seq)
    .limit(bindparam("limit", type_=Integer))
)
JOB_HEAD = select(Job.status, Job.last_seq).where(Job.id == bindparam("job_id"))
_TASK_BY_REQUEST = select(*TASK_COLUMNS).where(Task.request_id == bindparam("request_id")).limit(1)


async def get_job(session: AsyncSession, job_id: str) -> JobRecord | None:
    return await load_job(session, job_id)


async def task_counts(
    session: AsyncSession, job_ids: Sequence[str], output_kinds: Sequence[str]
) -> dict[str, dict[TaskStatus, int]]:
    """Output tasks (segments, sets; not a story's plan) per status, for each job."""
    counts: dict[str, dict[TaskStatus, int]] = {job_id: {} for job_id in job_ids}
    if not job_ids:
        return counts
    rows = await session.execute(
        select(Task.job_id, Task.status, func.count())
        .where(Task.job_id.in_(job_ids), Task.kind.in_(output_kinds))
        .group_by(Task.job_id, Task.status)
    )
    for job_id, status, n in rows.all():
        counts[job_id][TaskStatus(status)] = n
    return counts


async def recoverable_jobs(session: AsyncSession, job_ids: Sequence[str]) -> set[str]:
    """Those of `job_ids` with a task that RetryFailed may fix (recoverable failure, skipped or
    cancelled)."""
    if not job_ids:
        return set()
    found = await session.scalars(
        select(Task.job_id)
        .where(
            Task.job_id.in_(job_ids),
            or_(
                Task.status.in_([TaskStatus.CANCELLED, TaskStatus.SKIPPED]),
                (Task.status == TaskStatus.FAILED) & Task.recoverable.is_(True),
            ),
        )
        .distinct()
    )
    return set(found.all())


async def list_jobs(
    session: AsyncSession,
    *,
    limit: int,
    kind: str | None = None,
    statuses: Sequence[str] = (),
    before: tuple[float, str] | None = None,
    owner: str | None = None,
) -> list[JobRecord]:
    """Newest first; `before` is the (created_at, id) of the last job of the previous page;
    `owner`: only that owner's jobs (None: everyone's)."""
    stmt = select(*JOB_COLUMNS).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if owner is not None:
        stmt = stmt.where(Job.owner == owner)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if statuses:
        stmt = stmt.where(Job.status.in_(statuses))
    if before is not None:
        created_at, job_id = before
        stmt = stmt.where(
            or_(Job.created_at < created_at, (Job.created_at == created_at) & (Job.id < job_id))
        )
    return [JobRecord.of(r) for r in await session.execute(stmt)]


async def events_after(
    session: AsyncSession, job_id: str, cursor: int, limit: int = 500
) -> list[EventRecord]:
    params = {"job_id": job_id, "cursor": cursor, "limit": limit}
    return [EventRecord(*row) for row in await session.execute(EVENTS_AFTER, params)]


async def task_by_request_id(session: AsyncSession, request_id: str) -> TaskRecord | None:
    row = (await session.execute(_TASK_BY_REQUEST, {"request_id": request_id})).first()
    return None if row is None else TaskRecord.of(row)


async def count_by_status(session: AsyncSession, table: str) -> dict[tuple[str, str], int]:
    """Rows of `jobs` or `tasks` per (kind, status) (for /metrics)."""
    kind, status = {"jobs": (Job.kind, Job.status), "tasks": (Task.kind, Task.status)}[table]
    rows = await session.execute(select(kind, status, func.count()).group_by(kind, status))
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for row_kind, row_status, n in rows.all():
        counts[(row_kind, row_status)] += n
    return dict(counts)


async def slot_pools(session: AsyncSession) -> dict[str, tuple[int, int]]:
    """Pool -> (slots in use, limit)."""
    rows = await session.execute(
        select(ProviderSlots.name, ProviderSlots.in_flight, ProviderSlots.capacity)
    )
    return {name: (used, limit) for name, used, limit in rows.all()}


async def reusable_result(
    session: AsyncSession, kind: str, payload_hash: str, *, since: float, exclude: int
) -> TaskRecord | None:
    """The most recent succeeded task of `kind` with the same input, finished after `since`."""
    row = (
        await session.execute(
            select(*TASK_COLUMNS)
            .where(
                Task.payload_hash == payload_hash,
                Task.status == TaskStatus.SUCCEEDED,
                Task.kind == kind,
                Task.updated_at >= since,
                Task.id != exclude,
            )
            .order_by(Task.updated_at.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else TaskRecord.of(row)
