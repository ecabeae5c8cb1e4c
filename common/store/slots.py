"""Provider slot rows: one per provider, its concurrency limit across every worker."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from common.store.tables import ProviderSlots


async def ensure_slots(session: AsyncSession, provider: str, capacity: int) -> None:
    """Create the provider's slot row, or set its capacity (from the workers' settings)."""
    dialect = session.get_bind().dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(ProviderSlots).values(
        name=provider, in_flight=0, capacity=capacity
    )
    await session.execute(
        stmt.on_conflict_do_update(index_elements=["name"], set_={"capacity": capacity})
    )
