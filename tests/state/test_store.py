"""Jobs, tasks, events and slots through the real store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import func, select

from common.domain.events import EventDraft, EventType
from common.domain.states import IllegalTransition, JobStatus, TaskKind, TaskStatus
from common.errors import AlreadyExists, FailedPrecondition
from common.messages import MessageKind, TaskMessage
from common.store import jobs, queries, sweeps
from common.store.database import Database
from common.store.ledger import StaleTask, StoreTimings, Tx
from common.store.tables import Event, Job, ProviderSlots, Task
from common.store.tasks import Failure, change, ensure_slots, release_slots, try_acquire_slot

T = TaskStatus


@asynccontextmanager
async def tx_of(db: Database, now: float | None = None) -> AsyncIterator[Tx]:
    async with db.write() as session:
        yield Tx(
            session=session,
            now=time.time() if now is None else now,
            timings=StoreTimings(stale_after=60),
        )


def video_job(job_id: str, n: int, key: str | None = None, digest: str = "h") -> jobs.NewJob:
    return jobs.NewJob(
        id=job_id,
        kind="video",
        priority=0,
        idempotency_key=key,
        request_hash=digest,
        params={"total_segments": n},
        max_attempts=2,
        tasks=[
            jobs.NewTask(index=i, kind=TaskKind.VIDEO_SEGMENT, payload={"i": i})
            for i in range(1, n + 1)
        ],
    )


async def tasks_of(db: Database, job_id: str) -> list[Task]:
    async with db.read() as session:
        return list(await queries.get_tasks(session, job_id))


async def job_of(db: Database, job_id: str) -> Job:
    async with db.read() as session:
        job = await queries.get_job(session, job_id)
    assert job is not None
    return job


async def cursors(db: Database, job_id: str) -> list[int]:
    async with db.read() as session:
        return [e.seq for e in await queries.events_after(session, job_id, 0, 10_000)]


async def run_to(db: Database, task: Task, *statuses: TaskStatus, failure: Failure | None = None):
    for status in statuses:
        async with tx_of(db) as tx:
            await change(
                tx,
                task,
                status,
                message=status.value,
                failure=failure if status is T.FAILED else None,
            )


async def test_create_job_records_tasks_and_its_first_event(db: Database) -> None:
    async with tx_of(db) as tx:
        job_id, created = await jobs.create_job(tx, video_job("j1", 3))
    assert (job_id, created) == ("j1", True)
    assert tx.notes == {"j1": 1}
    job = await job_of(db, "j1")
    assert (job.status, job.total_tasks, job.open_tasks, job.last_seq) == ("queued", 3, 3, 1)
    tasks = await tasks_of(db, "j1")
    assert [(t.index, t.status, t.attempt) for t in tasks] == [(i, "queued", 1) for i in (1, 2, 3)]
    assert all(t.deadline_at is not None for t in tasks)  # owed their first message


async def test_idempotency_key_same_request_same_job_other_request_refused(db: Database) -> None:
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("j1", 2, key="k", digest="a"))
    async with tx_of(db) as tx:
        assert await jobs.create_job(tx, video_job("j2", 2, key="k", digest="a")) == ("j1", False)
    with pytest.raises(AlreadyExists):
        async with tx_of(db) as tx:
            await jobs.create_job(tx, video_job("j3", 2, key="k", digest="b"))
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 1


async def test_task_changes_are_events_in_cursor_order_and_finish_the_job(db: Database) -> None:
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("j1", 2))
    first, second = await tasks_of(db, "j1")
    await run_to(db, first, T.SUBMITTING, T.RUNNING, T.SUCCEEDED)
    assert (await job_of(db, "j1")).status == JobStatus.RUNNING
    await run_to(
        db,
        second,
        T.SUBMITTING,
        T.FAILED,
        failure=Failure("400 bad", "bad_request", recoverable=False),
    )
    job = await job_of(db, "j1")
    assert job.status == JobStatus.PARTIALLY_FAILED
    assert job.open_tasks == 0 and job.finished_at is not None
    assert job.message == "1 of 2 segments succeeded; not done: 2"
    seqs = await cursors(db, "j1")
    assert seqs == list(range(1, job.last_seq + 1))
    async with db.read() as session:
        last = (await queries.events_after(session, "j1", job.last_seq - 1))[0]
    assert (last.type, last.job_status) == (EventType.JOB_STATUS, "partially_failed")
    failed = (await tasks_of(db, "j1"))[1]
    assert (failed.error_class, failed.recoverable, failed.last_error) == (
        "bad_request",
        False,
        "400 bad",
    )


async def test_illegal_transition_is_refused(db: Database) -> None:
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("j1", 1))
    (task,) = await tasks_of(db, "j1")
    with pytest.raises(IllegalTransition):
        async with tx_of(db) as tx:
            await change(tx, task, T.SUCCEEDED, message="skipping ahead")


async def test_a_stale_change_writes_nothing(db: Database) -> None:
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("j1", 1))
    (task,) = await tasks_of(db, "j1")
    (copy,) = await tasks_of(db, "j1")
    await run_to(db, task, T.SUBMITTING)
    with pytest.raises(StaleTask):
        async with tx_of(db) as tx:
            await change(tx, copy, T.SUBMITTING, message="second worker")
    assert await cursors(db, "j1") == [1, 2, 3]  # created, submitting, job running


async def test_slots_bound_in_flight_and_are_handed_to_waiting_tasks(db: Database) -> None:
    async with db.write() as session:
        await ensure_slots(session, "fal", 2)
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("j1", 4))
    tasks = await tasks_of(db, "j1")
    for task in tasks:
        async with tx_of(db) as tx:
            if await try_acquire_slot(tx, "fal"):
                await change(tx, task, T.SUBMITTING, message="go", holds_slot=True)
            else:
                await change(tx, task, T.WAITING, message="wait")
    assert [t.status for t in await tasks_of(db, "j1")] == [
        "submitting",
        "submitting",
        "waiting",
        "waiting",
    ]
    async with tx_of(db) as tx:
        await change(
            tx, tasks[0], T.FAILED, message="x", failure=Failure("e", "bad_request", False)
        )
    granted = tx.outgoing
    assert len(granted) == 1
    message = TaskMessage.decode(granted[0].body)
    assert (message.task_id, message.kind) == (tasks[2].id, MessageKind.RUN)
    after = await tasks_of(db, "j1")
    assert [(t.status, t.holds_slot) for t in after] == [
        ("failed", False),
        ("submitting", True),
        ("queued", True),
        ("waiting", False),
    ]
    async with db.read() as session:
        in_flight = await session.scalar(select(ProviderSlots.in_flight))
        holders = await session.scalar(select(func.count()).where(Task.holds_slot.is_(True)))
    assert in_flight == holders == 2


async def test_release_with_nothing_waiting_frees_the_slot(db: Database) -> None:
    async with db.write() as session:
        await ensure_slots(session, "fal", 1)
    async with tx_of(db) as tx:
        assert await try_acquire_slot(tx, "fal")
        assert not await try_acquire_slot(tx, "fal")
        assert await release_slots(tx, "fal", 1) == 0
        assert await try_acquire_slot(tx, "fal")


async def test_retry_failed_requeues_only_what_failed(db: Database) -> None:
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("j1", 3))
    a, b, c = await tasks_of(db, "j1")
    with pytest.raises(FailedPrecondition):
        async with tx_of(db) as tx:
            await jobs.retry_failed(tx, "j1", 3)
    await run_to(db, a, T.SUBMITTING, T.RUNNING, T.SUCCEEDED)
    await run_to(db, b, T.SUBMITTING, T.FAILED, failure=Failure("503", "server_error", True))
    await run_to(db, c, T.SUBMITTING, T.FAILED, failure=Failure("400", "bad_request", False))
    async with tx_of(db) as tx:
        retried = await jobs.retry_failed(tx, "j1", 5)
    assert retried == [2, 3]
    job = await job_of(db, "j1")
    assert (job.status, job.open_tasks, job.finished_at) == ("running", 2, None)
    assert job.retry_history[0]["tasks"] == [2, 3] and job.retry_history[0]["max_retries"] == 5
    after = await tasks_of(db, "j1")
    assert [(t.status, t.attempt, t.max_attempts) for t in after] == [
        ("succeeded", 1, 2),
        ("queued", 2, 7),
        ("queued", 2, 7),
    ]


async def test_cancel_job_cancels_open_tasks_and_owes_provider_cancels(db: Database) -> None:
    async with db.write() as session:
        await ensure_slots(session, "fal", 5)
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("j1", 3))
    a, b, _c = await tasks_of(db, "j1")
    await run_to(db, a, T.SUBMITTING, T.RUNNING, T.SUCCEEDED)
    async with tx_of(db) as tx:
        assert await try_acquire_slot(tx, "fal")
        await change(tx, b, T.SUBMITTING, message="go", holds_slot=True)
    async with tx_of(db) as tx:
        await change(tx, b, T.RUNNING, message="sent", request_id="r-1", cancel_url="http://x/c")
    async with tx_of(db) as tx:
        assert await jobs.cancel_job(tx, "j1") == 2
    owed = [TaskMessage.decode(m.body) for m in tx.outgoing]
    assert [(m.task_id, m.kind) for m in owed] == [(b.id, MessageKind.CANCEL)]
    job = await job_of(db, "j1")
    assert job.status == "cancelled" and job.cancel_requested
    assert [t.status for t in await tasks_of(db, "j1")] == ["succeeded", "cancelled", "cancelled"]
    async with db.read() as session:
        assert await session.scalar(select(ProviderSlots.in_flight)) == 0
    async with tx_of(db) as tx:
        assert await jobs.cancel_job(tx, "j1") == 0  # idempotent


async def test_overdue_tasks_are_reissued_once_with_a_new_poll_chain(db: Database) -> None:
    now = time.time()
    async with tx_of(db, now) as tx:
        await jobs.create_job(tx, video_job("j1", 2))
    a, b = await tasks_of(db, "j1")
    async with tx_of(db, now) as tx:
        await change(tx, a, T.SUBMITTING, message="go")
    async with tx_of(db, now) as tx:
        await change(tx, a, T.RUNNING, message="sent", request_id="r", deadline_at=now + 1)
    async with tx_of(db, now + 120) as tx:
        messages = await sweeps.claim_overdue(tx)
    decoded = sorted((TaskMessage.decode(m.body) for m in messages), key=lambda m: m.task_id)
    assert [(m.task_id, m.kind, m.chain, m.reissued) for m in decoded] == [
        (a.id, MessageKind.POLL, 1, False),
        (b.id, MessageKind.RUN, 0, True),
    ]
    async with tx_of(db, now + 121) as tx:
        assert await sweeps.claim_overdue(tx) == []


async def test_deleting_old_finished_jobs_takes_their_tasks_and_events(db: Database) -> None:
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("old", 1))
        await jobs.create_job(tx, video_job("new", 1))
    (task,) = await tasks_of(db, "old")
    await run_to(db, task, T.SUBMITTING, T.RUNNING, T.SUCCEEDED)
    async with tx_of(db, time.time() + 7200) as tx:
        assert await sweeps.delete_finished_before(tx, time.time() + 3600) == 1
    async with db.read() as session:
        assert await queries.get_job(session, "old") is None
        assert await session.scalar(select(func.count()).where(Task.job_id == "old")) == 0
        assert await session.scalar(select(func.count()).where(Event.job_id == "old")) == 0
        assert await queries.get_job(session, "new") is not None


async def test_concurrent_writers_get_gapless_unique_cursors(db: Database) -> None:
    async with tx_of(db) as tx:
        await jobs.create_job(tx, video_job("j1", 1))

    async def write(i: int) -> None:
        async with tx_of(db) as tx:
            await tx.emit("j1", EventDraft(EventType.TASK_PROGRESS, message=f"w{i}"))

    await asyncio.gather(*(write(i) for i in range(25)))
    assert await cursors(db, "j1") == list(range(1, 27))
