"""Group commit: change sets recorded by concurrent handlers, applied together.

A handler records its changes on a `ChangeSet` (common.domain.changes) and awaits `commit`. One
loop per process takes every change set waiting at that moment, applies them in one database
transaction (common.store.apply: a few set-based statements for the whole batch), and then,
only once committed, publishes the messages they owe and wakes the watchers of the jobs they
changed. While a batch is being written the next one gathers, so the batch size follows the
load without any timer. Authors hear of the commit once the batch's messages are published (or
given up on).

Publishing after commit (never before) keeps invariant 1: a message never announces state that
could still roll back, and if the process dies between commit and publish, the task's deadline
makes the sweeper re-issue the message.

Hooks add what every change set must carry (e.g. circuit-breaker transitions): each handler's
change set passes through every hook when it is committed, so no call site can forget them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from common import metrics, tracing
from common.broker import Broker, ProgressNote
from common.domain.changes import ChangeSet, StaleTask, StoreTimings
from common.domain.kinds import BUILTIN_KINDS, KindRegistry
from common.domain.messages import Send
from common.domain.scheduling import BudgetPolicy
from common.resilience import Backoff
from common.resilience.retrying import Sleep
from common.routing import outgoing_all
from common.store.apply import Batch
from common.store.apply import Connection as StoreConnection
from common.store.database import Database
from common.store.records import TaskLoader
from common.store.threaded import SyncConnection, run_to_end

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[AsyncSession, ChangeSet], Awaitable[Any]]

MAX_BATCH = 256
# A batch hit by a deadlock or a lock timeout (or an exclusive work that read stale rows) is
# run again, a few times, after a short jittered pause.
BATCH_RETRIES = Backoff(initial=0.02, multiplier=2.0, cap=0.2, max_retries=3)
_RETRYABLE_STATES = {"40P01", "40001"}  # PostgreSQL: deadlock detected, serialization failure


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _StaleWork):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return state in _RETRYABLE_STATES or "database is locked" in str(exc.orig)


class ChangeSetHook(Protocol):
    """Something every handler's change set carries (see the module docstring)."""

    @property
    def pending(self) -> bool:
        """True when the hook has something to attach (a commit is worth making for it)."""
        ...

    def attach(self, cs: ChangeSet) -> None: ...


@dataclass
class _Item:
    cs: ChangeSet
    done: asyncio.Future[Any]
    work: Work | None = None


