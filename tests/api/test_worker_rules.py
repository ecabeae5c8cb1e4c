"""Rules the workers keep under duplicates, crashes, outages and cancels (found in review).

The handlers are driven directly with messages, against the real store, the real fal client and
the simulator, so each rule is checked at the moment it matters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from orchestrator.v1 import jobs_pb2 as pb
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from common.attempts.options import AttemptOptions, Registration
from common.attempts.runner import AttemptRunner
from common.breaker_events import BreakerEvents
from common.broker import Incoming, MemoryBroker, Topology
from common.domain.changes import StaleTask
from common.domain.kinds import BUILTIN_KINDS, VIDEO_SEGMENT
from common.domain.messages import MessageKind, TaskMessage
from common.domain.records import TaskRecord
from common.resilience import BreakerConfig
from common.store.records import load_tasks
from common.store.slots import ensure_slots
from common.store.tables import Task
from common.worker import OUTAGE_HEADER, Dispatcher
from services.simulator.app import SimulatorHandle
from services.video_worker.fal_adapter import FalVideoProvider
from services.video_worker.segments import VideoSegments
from tests.support.client import status_name
from tests.support.inproc import InProcStack, inproc_stack, stack_settings
from tests.support.stack import FAL_KEY

ARENA = "https://example.com/arena.png"


@pytest.fixture
async def stack(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    """Gateway only: the tests play the worker themselves."""
    async with inproc_stack(stack_settings(tmp_path, sim, stale_after=30), workers=()) as s:
        yield s


@pytest.fixture
async def handler(stack: InProcStack, sim: SimulatorHandle) -> AsyncIterator[AttemptRunner]:
    async with stack.infra.db.write() as session:
        await ensure_slots(session, "fal", 10)
    breakers = BreakerEvents(BreakerConfig(consecutive_failures=1, min_calls=1))
    stack.infra.committer.hooks.append(breakers)
    async with FalVideoProvider(key=FAL_KEY, queue_url=sim.url, timeout=2, secrets=[]) as fal:
        yield AttemptRunner(
            stack.infra.committer,
            [
                Registration(
                    VideoSegments(fal),
                    stack.settings.retry_policy(VIDEO_SEGMENT.name),
                    AttemptOptions(call_timeout=2, poll_interval=0.1),
                )
            ],
            breakers=breakers,
        )


async def one_task(stack: InProcStack) -> TaskRecord:
    job = await stack.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
    )
    async with stack.infra.db.read() as session:
        (task,) = await load_tasks(session, Task.job_id == job.job_id)
    return task


def run_message(task: TaskRecord, *, reissued: bool = False) -> TaskMessage:
    return TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt, reissued=reissued)


async def test_a_duplicate_run_while_submitting_never_submits_twice(
    stack: InProcStack, handler: AttemptRunner, sim: SimulatorHandle
) -> None:
    sim.configure(
        rules=[{"endpoint": "submit", "match": "segment", "fault": "slow_response"}], hang_seconds=1
    )
    task = await one_task(stack)
    first = asyncio.create_task(handler.handle(run_message(task), redelivered=False))
    while (await stack.infra.committer.tasks.load(task.id)).status != "submitting":  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
    # A redelivered copy (e.g. after a channel hiccup) while the first is still submitting.
    with pytest.raises(StaleTask):
        await handler.handle(run_message(task), redelivered=True)
    await first
    assert sim.stats(with_logs=False)["accepted_requests"] == 1


async def test_a_reissued_run_after_the_deadline_resubmits_and_says_so(
    stack: InProcStack, handler: AttemptRunner, sim: SimulatorHandle
) -> None:
    task = await one_task(stack)
    async with stack.infra.db.write() as session:  # as if the worker died mid-submit
        await session.execute(
            update(Task)
            .where(Task.id == task.id)
            .values(status="submitting", holds_slot=True, deadline_at=time.time() - 1)
        )
    await handler.handle(run_message(task, reissued=True), redelivered=False)
    after = await stack.infra.committer.tasks.load(task.id)
    assert after is not None and after.status == "running" and after.request_id
    events = (await stack.stub.GetJob(pb.GetJobRequest(job_id=task.job_id))).last_cursor
    assert events > 0
    job = await stack.stub.GetJob(pb.GetJobRequest(job_id=task.job_id))
    assert job.tasks[0].provider_request_id == after.request_id


async def test_deferral_moves_the_deadline_past_the_delay(
    stack: InProcStack, handler: AttemptRunner, sim: SimulatorHandle
) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "segment", "fault": "503"}])
    first, second = await one_task(stack), await one_task(stack)
    await handler.handle(run_message(first), redelivered=False)  # fails: the breaker opens
    before = time.time()
    await handler.handle(run_message(second), redelivered=False)  # deferred, attempt unspent
    deferred = await stack.infra.committer.tasks.load(second.id)
    assert deferred is not None and deferred.status == "queued" and deferred.attempt == 1
    assert deferred.deadline_at is not None
    assert deferred.deadline_at >= before + stack.settings.stale_after


async def test_a_submit_that_raced_a_cancel_is_cancelled_at_fal(
    stack: InProcStack, handler: AttemptRunner, sim: SimulatorHandle
) -> None:
    sim.configure(
        rules=[{"endpoint": "submit", "match": "segment", "fault": "slow_response"}],
        hang_seconds=1,
        latency=30,
    )
    task = await one_task(stack)
    submitting = asyncio.create_task(handler.handle(run_message(task), redelivered=False))
    while (await stack.infra.committer.tasks.load(task.id)).status != "submitting":  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
    job = await stack.stub.CancelJob(pb.CancelJobRequest(job_id=task.job_id))
    assert status_name(job.status) == "CANCELLED"
    with pytest.raises(StaleTask):
        await submitting  # fal accepted it, but the task had moved on
    stats = sim.stats(with_logs=False)
    assert stats["accepted_requests"] == 1 and stats["calls"]["cancel"] == 1


async def test_an_outage_puts_the_message_back_without_counting_towards_dead_letters() -> None:
    class Down:
        async def handle(self, message: TaskMessage, *, redelivered: bool) -> None:
            raise OperationalError("SELECT 1", {}, Exception("database is unreachable"))

    async with MemoryBroker(Topology(prefix="t", queues=BUILTIN_KINDS.queues)) as broker:
        dispatcher = Dispatcher(broker, VIDEO_SEGMENT.queue, Down())
        body = TaskMessage(1, "j", MessageKind.RUN, 1).encode()
        headers: dict[str, object] = {}
        for n in range(1, 8):  # more than the crash limit
            await dispatcher(Incoming(VIDEO_SEGMENT.queue, body, False, 0, "m", headers))
            headers = {OUTAGE_HEADER: n}
        assert broker.dead_letters == []
