"""A write transaction that publishes what it owes only after it committed.

Publishing after commit (never before) keeps invariant 1 ("nothing accepted is lost"): a
message never announces state that could still roll back, and if the process dies between
commit and publish, the task's deadline makes the sweeper re-issue the message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from common.broker import Broker, ProgressNote
from common.store.database import Database
from common.store.ledger import StoreTimings, Tx

log = logging.getLogger(__name__)


class UnitOfWork:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        timings: StoreTimings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.broker = broker
        self.timings = timings
        self.clock = clock

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """Yield a `Tx`; commit on exit, then publish its messages and progress notes.

        The caller may read `tx.finished` after the block to act on jobs it finished.
        """
        async with self.db.write() as session:
            tx = Tx(session=session, now=self.clock(), timings=self.timings)
            yield tx
        await self.flush(tx)

    async def flush(self, tx: Tx) -> None:
        if tx.outgoing:
            await self.broker.publish(tx.outgoing)
        await self.notify(tx.notes)

    async def notify(self, notes: dict[str, int]) -> None:
        """Wake the watchers of these jobs. A lost note only delays them until their next read."""
        if not notes:
            return
        try:
            await self.broker.notify([ProgressNote(job, cursor) for job, cursor in notes.items()])
        except Exception:
            log.warning("progress notification failed; watchers will catch up", exc_info=True)