class GroupCommitter:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        timings: StoreTimings,
        *,
        kinds: KindRegistry = BUILTIN_KINDS,
        policy: BudgetPolicy | None = None,
        budget_limits: Mapping[str, tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.db = db
        self.broker = broker
        self.timings = timings
        self.kinds = kinds
        self.policy = policy
        self.budget_limits = budget_limits
        self.clock = clock
        self.sleep = sleep
        self.max_batch = max_batch
        self.hooks: list[ChangeSetHook] = []
        # Reads of single tasks, batched the same way (every handled message starts with one).
        self.tasks = TaskLoader(db)
        self._pending: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: list[_Item] = []
        # Committed batches whose messages are being published (see `_process`).
        self._publishing: set[asyncio.Task[None]] = set()

    # API ------------------------------------------------------------------------------------

    def new_change_set(self) -> ChangeSet:
        return ChangeSet(now=self.clock(), timings=self.timings)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[ChangeSet]:
        """Yield a `ChangeSet` to record on; commit it on exit (StaleTask if it no longer
        applies). Read `cs.applied`, `cs.after(task)` and `cs.finished` after the block."""
        cs = self.new_change_set()
        yield cs
        await self.commit(cs)

    async def commit(self, cs: ChangeSet) -> None:
        for hook in self.hooks:
            hook.attach(cs)
        trace = tracing.current()  # the messages it owes continue this trace
        if trace is not None:
            cs.sends = [replace(s, trace=s.trace or trace) for s in cs.sends]
        await self._enqueue(_Item(cs, self._future()))

    @property
    def hooks_pending(self) -> bool:
        """A hook has something to attach: the next change set should be committed."""
        return any(hook.pending for hook in self.hooks)

    async def exclusive(self, work: Callable[[AsyncSession, ChangeSet], Awaitable[T]]) -> T:
        """Run `work(session, cs)` — reads and raw writes — and apply what it records on `cs`,
        alone in one transaction (for the gateway's job-level operations). If a row it read
        moved before the batch locked it, the transaction is rolled back and `work` runs again
        (so `work` must be safe to repeat)."""
        cs = self.new_change_set()
        result: T = await self._enqueue(_Item(cs, self._future(), work))
        return result

    async def close(self) -> None:
        """Finish what is queued, then stop the loop."""
        await self.tasks.close()
        waiting = [i.done for i in [*self._in_flight, *self._pending]]
        if waiting and self._loop_task is not None and not self._loop_task.done():
            await asyncio.gather(*waiting, return_exceptions=True)
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def send_now(self, *sends: Send) -> None:
        """Publish messages that announce no state change (e.g. the next poll of a request)."""
        trace = tracing.current()
        if trace is not None:
            sends = tuple(replace(s, trace=s.trace or trace) for s in sends)
        await self.broker.publish(outgoing_all(sends, self.kinds, self.clock()))

    async def notify(self, notes: dict[str, int]) -> None:
        """Wake the watchers of these jobs. A lost note only delays them until their next read."""
        if notes:
            await self.broker.notify([ProgressNote(job, cursor) for job, cursor in notes.items()])

    # The loop -------------------------------------------------------------------------------

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

    async def _write(self, batch: list[_Item]) -> tuple[Any, dict[str, int], list[Send]]:
        """One attempt at the batch's transaction."""
        work = batch[0].work
        if work is not None:
            # A work records afresh on every attempt (its reads may have changed).
            batch[0].cs = self.new_change_set()
        change_sets = [item.cs for item in batch]
        for cs in change_sets:
            cs.reset_results()
        writer = self.db.batch_writer
        if work is None and writer is not None:  # SQLite: the whole batch in one trip
            now = self.clock()

            def write(conn: Connection) -> tuple[Batch, list[Send]]:
                applied = self._batch(SyncConnection(conn), now)
                return applied, run_to_end(applied.run(change_sets))

            applied, sends = await writer.transaction(write)
            return None, applied.notes, sends
        result: Any = None
        async with self.db.write() as session:
            if work is not None:
                result = await work(session, change_sets[0])
            applied = self._batch(await session.connection(), self.clock())
            sends = await applied.run(change_sets)
            if work is not None:
                _roll_back_if_stale(change_sets[0])
        return result, applied.notes, sends

    def _batch(self, conn: StoreConnection, now: float) -> Batch:
        return Batch(
            conn,
            now,
            self.timings,
            self.kinds,
            policy=self.policy,
            budget_limits=self.budget_limits,
        )

    async def _process(self, batch: list[_Item]) -> None:
        retry = 0
        while True:
            try:
                started = time.perf_counter()
                result, notes, sends = await self._write(batch)
                metrics.commit_seconds.observe(time.perf_counter() - started)
                metrics.commit_batch_size.observe(len(batch))
                break
            except Exception as exc:
                retry += 1
                if retry <= BATCH_RETRIES.max_retries and _retryable(exc):
                    log.info("write batch retried (%s)", type(exc.__cause__ or exc).__name__)
                    await self.sleep(BATCH_RETRIES.delay(retry))
                    continue
                if isinstance(exc, _StaleWork):
                    exc = StaleTask(str(exc.__cause__))
                if not isinstance(exc, LookupError | ValueError) and batch[0].work is None:
                    log.exception("write batch of %d failed", len(batch))
                for item in batch:
                    _abort(item.cs)
                    _settle(item.done, error=exc)
                return
        # Committed. The next batch is written while this one's messages are published: waiting
        # here for the broker's confirms would hold every change set queued behind it.
        publishing = asyncio.create_task(self._publish(batch, result, notes, sends))
        self._publishing.add(publishing)
        publishing.add_done_callback(self._publishing.discard)

    async def _publish(
        self, batch: list[_Item], result: Any, notes: dict[str, int], sends: list[Send]
    ) -> None:
        """After a batch committed: wake watchers, publish the messages it owes (confirmed),
        then tell its change sets' authors (whatever happens here: they must never wait
        forever for a batch that committed)."""
        try:
            try:
                await self.notify(notes)
            except Exception as exc:  # a lost note only delays watchers until their next read
                log.warning("progress notes for %d jobs failed: %s", len(notes), exc)
            try:
                owed = outgoing_all(sends, self.kinds, self.clock())
                if owed:
                    await self.broker.publish(owed)
            except Exception as exc:
                # Not the change sets' failure: their state is committed, and every owed
                # message has a deadline after which the sweeper re-issues it (provider
                # cancels are best effort).
                log.warning("publishing %d owed messages failed: %s", len(sends), exc)
        finally:
            now = self.clock()
            for item in batch:
                if item.cs.error is not None:
                    _abort(item.cs)
                    _settle(item.done, error=item.cs.error)
                else:
                    _settle(item.done, result=result)
            _log_finished(batch, now)


def _log_finished(batch: list[_Item], now: float) -> None:
    """One line per job the batch finished (each of its change sets names the job)."""
    heads = {head.id: head for item in batch for head in item.cs.finished}
    for head in heads.values():
        seconds = now - head.created_at if head.created_at else None
        log.info(
            "job %s finished %s%s",
            head.id,
            head.status,
            f" after {seconds:.1f}s" if seconds is not None else "",
            extra={
                "event": "job_done",
                "job_id": head.id,
                "task_index": None,
                "status": head.status,
                "total_seconds": round(seconds, 3) if seconds is not None else None,
            },
        )


class _StaleWork(Exception):
    """An exclusive work's change set went stale inside its transaction: roll back, run again."""


def _roll_back_if_stale(cs: ChangeSet) -> None:
    # Rows the work read moved before the batch locked them (another process): raising inside
    # the transaction rolls its raw writes back, and the work runs again on fresh reads.
    if isinstance(cs.error, StaleTask):
        raise _StaleWork from cs.error


def _abort(cs: ChangeSet) -> None:
    for undo in cs.on_abort:
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
