"""Provider budgets shared by every worker: a 429 with Retry-After seen by one story worker
process pauses that provider and model for the other process too; waiting is a deferral (an
event, no attempt spent). Two real story worker processes on RabbitMQ, the OpenAI simulator,
the state in SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.spend.helpers import (
    ARENA,
    add_process,
    events_while,
    fal_requests,
    json_logs,
    stack_on_rabbitmq,
)
from tests.support.client import status_name, watch_to_end
from tests.support.stack import running_stack

SETS = 8
LATE = 3  # jobs started during the pause
RETRY_AFTER = 2.0
# Calls a worker had already begun (its start committed) before the pause was recorded may
# still reach the provider this long after the 429.
IN_FLIGHT = 0.5


@pytest.mark.e2e
async def test_a_429_seen_by_one_worker_pauses_the_other_worker_too(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str, database_url: str
) -> None:
    # One set per chat call, one call at a time per worker. Once the 429 was seen, more jobs
    # come: any call either worker made for them (or for the sets left) during the pause
    # would show.
    sim.configure(
        chat_latency=0.2,
        rules=[
            {
                "endpoint": "chat",
                "match": f"SET 3 OF {SETS}",
                "fault": "429",
                "retry_after": RETRY_AFTER,
                "times": 1,
            }
        ],
    )
    env = {
        "DATABASE_URL": database_url,
        "STORY_PREFETCH": "1",
        "MAX_RETRY_AFTER": "10",
        "LOG_FORMAT": "json",
    }
    async with running_stack(
        tmp_path, amqp_url, broker_prefix, sim, services=("gateway",), env=env
    ) as stack:
        first, second = await asyncio.gather(
            stack.start("story_worker"), add_process(stack, "story_worker", "story_worker_2")
        )
        stub = stack.stub
        started = await stub.StartStoryJob(
            pb.StartStoryJobRequest(
                idea="A heist in a city of clockwork", total_segments=SETS, segments_per_set=1
            )
        )
        # Once one worker has seen the 429 and the sets left wait, more jobs arrive: RabbitMQ
        # hands their first calls to both (idle) workers in turn, and neither may make them
        # before the pause ends.
        await events_while(stub, started.job_id, _all_waiting)
        late = [(await stub.StartStoryJob(_one_set(f"Late idea {n}"))).job_id for n in range(LATE)]
        events = await watch_to_end(stub, started.job_id, timeout=60)
        job = await stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
        late_events = [await watch_to_end(stub, job_id) for job_id in late]
        late_jobs = [await stub.GetJob(pb.GetJobRequest(job_id=job_id)) for job_id in late]
        logs = {"first": json_logs(first), "second": json_logs(second)}

    assert status_name(job.status) == "COMPLETED", job.message
    assert [status_name(j.status) for j in late_jobs] == ["COMPLETED"] * LATE
    calls = sorted(sim.stats()["chat_log"], key=lambda c: c["t"])
    refused = [c for c in calls if c["status"] == 429]
    assert len(refused) == 1 and f"SET 3 OF {SETS}" in refused[0]["user"], refused
    t429 = refused[0]["t"]
    # No call to OpenAI for that model while the pause lasted, from either worker (only calls
    # already under way when the 429 came back); then the calls resumed.
    during = [
        round(c["t"] - t429, 3) for c in calls if t429 + IN_FLIGHT < c["t"] < t429 + RETRY_AFTER
    ]
    assert during == [], f"calls {during} s after the 429"
    after = [c["t"] - t429 for c in calls if c["t"] > t429]
    assert len(after) >= SETS - 3 + 2 * LATE and after[-1] >= RETRY_AFTER  # then they ran
    # The worker that got the 429 told every worker: the other one deferred its calls.
    saw = [n for n, lines in logs.items() if any(_rate_limited(line) for line in lines)]
    assert len(saw) == 1, saw
    other = "second" if saw == ["first"] else "first"
    waited = [line for line in logs[other] if _paused_wait(line)]
    assert waited, f"the {other} worker never waited for the pause"
    # Waiting is a deferral event naming the budget, and costs no attempt.
    for seen in (events, *late_events):
        paused = [e for e in seen if e.type == pb.EVENT_TYPE_TASK_DEFERRED]
        assert paused and all(_paused_event(e) for e in paused), paused
    attempts = {t.index: t.attempts for t in job.tasks}
    assert attempts == {i: 2 if i == 3 else 1 for i in range(SETS + 1)}, attempts
    assert all(t.attempts == 1 for j in late_jobs for t in j.tasks)


def _one_set(idea: str) -> pb.StartStoryJobRequest:
    return pb.StartStoryJobRequest(idea=idea, total_segments=1, segments_per_set=1)


def _all_waiting(events: list[pb.JobEvent]) -> bool:
    """Set 3 got the 429, sets 1 and 2 are done, and sets 4.. were put off."""
    saw_429 = any(
        e.task_index == 3
        and e.task_status == pb.TASK_STATUS_RETRYING
        and e.error_class == pb.ERROR_CLASS_RATE_LIMITED
        for e in events
    )
    done = {e.task_index for e in events if e.task_status == pb.TASK_STATUS_SUCCEEDED}
    put_off = {e.task_index for e in events if e.type == pb.EVENT_TYPE_TASK_DEFERRED}
    return saw_429 and {1, 2} <= done and put_off >= set(range(4, SETS + 1))


def _paused_event(event: pb.JobEvent) -> bool:
    return (
        "openai:gpt-4o-mini paused; deferred" in event.message
        and event.details["budget"] == "openai:gpt-4o-mini"
        and event.details["retry_in"] > 0
    )


def _rate_limited(line: dict[str, object]) -> bool:
    return line.get("event") == "retry" and line.get("error_class") == "rate_limited"


def _paused_wait(line: dict[str, object]) -> bool:
    return line.get("event") == "wait" and "openai budget: deferred" in str(line.get("message"))


async def test_a_per_minute_request_budget_counts_calls_not_tasks_waiting_for_a_slot(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    # Three fal requests a minute, one slot, four segments: three run one after the other
    # (waiting for the slot spends nothing), the fourth waits for the next minute.
    sim.configure(latency=0.2)
    async with stack_on_rabbitmq(
        tmp_path, sim, amqp_url, broker_prefix, fal_concurrency=1, fal_rpm=3
    ) as stack:
        if (left := 60 - time.time() % 60) < 5:
            await asyncio.sleep(left + 0.1)  # the budget is per wall-clock minute
        minute = time.time() // 60
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=4, prompt="Meter")
        )
        events = await events_while(
            stack.stub,
            started.job_id,
            lambda seen: any(e.type == pb.EVENT_TYPE_TASK_DEFERRED for e in seen),
        )
        asked = len(fal_requests(sim))
        left = 60 - time.time() % 60
        assert time.time() // 60 == minute, "the minute ended during the test"
        await stack.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id))

    assert asked == 3
    (deferred,) = [e for e in events if e.type == pb.EVENT_TYPE_TASK_DEFERRED]
    budget = "fal:fal-ai/kling-video/v1/standard/image-to-video"
    assert deferred.message.startswith(f"{budget} per-minute budget spent; deferred")
    assert deferred.task_index == 4 and deferred.details["budget"] == budget
    assert deferred.details["retry_in"] >= left - 0.01  # until the minute ends
    succeeded = [e.task_index for e in events if e.task_status == pb.TASK_STATUS_SUCCEEDED]
    assert sorted(succeeded) == [1, 2, 3]


async def test_the_shared_pause_is_capped_by_max_retry_after(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    # The provider asks for 2.5 s; MAX_RETRY_AFTER says 1 s at most.
    sim.configure(
        chat_latency=0.05,
        rules=[{"endpoint": "chat", "fault": "429", "retry_after": 2.5, "times": 1}],
    )
    async with stack_on_rabbitmq(
        tmp_path, sim, amqp_url, broker_prefix, workers=("story",), max_retry_after=1
    ) as stack:
        started = await stack.stub.StartStoryJob(_one_set("A short one"))
        events = await watch_to_end(stack.stub, started.job_id)
    calls = sorted(sim.stats()["chat_log"], key=lambda c: c["t"])
    assert calls[0]["status"] == 429 and len(calls) == 3  # the plan twice, then the set
    assert calls[1]["t"] - calls[0]["t"] < 1.8
    waits = [e.details["retry_in"] for e in events if e.type == pb.EVENT_TYPE_TASK_DEFERRED]
    assert all(wait <= 1.0 for wait in waits), waits
