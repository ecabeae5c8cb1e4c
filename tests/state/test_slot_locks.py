"""Which batches lock a provider's slot row, on PostgreSQL (several processes, row locks).

Every process's batches that take or free a slot of a pool queue on that pool's row. A change
that keeps its task's slot (a submitted request's id recorded: most of a polled segment's
commits) has no business there: it must not wait for that lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text

from common.store.database import Database, open_database
from common.store.slots import ensure_slots
from common.store.tables import ProviderSlots
from tests.state.helpers import T, apply, create, new_tx, tasks_of, video_job
from tests.support.databases import fresh_postgres

GIVE_UP = 10.0  # seconds: far beyond any batch on an idle database


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Database]:
    async with fresh_postgres(postgres_url, "orch_test") as url, open_database(url) as db:
        yield db


async def test_recording_a_request_id_does_not_wait_for_the_slot_rows_lock(pg: Database) -> None:
    async with pg.write() as session:
        await ensure_slots(session, "fal", 2)
    await create(pg, video_job("j1", 1))
    (task,) = await tasks_of(pg, "j1")
    start = new_tx()
    start.start(task, message="submitting", deadline_at=start.now + 30)
    await apply(pg, start)
    submitted = start.after(task)
    assert (submitted.status, submitted.holds_slot) == (T.SUBMITTING, True)

    async with pg.write() as holder:
        # Another process's batch holds the pool's row (it is taking or freeing a slot).
        await holder.execute(select(ProviderSlots).with_for_update())
        running = new_tx()
        running.change(submitted, T.RUNNING, message="submitted", request_id="req-1")
        await asyncio.wait_for(apply(pg, running), GIVE_UP)
        # Freeing the slot does wait for it: the count must not be written by two at once.
        done = new_tx()
        done.change(running.after(submitted), T.SUCCEEDED, message="video ready")
        finishing = asyncio.create_task(apply(pg, done))
        await _until_a_lock_is_awaited(pg)
        assert not finishing.done()
    await asyncio.wait_for(finishing, GIVE_UP)

    (after,) = await tasks_of(pg, "j1")
    assert (after.status, after.request_id, after.holds_slot) == (T.SUCCEEDED, "req-1", False)
    async with pg.read() as session:
        assert await session.scalar(select(ProviderSlots.in_flight)) == 0


async def _until_a_lock_is_awaited(db: Database) -> None:
    """Return once some session of this database waits for a row lock."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(GIVE_UP):
        while True:
            async with db.read() as session:
                if await session.scalar(waiting):
                    return
            await asyncio.sleep(0.01)
