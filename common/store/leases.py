"""Worker leases in the `workers` table: renewed by each worker's heartbeat, read when a task is
found mid-call to decide whether its worker is still alive."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from common.store.tables import Worker


async def renew(
    session: AsyncSession, worker_id: str, queue: str, *, now: float, until: float
) -> None:
    dialect = session.get_bind().dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(Worker).values(
        id=worker_id, queue=queue, started_at=now, lease_until=until
    )
    await session.execute(
        stmt.on_conflict_do_update(index_elements=["id"], set_={"lease_until": until})
    )


async def lease_until(session: AsyncSession, worker_id: str) -> float | None:
    return await session.scalar(select(Worker.lease_until).where(Worker.id == worker_id))


async def release(session: AsyncSession, worker_id: str) -> None:
    await session.execute(delete(Worker).where(Worker.id == worker_id))


async def expire_older_than(session: AsyncSession, cutoff: float) -> int:
    """Forget leases that ended long ago (workers that died and never came back)."""
    result = await session.execute(delete(Worker).where(Worker.lease_until < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
