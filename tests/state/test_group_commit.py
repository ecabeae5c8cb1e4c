"""The group committer on the real store, SQLite and PostgreSQL: concurrent change sets applied
together, batches retried and rerun, and when the authors hear of a commit against the messages
it owes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from common.broker import BrokerError, MemoryBroker, Topology
from common.committer import GroupCommitter
from common.domain.changes import StaleTask
from common.domain.events import EventDraft, EventType
from common.domain.kinds import BUILTIN_KINDS
from common.domain.messages import MessageKind, TaskMessage
from common.domain.records import TaskRecord
from common.domain.states import TaskStatus
from common.store import queries
from common.store.database import Database
from common.store.records import load_tasks
from common.store.slots import ensure_slots
from common.store.tables import Task
from tests.state.helpers import (
    TIMINGS,
    T,
    Tx,
    create,
    cursors,
    job_of,
    tasks_of,
    video_job,
)


class SlowConfirms(MemoryBroker):
    """A broker whose publishes are confirmed only once `confirmed` is set."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self.publishing = asyncio.Event()
        self.confirmed = asyncio.Event()

    async def publish(self, messages: Any) -> None:
        self.publishing.set()
        await self.confirmed.wait()
        await super().publish(messages)


async def test_group_commit_applies_concurrent_records_and_rejects_duplicates(
    db: Database,
) -> None:
    async with db.write() as session:
        await ensure_slots(session, "fal", 100)
    await create(db, video_job("j1", 30))
    tasks = await tasks_of(db, "j1")
    async with MemoryBroker(Topology(prefix="t", queues=BUILTIN_KINDS.queues)) as broker:
        uow = GroupCommitter(db, broker, TIMINGS)

        async def start(task: TaskRecord) -> TaskStatus | Exception:
            try:
                async with uow.transaction() as tx:
                    tx.start(task, message="go", deadline_at=tx.now + 30)
            except StaleTask as exc:
                return exc
            return tx.applied[task.id]

        # Every task started twice at once, as duplicate deliveries would.
        results = await asyncio.gather(*(start(t) for t in tasks + tasks))
        await uow.close()
    assert results[:30] == [T.SUBMITTING] * 30
    assert all(isinstance(r, StaleTask) for r in results[30:])
    job = await job_of(db, "j1")
    assert await cursors(db, "j1") == list(range(1, job.last_seq + 1))
    assert job.last_seq == 1 + 30 + 1  # created, 30 submitting, job running


async def test_the_committer_reruns_an_exclusive_work_on_fresh_records(db: Database) -> None:
    """A lock timeout, then a record gone stale: each run starts from a clean slate."""
    await create(db, video_job("j1", 1))
    runs = 0

    async def flaky(session: AsyncSession, tx: Tx) -> str:
        nonlocal runs
        runs += 1
        (task,) = await load_tasks(session, Task.job_id == "j1")
        if runs == 2:  # read before "another process" moved it
            task = dataclasses.replace(task, status="waiting")
        tx.emit("j1", EventDraft(EventType.TASK_PROGRESS, message=f"run {runs}"))
        tx.change(task, T.CANCELLED, message="cancelled")
        if runs == 1:
            raise OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
        return "done"

    async with MemoryBroker(Topology(prefix="t", queues=BUILTIN_KINDS.queues)) as broker:
        uow = GroupCommitter(db, broker, TIMINGS)
        assert await uow.exclusive(flaky) == "done"
        await uow.close()
    assert runs == 3
    async with db.read() as session:
        events = await queries.events_after(session, "j1", 0)
    # Only the third run's records: the first rolled back, the second was rejected whole.
    assert [e.message for e in events][:3] == [
        "job created with 1 tasks (segments)",
        "run 3",
        "cancelled",
    ]


async def test_a_failed_publish_after_commit_does_not_fail_the_records(db: Database) -> None:
    class Down(MemoryBroker):
        async def publish(self, messages: Any) -> None:
            raise BrokerError("connection lost")

    await create(db, video_job("j1", 1))
    (task,) = await tasks_of(db, "j1")
    async with Down(Topology(prefix="t", queues=BUILTIN_KINDS.queues)) as broker:
        uow = GroupCommitter(db, broker, TIMINGS)
        async with uow.transaction() as tx:  # no exception: the change is committed
            tx.change(task, T.RUNNING, message="running", deadline_at=tx.now + 30)
            tx.send(task, TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt))
        await uow.close()
    (task,) = await tasks_of(db, "j1")
    assert task.status == "running" and task.deadline_at is not None  # the sweeper's cue


