"""Job deadlines: an attempt that could not finish before the job's deadline (its model's
duration learned from earlier successes) is not started; what remains ends FAILED with
DEADLINE_EXCEEDED, recoverable, and RetryFailed runs it afterwards."""

from __future__ import annotations

from pathlib import Path

from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.spend.helpers import ARENA, fal_requests, job_of, prompt_of, stack_on_rabbitmq
from tests.support.client import status_name, watch_to_end

LATENCY = 1.0
SEGMENTS = 4


async def test_attempts_that_cannot_finish_in_time_are_not_started_and_retry_runs_them(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    sim.configure(latency=LATENCY)
    async with stack_on_rabbitmq(
        tmp_path, sim, amqp_url, broker_prefix, fal_concurrency=1
    ) as stack:
        stub = stack.stub
        # A first job teaches the service how long this model takes (a little over LATENCY).
        warm = await stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1, prompt="Warm")
        )
        await watch_to_end(stub, warm.job_id)
        # One slot, four segments one after another, three seconds: the first two or so fit,
        # the others would start too late to finish in time.
        started = await stub.StartVideoJob(
            pb.StartVideoJobRequest(
                battle_arena_url=ARENA, total_segments=SEGMENTS, prompt="Hurry", deadline_seconds=3
            )
        )
        events = await watch_to_end(stub, started.job_id)
        job = await stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
        asked = [prompt_of(r) for r in fal_requests(sim) if job_of(r) == "Hurry"]

        assert status_name(job.status) == "PARTIALLY_FAILED", job.message
        assert job.recoverable and job.HasField("deadline")
        ran = [t.index for t in job.tasks if t.status == pb.TASK_STATUS_SUCCEEDED]
        stopped = [t for t in job.tasks if t.index not in ran]
        assert 1 <= len(ran) < SEGMENTS, ran
        for task in stopped:
            assert task.status == pb.TASK_STATUS_FAILED
            assert task.error_class == pb.ERROR_CLASS_DEADLINE_EXCEEDED
            assert task.recoverable and task.attempts == 1, task
        not_started = [e for e in events if e.message.startswith("not started: the job's deadline")]
        assert sorted(e.task_index for e in not_started) == [t.index for t in stopped]
        # fal was asked only for the segments that ran, and those finished in time (give or
        # take a status check: durations are an estimate).
        assert sorted(asked) == [f"Hurry (segment {i} of {SEGMENTS})" for i in ran]
        deadline = job.deadline.ToMicroseconds() / 1e6
        for e in events:
            if e.task_status == pb.TASK_STATUS_SUCCEEDED:
                assert e.created_at.ToMicroseconds() / 1e6 <= deadline + 0.5

        sim.configure(latency=0.2)  # (only to be quick now)
        retried = await stub.RetryFailed(pb.RetryFailedRequest(job_id=started.job_id))
        assert list(retried.retried_tasks) == [t.index for t in stopped]
        await watch_to_end(stub, started.job_id, after=events[-1].cursor)
        job = await stub.GetJob(pb.GetJobRequest(job_id=started.job_id))

    assert status_name(job.status) == "COMPLETED", job.message
    assert [t.status for t in job.tasks] == [pb.TASK_STATUS_SUCCEEDED] * SEGMENTS
    assert [job_of(r) for r in fal_requests(sim)] == ["Warm"] + ["Hurry"] * SEGMENTS
