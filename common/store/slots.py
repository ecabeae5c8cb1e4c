"""Provider slot rows (one per provider, its concurrency limit across every worker), and the
queries that find the waiting tasks a freed slot may go to."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from sqlalchemy import BindParameter, Integer, Select, bindparam, func, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.states import TaskStatus
from common.store.tables import Base, ProviderSlots, Task

_tasks = Base.metadata.tables[Task.__tablename__]
# A job with fewer waiting tasks than asked for has no bound: all of them (task ids are BIGINT).
_NO_BOUND = 2**62


async def ensure_slots(session: AsyncSession, provider: str, capacity: int) -> None:
    """Create the provider's slot row, or set its capacity (from the workers' settings)."""
    dialect = session.get_bind().dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(ProviderSlots).values(
        name=provider, in_flight=0, capacity=capacity
    )
    await session.execute(
        stmt.on_conflict_do_update(index_elements=["name"], set_={"capacity": capacity})
    )


@functools.cache
def oldest_waiting(kinds: tuple[str, ...], dialect: str) -> Select[tuple[int, str]]:
    """Each job's oldest WAITING tasks of `kinds` (id, job id), in one statement for the
    `dialect`'s database: parameters `per_job` (how many at most) and `exclude` (task ids left
    out, the batch's own).

    The jobs come from a skip scan on `ix_tasks_grant` (a recursive query hopping from one job
    id to the next: one index seek per job however many tasks wait), then each job's range of
    that index gives its first `per_job`. Ranking every waiting task instead
    (`row_number() over (partition by job_id)`) read them all on each grant: on a SQLite
    file, 4.9 ms with 1,000 waiting and 22 ms with 10,000, against 0.5 and 0.3 ms. Built once
    per pool's kinds."""
    exclude: BindParameter[list[int]] = bindparam("exclude", expanding=True)
    per_job = bindparam("per_job", type_=Integer)

    def waiting(table: Any) -> Any:
        return (
            (table.c.status == TaskStatus.WAITING)
            & table.c.kind.in_(kinds)
            & table.c.id.not_in(exclude)
        )

    def first_job(table: Any, *after: Any) -> Any:
        # ORDER BY ... LIMIT 1 stops at the first entry of the index that passes `exclude`;
        # min() would read every entry past `after`.
        return (
            select(table.c.job_id)
            .where(waiting(table), *after)
            .order_by(table.c.job_id)
            .limit(1)
            .scalar_subquery()
        )

    found = select(first_job(_tasks).label("job_id")).cte("waiting_jobs", recursive=True)
    hop = _tasks.alias("hop")
    found = found.union_all(
        select(first_job(hop, hop.c.job_id > found.c.job_id)).where(found.c.job_id.is_not(None))
    )
    if dialect == "postgresql":
        head = (
            select(_tasks.c.id, _tasks.c.job_id)
            .where(waiting(_tasks), _tasks.c.job_id == found.c.job_id)
            .order_by(_tasks.c.id)
            .limit(per_job)
            .lateral("head")
        )
        return (
            select(head.c.id, head.c.job_id)
            .select_from(found)
            .join(head, true())
            .where(found.c.job_id.is_not(None))
        )
    # SQLite has no LATERAL: each job's `per_job`-th waiting task bounds its index range.
    last = _tasks.alias("last")
    bound = (
        select(last.c.id)
        .where(waiting(last), last.c.job_id == found.c.job_id)
        .order_by(last.c.id)
        .offset(per_job - 1)
        .limit(1)
        .scalar_subquery()
    )
    # Materialized: each job's bound is found once, not once per task row of the join (the
    # hint is SQLite 3.35's; an older one takes the CTE as it is: the same rows, slower).
    heads = (
        select(found.c.job_id, bound.label("bound")).where(found.c.job_id.is_not(None)).cte("heads")
    )
    if sqlite3.sqlite_version_info >= (3, 35):
        heads = heads.prefix_with("MATERIALIZED")
    # An outer join, so SQLite walks the jobs and, for each, its range of the index (an inner
    # join may be turned round into a scan of every waiting task). Each job found has a
    # waiting task, so no row comes back empty.
    return select(_tasks.c.id, _tasks.c.job_id).join_from(
        heads,
        _tasks,
        (_tasks.c.job_id == heads.c.job_id)
        & waiting(_tasks)
        & (_tasks.c.id <= func.coalesce(heads.c.bound, _NO_BOUND)),
        isouter=True,
    )
