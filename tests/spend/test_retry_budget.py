"""The fleet-wide retry budget: retries may add at most RETRY_BUDGET_RATIO of a provider's
calls over the last minute (with RETRY_BUDGET_FLOOR always allowed), counted across every
worker process; past it a transient failure waits for the budget (a deferral event) instead
of being retried at once. Two real video worker processes on RabbitMQ, fal's simulator
failing every submit of the job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.spend.helpers import ARENA, add_process, count, events_while, json_logs
from tests.support.client import status_name, watch_to_end
from tests.support.stack import running_stack

pytestmark = pytest.mark.e2e

SEGMENTS = 10
FLOOR = 3  # retries a minute always allowed; 10 % of 13 calls is fewer
BUDGET = "fal:fal-ai/kling-video/v1/standard/image-to-video"
# The budget counts per wall-clock minute; the part of the test that counts must not straddle
# two (the deferred retries come back when the minute ends).
NEEDED = 5.0


def _spent(event: pb.JobEvent) -> bool:
    return event.type == pb.EVENT_TYPE_TASK_DEFERRED and event.message.startswith(
        f"retry budget of {BUDGET} spent"
    )


async def test_retries_stay_within_the_budget_fleet_wide_and_the_rest_wait(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "Doomed", "fault": "503"}])
    env = {
        "RETRY_BUDGET_RATIO": "0.1",
        "RETRY_BUDGET_FLOOR": str(FLOOR),
        "VIDEO_MAX_RETRIES": "5",
        # The breaker would stop the calls first: this test is about the retry budget alone.
        "BREAKER_MIN_CALLS": "1000",
        "BREAKER_CONSECUTIVE_FAILURES": "0",
        "LOG_FORMAT": "json",
    }
    async with running_stack(
        tmp_path, amqp_url, broker_prefix, sim, services=("gateway",), env=env
    ) as stack:
        workers = await asyncio.gather(
            stack.start("video_worker"), add_process(stack, "video_worker", "video_worker_2")
        )
        if (left := 60 - time.time() % 60) < NEEDED:
            await asyncio.sleep(left + 0.1)  # the window is the wall-clock minute: wait for it
        minute = time.time() // 60
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(
                battle_arena_url=ARENA, total_segments=SEGMENTS, prompt="Doomed"
            )
        )
        # Every segment's first submit fails (10 calls): FLOOR retries go at once and fail too
        # (13 calls, and 10 % of 13 is still below the floor); each other retry waits.
        events = await events_while(
            stack.stub, started.job_id, lambda seen: sum(map(_spent, seen)) >= SEGMENTS
        )
        submits = sim.stats(with_logs=False)["submits_total"]
        assert time.time() // 60 == minute, "the minute ended during the test"
        await stack.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id))
        await watch_to_end(stack.stub, started.job_id)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
    # Read once the workers stopped: a worker logs a failed attempt after its commit, which
    # the watcher may have seen first.
    logs = [json_logs(w) for w in workers]
    assert submits == SEGMENTS + FLOOR, submits
    failed = count(events, status=pb.TASK_STATUS_RETRYING)
    waited = [e for e in events if _spent(e)]
    assert failed == SEGMENTS + FLOOR and len(waited) == SEGMENTS
    assert failed - len(waited) == FLOOR  # retried at once: within the budget, fleet-wide
    # Those that waited wait until calls at the minute's rate make room for them, not for their
    # backoff (at most 0.5 s). (Early in the minute that rate is high and the first of them
    # may wait about a second.)
    assert all(e.details["retry_in"] > 0.5 for e in waited), [e.message for e in waited]
    assert len({e.task_index for e in waited}) == SEGMENTS
    # No attempt was spent by waiting: each task is on the attempt after its failed ones.
    attempts = sorted(t.attempts for t in job.tasks)
    assert attempts == [2] * (SEGMENTS - FLOOR) + [3] * FLOOR, attempts
    # Both worker processes saw failures; the budget they share allowed FLOOR retries in all.
    assert all(any(line.get("event") == "retry" for line in lines) for lines in logs)
    assert status_name(job.status) == "CANCELLED", job.message
