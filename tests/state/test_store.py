"""Jobs, tasks, events and slots through the real store, on SQLite and PostgreSQL.

Records are applied with the same `Batch` the group committer uses (the committer itself:
test_group_commit.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from sqlalchemy import func, select

from common.domain.changes import Failure, JobTasksChange, StaleTask
from common.domain.events import EventDraft, EventType
from common.domain.kinds import BUILTIN_KINDS
from common.domain.messages import MessageKind
from common.domain.records import TaskRecord
from common.domain.states import IllegalTransition, JobStatus, TaskKind, TaskStatus
from common.errors import AlreadyExists, FailedPrecondition
from common.store import jobs, queries, sweeps
from common.store.apply import Batch
from common.store.database import Database
from common.store.slots import ensure_slots
from common.store.tables import Event, Job, ModelStats, ProviderSlots, Task
from tests.state.helpers import (
    TIMINGS,
    T,
    apply,
    claim_overdue,
    create,
    cursors,
    job_of,
    move,
    new_tx,
    tasks_of,
    video_job,
)


async def test_create_job_records_tasks_and_its_first_event(db: Database) -> None:
    assert await create(db, video_job("j1", 3)) == ("j1", True)
    job = await job_of(db, "j1")
    assert (job.status, job.total_tasks, job.open_tasks, job.last_seq) == ("queued", 3, 3, 1)
    tasks = await tasks_of(db, "j1")
    assert [(t.index, t.status, t.attempt) for t in tasks] == [(i, "queued", 1) for i in (1, 2, 3)]
    assert all(t.deadline_at is not None for t in tasks)  # owed their first message


async def test_idempotency_key_same_request_same_job_other_request_refused(db: Database) -> None:
    await create(db, video_job("j1", 2, key="k", digest="a"))
    assert await create(db, video_job("j2", 2, key="k", digest="a")) == ("j1", False)
    with pytest.raises(AlreadyExists):
        await create(db, video_job("j3", 2, key="k", digest="b"))
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 1


async def test_task_changes_are_events_in_cursor_order_and_finish_the_job(db: Database) -> None:
    await create(db, video_job("j1", 2))
    first, second = await tasks_of(db, "j1")
    await move(db, first, T.SUBMITTING, T.RUNNING, T.SUCCEEDED)
    assert (await job_of(db, "j1")).status == JobStatus.RUNNING
    await move(db, second, T.SUBMITTING, T.FAILED)
    job = await job_of(db, "j1")
    assert job.status == JobStatus.PARTIALLY_FAILED
    assert job.open_tasks == 0 and job.finished_at is not None
    assert job.message == "1 of 2 segments succeeded; not done: 2"
    assert await cursors(db, "j1") == list(range(1, job.last_seq + 1))
    async with db.read() as session:
        last = (await queries.events_after(session, "j1", job.last_seq - 1))[0]
    assert (last.type, last.job_status) == (EventType.JOB_STATUS, "partially_failed")
    failed = (await tasks_of(db, "j1"))[1]
    assert (failed.error_class, failed.recoverable, failed.last_error) == (
        "bad_request",
        False,
        "boom",
    )


async def test_illegal_transition_is_refused(db: Database) -> None:
    await create(db, video_job("j1", 1))
    (task,) = await tasks_of(db, "j1")
    tx = new_tx()
    tx.change(task, T.RETRYING, message="a retry of nothing")
    with pytest.raises(IllegalTransition):
        await apply(db, tx)


async def test_a_stale_record_writes_nothing_at_all(db: Database) -> None:
    await create(db, video_job("j1", 2))
    a, b = await tasks_of(db, "j1")
    await move(db, a, T.SUBMITTING)
    tx = new_tx()
    tx.change(b, T.SUBMITTING, message="fine on its own")
    tx.change(a, T.SUBMITTING, message="but this one was read before it moved")
    with pytest.raises(StaleTask):
        await apply(db, tx)
    assert [t.status for t in await tasks_of(db, "j1")] == ["submitting", "queued"]
    assert await cursors(db, "j1") == [1, 2, 3]  # created, submitting, job running


async def test_slots_bound_in_flight_and_are_handed_to_waiting_tasks(db: Database) -> None:
    async with db.write() as session:
        await ensure_slots(session, "fal", 2)
    await create(db, video_job("j1", 4))
    tasks = await tasks_of(db, "j1")
    outcomes = []
    for task in tasks:
        tx = new_tx()
        tx.start(task, message="go", deadline_at=tx.now + 30)
        await apply(db, tx)
        outcomes.append(tx.applied[task.id])
    assert outcomes == [T.SUBMITTING, T.SUBMITTING, T.WAITING, T.WAITING]
    tx = new_tx()
    first = (await tasks_of(db, "j1"))[0]
    tx.change(first, T.FAILED, message="x", failure=Failure("e", "bad_request", False))
    async with db.write() as session:
        owed = await Batch(await session.connection(), tx.now, TIMINGS, BUILTIN_KINDS).run([tx])
    assert len(owed) == 1
    message = owed[0].message
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


async def test_a_stale_read_cannot_take_or_leak_a_slot(db: Database) -> None:
    """A task granted a slot looks QUEUED like before; its slot flag tells them apart."""
    async with db.write() as session:
        await ensure_slots(session, "fal", 1)
    await create(db, video_job("j1", 2))
    a, b = await tasks_of(db, "j1")
    stale_b = b
    tx = new_tx()
    tx.start(a, message="go", deadline_at=tx.now + 30)
    await apply(db, tx)
    b = await move(db, b, T.WAITING)
    await move(db, tx.after(a), T.FAILED)  # frees the slot: b is granted it (QUEUED, holds)
    late = new_tx()
    late.start(stale_b, message="from a message read before all that", deadline_at=late.now + 30)
    with pytest.raises(StaleTask):
        await apply(db, late)
    async with db.read() as session:
        assert await session.scalar(select(ProviderSlots.in_flight)) == 1
    assert [(t.status, t.holds_slot) for t in await tasks_of(db, "j1")] == [
        ("failed", False),
        ("queued", True),
    ]


async def test_rebalance_recounts_slots_and_grants_the_free_ones(db: Database) -> None:
    async with db.write() as session:
        await ensure_slots(session, "fal", 1)
    await create(db, video_job("j1", 1))
    (task,) = await tasks_of(db, "j1")
    await move(db, task, T.WAITING)
    async with db.write() as session:  # a slot count gone wrong (say, by hand)
        await session.execute(ProviderSlots.__table__.update().values(in_flight=1))
    tx = new_tx()
    tx.rebalance.add("fal")
    await apply(db, tx)
    (task,) = await tasks_of(db, "j1")
    assert (task.status, task.holds_slot) == ("queued", True)


async def test_job_tasks_move_together_for_a_story_plan(db: Database) -> None:
    job = jobs.NewJob(
        "s1",
        "story",
        2,
        None,
        "h",
        {"total_segments": 2},
        2,
        [
            jobs.NewTask(0, TaskKind.STORY_PLAN, {}),
            jobs.NewTask(1, TaskKind.STORY_SET, {}, TaskStatus.BLOCKED),
            jobs.NewTask(2, TaskKind.STORY_SET, {}, TaskStatus.BLOCKED),
        ],
    )
    await create(db, job)
    plan = (await tasks_of(db, "s1"))[0]
    plan = await move(db, plan, T.RUNNING)
    tx = new_tx()
    tx.change(plan, T.SUCCEEDED, message="planned")
    tx.change_job_tasks(
        JobTasksChange("s1", "story.set", T.BLOCKED, T.QUEUED, "plan ready", send_run=True)
    )
    async with db.write() as session:
        owed = await Batch(await session.connection(), tx.now, TIMINGS, BUILTIN_KINDS).run([tx])
    assert sorted(m.message.task_id for m in owed) == [t.id for t in (await tasks_of(db, "s1"))[1:]]
    assert [t.status for t in await tasks_of(db, "s1")] == ["succeeded", "queued", "queued"]


async def test_retry_failed_requeues_only_what_failed(db: Database) -> None:
    await create(db, video_job("j1", 3))
    a, b, c = await tasks_of(db, "j1")
    with pytest.raises(FailedPrecondition):
        await apply(db, new_tx(), lambda s, tx: jobs.retry_failed(s, tx, BUILTIN_KINDS, "j1", 3))
    await move(db, a, T.SUBMITTING, T.RUNNING, T.SUCCEEDED)
    await move(db, b, T.SUBMITTING, T.FAILED)
    await move(db, c, T.SUBMITTING, T.FAILED)
    retried = await apply(
        db, new_tx(), lambda s, tx: jobs.retry_failed(s, tx, BUILTIN_KINDS, "j1", 5)
    )
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
    assert await cursors(db, "j1") == list(range(1, job.last_seq + 1))


async def test_retry_failed_lifts_the_deadline_from_what_it_stopped_and_once_it_passed(
    db: Database,
) -> None:
    now = time.time()
    ahead = dataclasses.replace(video_job("ahead", 2), deadline_at=now + 3600)
    passed = dataclasses.replace(video_job("passed", 1), deadline_at=now - 1)
    await create(db, ahead, now)
    await create(db, passed, now)
    stopped, bad = await tasks_of(db, "ahead")
    tx = new_tx()
    late = Failure("the job's deadline is too close", "deadline_exceeded", True)
    tx.change(stopped, T.FAILED, message="not started", failure=late)
    await apply(db, tx)
    await move(db, bad, T.SUBMITTING, T.FAILED)
    (expired,) = await tasks_of(db, "passed")
    await move(db, expired, T.SUBMITTING, T.FAILED)
    for job_id in ("ahead", "passed"):
        await apply(
            db, new_tx(), lambda s, tx, j=job_id: jobs.retry_failed(s, tx, BUILTIN_KINDS, j, 3)
        )
    # The task the deadline stopped runs without it, the other keeps it while it lies ahead;
    # once it has passed nothing keeps it (it could only stop the re-run at once).
    assert [t.expires_at for t in await tasks_of(db, "ahead")] == [None, now + 3600]
    assert [t.expires_at for t in await tasks_of(db, "passed")] == [None]


async def test_cancel_job_cancels_open_tasks_and_owes_provider_cancels(db: Database) -> None:
    async with db.write() as session:
        await ensure_slots(session, "fal", 5)
    await create(db, video_job("j1", 3))
    a, b, _c = await tasks_of(db, "j1")
    await move(db, a, T.SUBMITTING, T.RUNNING, T.SUCCEEDED)
    tx = new_tx()
    tx.start(b, message="go", deadline_at=tx.now + 30)
    await apply(db, tx)
    await move(db, tx.after(b), T.RUNNING, request_id="r-1", handle={"cancel_url": "http://x/c"})
    tx = new_tx()
    assert await apply(db, tx, lambda s, t: jobs.cancel_job(s, t, "j1")) == 2
    owed = [m.message for m in tx.sends]
    assert [(m.task_id, m.kind) for m in owed] == [(b.id, MessageKind.CANCEL)]
    job = await job_of(db, "j1")
    assert job.status == "cancelled" and job.cancel_requested
    assert [t.status for t in await tasks_of(db, "j1")] == ["succeeded", "cancelled", "cancelled"]
    async with db.read() as session:
        assert await session.scalar(select(ProviderSlots.in_flight)) == 0
    assert await apply(db, new_tx(), lambda s, t: jobs.cancel_job(s, t, "j1")) == 0


async def test_overdue_tasks_are_reissued_once_with_a_new_poll_chain(db: Database) -> None:
    now = time.time()
    await create(db, video_job("j1", 2), now)
    a, b = await tasks_of(db, "j1")
    await move(db, a, T.SUBMITTING)
    await move(db, (await tasks_of(db, "j1"))[0], T.RUNNING, request_id="r", deadline_at=now + 1)
    tx = new_tx(now + 120)
    assert await apply(db, tx, claim_overdue) == 2
    decoded = sorted((m.message for m in tx.sends), key=lambda m: m.task_id)
    assert [(m.task_id, m.kind, m.chain, m.reissued) for m in decoded] == [
        (a.id, MessageKind.POLL, 1, False),
        (b.id, MessageKind.RUN, 0, True),
    ]
    assert await apply(db, new_tx(now + 121), claim_overdue) == 0


async def test_deleting_old_finished_jobs_takes_their_tasks_and_events(db: Database) -> None:
    await create(db, video_job("old", 1))
    await create(db, video_job("new", 1))
    (task,) = await tasks_of(db, "old")
    await move(db, task, T.SUBMITTING, T.RUNNING, T.SUCCEEDED)
    cutoff = time.time() + 3600
    assert (
        await apply(db, new_tx(), lambda s, tx: sweeps.delete_finished_before(s, tx, cutoff)) == 1
    )
    async with db.read() as session:
        assert await queries.get_job(session, "old") is None
        assert await session.scalar(select(func.count()).where(Task.job_id == "old")) == 0
        assert await session.scalar(select(func.count()).where(Event.job_id == "old")) == 0
        assert await queries.get_job(session, "new") is not None


async def test_concurrent_writers_get_gapless_unique_cursors(db: Database) -> None:
    await create(db, video_job("j1", 1))

    async def write(i: int) -> None:
        tx = new_tx()
        tx.emit("j1", EventDraft(EventType.TASK_PROGRESS, message=f"w{i}"))
        await apply(db, tx)

    await asyncio.gather(*(write(i) for i in range(25)))
    assert await cursors(db, "j1") == list(range(1, 27))


async def test_a_silent_story_task_is_reissued_as_a_run_and_published_tasks_keep_a_deadline(
    db: Database,
) -> None:
    now = time.time()
    story = jobs.NewJob(
        "s1",
        "story",
        2,
        None,
        "h",
        {"total_segments": 1},
        2,
        [jobs.NewTask(0, TaskKind.STORY_PLAN, {}), jobs.NewTask(1, TaskKind.STORY_SET, {})],
    )
    await create(db, story, now)
    plan, first_set = await tasks_of(db, "s1")
    await apply(db, new_tx(now), lambda s, tx: sweeps.mark_published(s, tx, [first_set.id]))
    published = (await tasks_of(db, "s1"))[1]
    assert published.deadline_at == pytest.approx(now + TIMINGS.queued_stale_after)
    await move(db, plan, T.RUNNING, deadline_at=now + 1)
    tx = new_tx(now + 120)
    assert await apply(db, tx, claim_overdue) == 1
    (message,) = [m.message for m in tx.sends]
    # A story task has no provider request to poll: the lost call is run again.
    assert (message.task_id, message.kind, message.reissued) == (plan.id, MessageKind.RUN, True)


async def test_cancelling_a_job_hands_its_slot_to_another_jobs_waiting_task(db: Database) -> None:
    async with db.write() as session:
        await ensure_slots(session, "fal", 1)
    await create(db, video_job("a", 2))
    await create(db, video_job("b", 1))
    a1, a2 = await tasks_of(db, "a")
    (b1,) = await tasks_of(db, "b")
    for task in (a1, a2, b1):
        tx = new_tx()
        tx.start(task, message="go", deadline_at=tx.now + 30)
        await apply(db, tx)
    await apply(db, new_tx(), lambda s, t: jobs.cancel_job(s, t, "a"))
    (b1,) = await tasks_of(db, "b")
    assert (b1.status, b1.holds_slot) == ("queued", True)
    async with db.read() as session:
        assert await session.scalar(select(ProviderSlots.in_flight)) == 1


async def _start_all(db: Database, *tasks: TaskRecord) -> list[TaskStatus]:
    outcomes = []
    for task in tasks:
        tx = new_tx()
        tx.start(task, message="go", deadline_at=tx.now + 30)
        await apply(db, tx)
        outcomes.append(tx.applied[task.id])
    return outcomes


async def _holders(db: Database) -> list[tuple[str, int]]:
    async with db.read() as session:
        rows = await session.execute(
            select(Task.job_id, Task.index).where(Task.holds_slot.is_(True)).order_by(Task.id)
        )
        return [(job_id, index) for job_id, index in rows]


async def test_a_slot_freed_in_a_batch_is_not_counted_as_held_when_it_is_handed_on(
    db: Database,
) -> None:
    """Fair shares count the slots each job holds as the batch left them: the job whose task
    just finished holds one fewer, so its freed slot goes to the job now holding none."""
    async with db.write() as session:
        await ensure_slots(session, "fal", 2)
    await create(db, video_job("a", 3))
    await create(db, video_job("b", 2))
    a1, a2, _ = await tasks_of(db, "a")
    b1, b2 = await tasks_of(db, "b")
    assert await _start_all(db, a1, b1, a2, b2) == [
        T.SUBMITTING,
        T.SUBMITTING,
        T.WAITING,
        T.WAITING,
    ]
    (b1,) = [t for t in await tasks_of(db, "b") if t.index == 1]
    await move(db, b1, T.FAILED)  # b now holds none, a one: b's waiting task gets the slot
    assert await _holders(db) == [("a", 1), ("b", 2)]


async def test_slots_freed_one_at_a_time_go_round_robin_across_jobs(db: Database) -> None:
    """Among jobs holding as many slots, a freed slot goes to the one served longest ago (a
    job served never comes first), not to the oldest job over and over."""
    async with db.write() as session:
        await ensure_slots(session, "fal", 1)
    for job_id, n in (("a", 3), ("b", 2), ("c", 2)):
        await create(db, video_job(job_id, n))
    waiting = [t for j in "abc" for t in await tasks_of(db, j)]
    assert (await _start_all(db, *waiting)).count(T.WAITING) == 6
    served = []
    for _ in range(7):
        ((job_id, index),) = await _holders(db)
        served.append(job_id)
        (task,) = [t for t in await tasks_of(db, job_id) if t.index == index]
        await move(db, task, T.FAILED)  # frees the slot: the next job in turn is granted it
    assert served == ["a", "b", "c", "a", "b", "c", "a"]


async def test_durations_of_one_batch_fold_into_the_moving_average_in_order(db: Database) -> None:
    # One statement per model and batch (issue 10): the same average as one batch per duration.
    for one_batch in (False, True):
        model = f"fal:m-{one_batch}"
        batches: list[list[float]] = [[10.0], [20.0, 5.0, 8.0]]
        if not one_batch:
            batches = [[10.0], [20.0], [5.0], [8.0]]
        for durations in batches:
            tx = new_tx()
            for seconds in durations:
                tx.observe(model, seconds)
            await apply(db, tx)
        async with db.read() as session:
            row = (
                await session.execute(
                    select(ModelStats.mean_seconds, ModelStats.samples).where(
                        ModelStats.name == model
                    )
                )
            ).one()
        expected = 10.0
        for seconds in (20.0, 5.0, 8.0):
            expected = expected * 0.8 + seconds * 0.2
        assert row.mean_seconds == pytest.approx(expected)
        assert row.samples == 4
    # A model new to the store, seen twice in its first batch.
    tx = new_tx()
    tx.observe("fal:new", 3.0)
    tx.observe("fal:new", 6.0)
    await apply(db, tx)
    async with db.read() as session:
        mean = await session.scalar(
            select(ModelStats.mean_seconds).where(ModelStats.name == "fal:new")
        )
    assert mean == pytest.approx(3.0 * 0.8 + 6.0 * 0.2)
