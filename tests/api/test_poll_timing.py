"""When status checks happen: the first one when a generation like this usually ends (as the
provider reported it), the next ones on a steady rhythm (issue 10: a slot sits idle, paid,
from the moment a generation ends until a check notices).

The runner is driven directly with messages against the real store, the real fal client and
the simulator; the messages it owes are read off the broker."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from orchestrator.v1 import jobs_pb2 as pb

from common.attempts.options import AttemptOptions, Registration
from common.attempts.runner import AttemptRunner
from common.breaker_events import BreakerEvents
from common.broker import Outgoing
from common.domain.kinds import VIDEO_SEGMENT
from common.domain.messages import MessageKind, TaskMessage
from common.domain.records import TaskRecord
from common.resilience import BreakerConfig
from common.store.records import load_tasks
from common.store.slots import ensure_slots
from common.store.tables import Task
from services.simulator.app import SimulatorHandle
from services.video_worker.fal_adapter import FalVideoProvider
from services.video_worker.segments import VideoSegments
from tests.support.inproc import InProcStack, inproc_stack, stack_settings
from tests.support.stack import FAL_KEY

ARENA = "https://example.com/arena.png"
INTERVAL = 5.0


class Sent:
    """Every message published, as (task message, delay); `slacks` their slack, in order."""

    def __init__(self, stack: InProcStack, monkeypatch: pytest.MonkeyPatch) -> None:
        self.messages: list[tuple[TaskMessage, float]] = []
        self.slacks: list[float] = []
        publish = stack.infra.broker.publish

        async def spy(messages: Sequence[Outgoing]) -> None:
            for m in messages:
                if m.queue.endswith(VIDEO_SEGMENT.queue):
                    self.messages.append((TaskMessage.decode(m.body), m.delay))
                    self.slacks.append(m.slack)
            await publish(messages)

        monkeypatch.setattr(stack.infra.broker, "publish", spy)

    def polls(self, task: TaskRecord) -> list[tuple[TaskMessage, float]]:
        return [
            (m, d) for m, d in self.messages if m.task_id == task.id and m.kind is MessageKind.POLL
        ]


@pytest.fixture
async def stack(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    async with inproc_stack(stack_settings(tmp_path, sim, stale_after=30), workers=()) as s:
        async with s.infra.db.write() as session:
            await ensure_slots(session, "fal", 10)
        yield s


@pytest.fixture
async def fal(sim: SimulatorHandle) -> AsyncIterator[FalVideoProvider]:
    async with FalVideoProvider(key=FAL_KEY, queue_url=sim.url, timeout=2, secrets=[]) as p:
        yield p


def runner(stack: InProcStack, fal: FalVideoProvider, **options: object) -> AttemptRunner:
    return AttemptRunner(
        stack.infra.committer,
        [
            Registration(
                VideoSegments(fal),
                stack.settings.retry_policy(VIDEO_SEGMENT.name),
                AttemptOptions(call_timeout=2, poll_interval=INTERVAL, **options),  # type: ignore[arg-type]
            )
        ],
        breakers=BreakerEvents(BreakerConfig()),
    )


async def one_task(stack: InProcStack) -> TaskRecord:
    job = await stack.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
    )
    async with stack.infra.db.read() as session:
        (task,) = await load_tasks(session, Task.job_id == job.job_id)
    return task


async def run(handler: AttemptRunner, task: TaskRecord) -> None:
    message = TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt)
    await handler.handle(message, redelivered=False)


async def test_the_first_check_waits_for_the_run_time_the_provider_reported(
    stack: InProcStack, fal: FalVideoProvider, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.configure(latency=0.3)
    sent = Sent(stack, monkeypatch)
    learning = runner(stack, fal, learn_first_poll=True)
    first = await one_task(stack)
    await run(learning, first)
    ((poll, delay),) = sent.polls(first)
    # Nothing learned yet: the poll interval (from the commit, less the time it took).
    assert delay == pytest.approx(INTERVAL, abs=0.5)
    # Checked (early, by hand) until done: the simulator reports 0.3 s of inference.
    while (await stack.infra.committer.tasks.load(first.id)).status == "running":  # type: ignore[union-attr]
        await learning.handle(sent.polls(first)[-1][0], redelivered=False)
    assert learning.run_times.expected("fal:" + first.payload["model"]) == pytest.approx(0.3)

    second = await one_task(stack)
    before = time.time()
    await run(learning, second)
    ((poll, delay),) = sent.polls(second)
    assert delay == pytest.approx(0.3, abs=0.1)
    assert before + 0.3 <= poll.due <= time.time() + 0.3

    # Where a webhook says when a request ends, the interval stays a fallback.
    third = await one_task(stack)
    await run(runner(stack, fal), third)
    ((_, delay),) = sent.polls(third)
    assert delay == pytest.approx(INTERVAL, abs=0.5)


async def test_polls_keep_their_rhythm(
    stack: InProcStack, fal: FalVideoProvider, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.configure(latency=60)
    sent = Sent(stack, monkeypatch)
    handler = runner(stack, fal)
    task = await one_task(stack)
    await run(handler, task)
    ((poll, _),) = sent.polls(task)
    # Handled 1 s after it was due (the broker and this worker were busy): the next check is
    # due one interval after this one was, not one interval from now.
    began = time.time()
    due = began - 1.0
    await handler.handle(replace(poll, due=due), redelivered=False)
    ended = time.time()
    following, delay = sent.polls(task)[-1]
    assert following.due == pytest.approx(due + INTERVAL)
    # The delay is counted from when the step scheduled it, however long its status call took.
    assert due + INTERVAL - ended - 0.01 <= delay <= due + INTERVAL - began + 0.01
    # Pulled in by that second, it may still come an interval after the step (a tier that long
    # saves hops through the shorter ones).
    assert delay + sent.slacks[-1] == pytest.approx(INTERVAL, abs=0.01)
    # More than an interval late: a new rhythm from now (no burst of catch-up checks).
    before = time.time()
    await handler.handle(replace(following, due=before - INTERVAL - 1), redelivered=False)
    last, delay = sent.polls(task)[-1]
    assert delay == pytest.approx(INTERVAL, abs=0.2)
    assert before + INTERVAL <= last.due <= time.time() + INTERVAL


async def test_a_first_check_learned_to_come_late_is_inside_the_tasks_deadline(
    stack: InProcStack, fal: FalVideoProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model learned to run longer than the poll window (minutes, say): the sweeper must not
    # take the task's first poll, still waiting in the delay queues, for a lost one.
    sent = Sent(stack, monkeypatch)
    learning = runner(stack, fal, learn_first_poll=True)
    task = await one_task(stack)
    model = "fal:" + task.payload["model"]
    learning.run_times.observe(model, 200.0)
    learning.run_times.observe(model, float("inf"))  # a provider's nonsense is not learned
    learning.run_times.observe(model, float("nan"))
    assert learning.run_times.expected(model) == 200.0
    await run(learning, task)
    ((poll, delay),) = sent.polls(task)
    assert delay == pytest.approx(200.0, abs=0.5)  # less the commit's time
    after = await stack.infra.committer.tasks.load(task.id)
    assert after is not None and after.deadline_at is not None
    assert after.deadline_at >= poll.due + stack.settings.stale_after / 2
