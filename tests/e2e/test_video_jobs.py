"""Video jobs through real RabbitMQ, real gateway and worker processes, the real fal client."""

from __future__ import annotations

from pathlib import Path

from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.support.client import assert_cursor_order, status_name, watch_to_end
from tests.support.stack import FAL_KEY, running_stack

ARENA = "https://example.com/arena.png"


async def test_eight_segments_complete_in_cursor_order(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=8, prompt="Robots")
        )
        events = await watch_to_end(stack.stub, started.job_id)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
        logs = stack.logs()

    assert status_name(job.status) == "COMPLETED", job.message
    assert_cursor_order(events)
    assert FAL_KEY not in logs and FAL_KEY not in str(events) and FAL_KEY not in str(job)
    assert events[-1].type == pb.EVENT_TYPE_JOB_STATUS
    assert events[-1].job_status == pb.JOB_STATUS_COMPLETED
    assert [t.index for t in job.tasks] == list(range(1, 9))
    for task in job.tasks:
        assert task.status == pb.TASK_STATUS_SUCCEEDED
        assert task.result_url.startswith(sim.url) and task.result_url.endswith(".mp4")
        assert task.attempts == 1
    assert (job.current_segment, job.total_segments, job.succeeded_tasks) == (8, 8, 8)
    stats = sim.stats(with_logs=False)
    assert stats["submits_total"] == 8
    assert sorted(stats["submits_by_payload"].values()) == [1] * 8
    assert stats["duplicate_submits"] == {}


async def test_transient_faults_on_30_percent_of_calls_still_complete(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(
        faults=[
            {
                "endpoints": ["submit", "status", "result"],
                "rates": {"429": 0.1, "502": 0.05, "503": 0.05, "504": 0.05, "timeout": 0.05},
                "retry_after": 0.2,
            }
        ],
        hang_seconds=4,
    )
    env = {"VIDEO_MAX_RETRIES": "10", "FAL_TIMEOUT": "1", "BREAKER_CONSECUTIVE_FAILURES": "8"}
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim, env=env) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=8)
        )
        events = await watch_to_end(stack.stub, started.job_id, timeout=120)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))

    assert status_name(job.status) == "COMPLETED", job.message
    assert_cursor_order(events)
    stats = sim.stats(with_logs=False)
    faulted = sum(
        n
        for endpoint in ("submit", "status", "result")
        for code, n in stats["responses"].get(endpoint, {}).items()
        if code not in ("200", "202")
    )
    assert faulted > 0, "the simulator injected no faults"
    assert all(t.status == pb.TASK_STATUS_SUCCEEDED for t in job.tasks)
    # A faulted submit never created a request, so retrying it paid nothing twice.
    assert len(stats["submits_by_payload"]) == 8
    assert stats["duplicate_submits"] == {}


async def test_bad_request_fails_one_segment_at_once_others_finish(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "segment 3 of 5", "fault": "400"}])
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=5)
        )
        events = await watch_to_end(stack.stub, started.job_id)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))

    assert status_name(job.status) == "PARTIALLY_FAILED", job.message
    assert job.recoverable is False
    third = job.tasks[2]
    assert third.status == pb.TASK_STATUS_FAILED
    assert third.attempts == 1
    assert third.recoverable is False
    assert third.error_class == pb.ERROR_CLASS_BAD_REQUEST
    assert "400" in third.last_error
    assert [t.status for i, t in enumerate(job.tasks) if i != 2] == [pb.TASK_STATUS_SUCCEEDED] * 4
    failed = [e for e in events if e.task_index == 3 and e.task_status == pb.TASK_STATUS_FAILED]
    assert len(failed) == 1 and failed[0].error_class == pb.ERROR_CLASS_BAD_REQUEST