async def test_a_publish_interrupted_after_commit_still_answers_the_authors(db: Database) -> None:
    # The batch's messages are published apart from the write loop: if that is cut short
    # (cancelled at shutdown, say), the change sets' authors still hear that they committed.
    class Cut(MemoryBroker):
        async def publish(self, messages: Any) -> None:
            raise asyncio.CancelledError

    await create(db, video_job("j1", 1))
    (task,) = await tasks_of(db, "j1")
    async with Cut(Topology(prefix="t", queues=BUILTIN_KINDS.queues)) as broker:
        uow = GroupCommitter(db, broker, TIMINGS)
        async with asyncio.timeout(10):
            async with uow.transaction() as tx:
                tx.change(task, T.RUNNING, message="running", deadline_at=tx.now + 30)
                tx.send(task, TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt))
        await uow.close()
    (task,) = await tasks_of(db, "j1")
    assert task.status == "running"


async def test_the_next_batch_is_written_while_the_last_ones_messages_await_confirms(
    db: Database,
) -> None:
    # A slow broker confirm holds only the change sets that owe the message, not every change
    # set queued behind them (issue 10: commits sat behind confirms of other batches).
    await create(db, video_job("j1", 1))
    (first,) = await tasks_of(db, "j1")
    async with SlowConfirms(Topology(prefix="t", queues=BUILTIN_KINDS.queues)) as broker:
        uow = GroupCommitter(db, broker, TIMINGS)
        owing = uow.new_change_set()
        owing.emit("j1", EventDraft(EventType.TASK_PROGRESS, message="owes a message"))
        owing.send(first, TaskMessage(first.id, "j1", MessageKind.POLL, 1, chain=1))
        waiting = asyncio.create_task(uow.commit(owing))
        await broker.publishing.wait()
        later = uow.new_change_set()
        later.emit("j1", EventDraft(EventType.TASK_PROGRESS, message="owes nothing"))
        await asyncio.wait_for(uow.commit(later), timeout=5)  # not behind the confirm
        assert not waiting.done()  # its author hears of the commit once the message is out
        broker.confirmed.set()
        await waiting
        await uow.close()
    assert await cursors(db, "j1") == [1, 2, 3]


async def test_a_job_finished_by_several_change_sets_of_one_batch_is_logged_once(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await create(db, video_job("j1", 2))
    tasks = await tasks_of(db, "j1")
    async with MemoryBroker(Topology(prefix="t", queues=BUILTIN_KINDS.queues)) as broker:
        uow = GroupCommitter(db, broker, TIMINGS)
        change_sets = [uow.new_change_set() for _ in tasks]
        for tx, task in zip(change_sets, tasks, strict=True):
            tx.change(task, T.CANCELLED, message="cancelled")
        with caplog.at_level(logging.INFO, logger="common.committer"):
            await asyncio.gather(*(uow.commit(tx) for tx in change_sets))
        await uow.close()
    assert [len(tx.finished) for tx in change_sets] == [1, 1]  # one batch finished the job
    finished = [r for r in caplog.records if "job j1 finished" in r.getMessage()]
    assert len(finished) == 1


async def test_a_start_deferred_by_its_budget_is_answered_once_its_message_is_out(
    db: Database,
) -> None:
    # The batch sends a deferred start's message again for it: the delivery it came from must
    # stay unacked until that message is out (should the worker die first, it is redelivered),
    # so its author hears of the commit only then.
    async with db.write() as session:
        await ensure_slots(session, "fal", 2)
    await create(db, video_job("j1", 1))
    (task,) = await tasks_of(db, "j1")
    async with SlowConfirms(Topology(prefix="t", queues=BUILTIN_KINDS.queues)) as broker:
        broker.confirmed.set()
        uow = GroupCommitter(db, broker, TIMINGS)
        async with uow.transaction() as tx:
            tx.pause("fal:m", tx.now + 30)
        broker.confirmed.clear()
        deferred = uow.new_change_set()
        run = TaskMessage(task.id, "j1", MessageKind.RUN, 1)
        deferred.start(
            task, message="go", deadline_at=deferred.now + 30, budget="fal:m", resend=run
        )
        answered = asyncio.create_task(uow.commit(deferred))
        await asyncio.wait_for(broker.publishing.wait(), timeout=5)
        assert not answered.done()
        broker.confirmed.set()
        await asyncio.wait_for(answered, timeout=5)
        await uow.close()
    assert task.id in deferred.deferred
    (task,) = await tasks_of(db, "j1")
    assert task.status == T.QUEUED
