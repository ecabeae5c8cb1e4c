"""Crashes, reconnecting watchers and provider outages: the job still finishes, nothing twice."""

from __future__ import annotations

from pathlib import Path

from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.support.client import (
    assert_cursor_order,
    events_until,
    running_tasks,
    status_name,
    watch_to_end,
)
from tests.support.stack import running_stack

ARENA = "https://example.com/arena.png"


async def test_worker_sigkilled_mid_flight_resumes_without_paying_twice(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(latency=2.0)
    env = {"FAL_CONCURRENCY": "4", "FAL_POLL_INTERVAL": "0.2"}
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim, env=env) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=8)
        )
        # Wait until every provider slot holds a submitted request, then crash the worker.
        seen = await events_until(
            stack.stub, started.job_id, lambda events: len(running_tasks(events)) == 4
        )
        submitted = running_tasks(seen)
        before = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
        await stack.processes["video_worker"].kill()
        await stack.start("video_worker")
        events = await watch_to_end(stack.stub, started.job_id, timeout=60)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))

    assert status_name(job.status) == "COMPLETED", job.message
    assert all(t.status == pb.TASK_STATUS_SUCCEEDED for t in job.tasks)
    assert_cursor_order(events)
    # The requests in flight at the crash were resumed, not submitted again.
    in_flight = {t.index: t.provider_request_id for t in before.tasks if t.provider_request_id}
    assert set(in_flight) == submitted
    for task in job.tasks:
        if task.index in in_flight:
            assert task.provider_request_id == in_flight[task.index]
            assert task.attempts == 1
    stats = sim.stats(with_logs=False)
    assert stats["submits_total"] == 8
    assert sorted(stats["submits_by_payload"].values()) == [1] * 8


async def test_watcher_reconnecting_with_its_cursor_sees_every_event_once(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=6)
        )
        # Hang up mid-job, after the first few events.
        first = await events_until(stack.stub, started.job_id, lambda seen: len(seen) >= 5)
        rest = await watch_to_end(stack.stub, started.job_id, after=first[-1].cursor)
        replay = await watch_to_end(stack.stub, started.job_id)

    seen = first + rest
    assert_cursor_order(seen)
    assert [(e.cursor, e.type, e.message) for e in seen] == [
        (e.cursor, e.type, e.message) for e in replay
    ]
    assert seen[-1].job_status == pb.JOB_STATUS_COMPLETED


async def test_breaker_opens_during_outage_limits_calls_and_job_completes_after(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    outage = 3.0
    env = {
        "BREAKER_CONSECUTIVE_FAILURES": "3",
        "BREAKER_MIN_CALLS": "1000",
        "BREAKER_OPEN_SECONDS": "0.5",
        "BREAKER_HALF_OPEN_PROBES": "1",
        "VIDEO_MAX_RETRIES": "10",
        "VIDEO_BACKOFF_INITIAL": "0.05",
        "VIDEO_BACKOFF_CAP": "0.2",
    }
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim, env=env) as stack:
        sim.configure(
            outages=[
                {
                    "start": 0,
                    "duration": outage,
                    "endpoints": ["submit", "status", "result"],
                    "status": 503,
                }
            ]
        )
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=4)
        )
        events = await watch_to_end(stack.stub, started.job_id, timeout=60)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))

    assert status_name(job.status) == "COMPLETED", job.message
    breaker = [e for e in events if e.type == pb.EVENT_TYPE_BREAKER]
    states = [e.details["state"] for e in breaker]
    assert "open" in states, [e.message for e in breaker]
    assert states[-1] == "closed"
    assert any(e.type == pb.EVENT_TYPE_TASK_DEFERRED for e in events)
    refused = [c for c in sim.stats()["call_log"] if c["fault"] == "outage"]
    # Without the breaker, 4 tasks retrying every ~0.1 s for 3 s make ~100 calls. With it: 3
    # failures open it, up to 4 calls were already in flight, then one probe per 0.5 s.
    probes = outage / 0.5 + 1
    assert 3 <= len(refused) <= 3 + 4 + probes, len(refused)
