"""Group commit: units of work recorded by concurrent handlers, applied together.

A handler records its changes on a `Tx` (common.store.ledger) and awaits `commit`. One loop per
process takes every record waiting at that moment, applies them in one database transaction
(common.store.apply: a few set-based statements for the whole batch), and then, only once
committed, publishes the messages they owe and wakes the watchers of the jobs they changed.
While a batch is being written the next one gathers, so the batch size follows the load without
any timer.

Publishing after commit (never before) keeps invariant 1: a message never announces state that
could still roll back, and if the process dies between commit and publish, the task's deadline
makes the sweeper re-issue the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from common.broker import Broker, ProgressNote
from common.store.apply import Batch
from common.store.database import Database
from common.store.ledger import StaleTask, StoreTimings, Tx
from common.store.records import TaskLoader

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[AsyncSession, Tx], Awaitable[Any]]

MAX_BATCH = 256
ATTEMPTS = 4  # a batch hit by a deadlock or a lock timeout is run again
_RETRYABLE_STATES = {"40P01", "40001"}  # PostgreSQL: deadlock detected, serialization failure


def _retryable(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return state in _RETRYABLE_STATES or "database is locked" in str(exc.orig)


@dataclass
class _Item:
    tx: Tx
    done: asyncio.Future[Any]
    work: Work | None = None


class UnitOfWork:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        timings: StoreTimings,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.db = db
        self.broker = broker
        self.timings = timings
        self.clock = clock
        self.max_batch = max_batch
        # Reads of single tasks, batched the same way (every handled message starts with one).
        self.tasks = TaskLoader(db)
        self._pending: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: list[_Item] = []

    # API ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """Yield a `Tx` to record on; commit it on exit (StaleTask if it no longer applies).

        Read `tx.applied`, `tx.after(task)` and `tx.finished` after the block.
        """
        tx = Tx(now=self.clock(), timings=self.timings)
        yield tx
        await self.commit(tx)

    async def commit(self, tx: Tx) -> None:
        await self._enqueue(_Item(tx, self._future()))

    async def exclusive(self, work: Callable[[AsyncSession, Tx], Awaitable[T]]) -> T:
        """Run `work(session, tx)` — reads and raw writes — and apply what it records on `tx`,
        alone in one transaction (for the gateway's job-level operations). If a row it read
        moved before the batch locked it, the transaction is rolled back and `work` runs again
        (so `work` must be safe to repeat)."""
        tx = Tx(now=self.clock(), timings=self.timings)
        result: T = await self._enqueue(_Item(tx, self._future(), work))
        return result

    async def close(self) -> None:
        """Finish what is queued, then stop the loop."""
        await self.tasks.close()
        waiting = [i.done for i in [*self._in_flight, *self._pending]]
        if waiting and self._loop_task is not None and not self._loop_task.done():
            await asyncio.gather(*waiting, return_exceptions=True)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def notify(self, notes: dict[str, int]) -> None:
        """Wake the watchers of these jobs. A lost note only delays them until their next read."""
        if notes:
            await self.broker.notify([ProgressNote(job, cursor) for job, cursor in notes.items()])

    # The loop ----------------------------------------------------------------------------

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, item: _Item) -> Any:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run(), name="group-commit")
        self._pending.append(item)
        self._wake.set()
        return await item.done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft()]
                if batch[0].work is None:
                    while (
                        self._pending
                        and self._pending[0].work is None
                        and len(batch) < self.max_batch
                    ):
                        batch.append(self._pending.popleft())
                self._in_flight = batch
                try:
                    await self._process(batch)
                except Exception as exc:  # a bug: fail the batch, keep the loop alive
                    log.exception("group commit failed")
                    for item in batch:
                        _settle(item.done, error=exc)
                finally:
                    self._in_flight = []

    async def _process(self, batch: list[_Item]) -> None:
        work = batch[0].work
        result: Any = None
        for attempt in range(1, ATTEMPTS + 1):
            if work is not None:
                # A work records afresh on every attempt (its reads may have changed).
                batch[0].tx = Tx(now=self.clock(), timings=self.timings)
            txs = [item.tx for item in batch]
            for tx in txs:
                _reset(tx)
            try:
                async with self.db.write() as session:
                    if work is not None:
                        result = await work(session, txs[0])
                    applied = Batch(await session.connection(), self.clock(), self.timings)
                    owed = await applied.run(txs)
                    if work is not None:
                        _roll_back_if_stale(txs[0])
                break
            except Exception as exc:
                if attempt < ATTEMPTS and (_retryable(exc) or isinstance(exc, _StaleWork)):
                    log.info("write batch retried (%s)", type(exc.__cause__ or exc).__name__)
                    await asyncio.sleep(0.02 * attempt)
                    continue
                if isinstance(exc, _StaleWork):
                    exc = StaleTask(str(exc.__cause__))
                if not isinstance(exc, LookupError | ValueError) and work is None:
                    log.exception("write batch of %d failed", len(batch))
                for item in batch:
                    _abort(item.tx)
                    _settle(item.done, error=exc)
                return
        # Committed. Watchers hear of it first; the owed messages wait for the broker's confirms.
        await self.notify(applied.notes)
        try:
            if owed:
                await self.broker.publish(owed)
        except Exception as exc:
            # Not the records' failure: their state is committed, and every owed message has a
            # deadline after which the sweeper re-issues it (provider cancels are best effort).
            log.warning("publishing %d owed messages failed: %s", len(owed), exc)
        for item in batch:
            if item.tx.error is not None:
                _abort(item.tx)
                _settle(item.done, error=item.tx.error)
            else:
                _settle(item.done, result=result)


class _StaleWork(Exception):
    """An exclusive work's record went stale inside its transaction: roll back, run again."""


def _roll_back_if_stale(tx: Tx) -> None:
    # Rows the work read moved before the batch locked them (another process): raising inside
    # the transaction rolls its raw writes back, and the work runs again on fresh reads.
    if isinstance(tx.error, StaleTask):
        raise _StaleWork from tx.error


def _reset(tx: Tx) -> None:
    tx.error = None
    tx.applied.clear()
    tx.written.clear()
    tx.notes.clear()
    tx.finished.clear()


def _abort(tx: Tx) -> None:
    for undo in tx.on_abort:
        try:
            undo()
        except Exception:
            log.exception("abort hook failed")


def _settle(
    done: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    if done.done():  # the caller gave up waiting (cancelled); the work still happened
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)
