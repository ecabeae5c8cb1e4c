"""Re-roll: RetryFailed with task_indices and regenerate runs chosen succeeded segments again
(a new result each, the earlier ones kept in the task's history) and leaves the others alone;
over gRPC and over the seed HTTP API's retry action."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.spend.helpers import ARENA, fal_requests, prompt_of, stack_on_rabbitmq
from tests.support.client import Stub, status_name, watch_to_end


async def _tasks(stub: Stub, job_id: str) -> dict[int, pb.Task]:
    job = await stub.GetJob(pb.GetJobRequest(job_id=job_id))
    assert status_name(job.status) == "COMPLETED", job.message
    return {t.index: t for t in job.tasks}


async def test_a_chosen_succeeded_segment_is_generated_again_and_keeps_its_history(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    async with (
        stack_on_rabbitmq(tmp_path, sim, amqp_url, broker_prefix) as stack,
        httpx.AsyncClient(base_url=stack.http_url) as http,
    ):
        stub = stack.stub
        started = await stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=3, prompt="Reroll")
        )
        events = await watch_to_end(stub, started.job_id)
        first = await _tasks(stub, started.job_id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # succeeded: only with regenerate
            await stub.RetryFailed(pb.RetryFailedRequest(job_id=started.job_id, task_indices=[2]))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # gRPC: segment 2 again.
        answer = await stub.RetryFailed(
            pb.RetryFailedRequest(job_id=started.job_id, task_indices=[2], regenerate=True)
        )
        assert list(answer.retried_tasks) == [2]
        events += await watch_to_end(stub, started.job_id, after=events[-1].cursor)
        second = await _tasks(stub, started.job_id)

        # HTTP: segments 2 (a second time) and 3.
        reply = await http.post(
            "/api/generate-video",
            json={
                "action": "retry",
                "sessionId": started.job_id,
                "taskIndices": [2, 3],
                "regenerate": True,
            },
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["retried"] == [2, 3]
        events += await watch_to_end(stub, started.job_id, after=events[-1].cursor)
        third = await _tasks(stub, started.job_id)

    urls = {n: [t.result_url for t in (first[n], second[n], third[n])] for n in (1, 2, 3)}
    # Segment 2: a new video each time, the earlier ones in its history, oldest first.
    assert len(set(urls[2])) == 3
    assert list(second[2].previous_results) == urls[2][:1]
    assert list(third[2].previous_results) == urls[2][:2]
    assert (first[2].attempts, second[2].attempts, third[2].attempts) == (1, 2, 3)
    # Segment 3 only in the HTTP round; segment 1 never.
    assert urls[3][0] == urls[3][1] != urls[3][2]
    assert list(second[3].previous_results) == [] and list(third[3].previous_results) == urls[3][:1]
    assert len(set(urls[1])) == 1 and third[1].attempts == 1 and not third[1].previous_results
    # fal was asked once per segment, then once per re-roll: for those segments only.
    asked = [prompt_of(r) for r in fal_requests(sim)]
    assert sorted(asked[:3]) == [f"Reroll (segment {i} of 3)" for i in (1, 2, 3)]
    assert asked[3] == "Reroll (segment 2 of 3)"
    assert sorted(asked[4:]) == ["Reroll (segment 2 of 3)", "Reroll (segment 3 of 3)"]
    rounds = [e for e in events if e.type == pb.EVENT_TYPE_RETRY_REQUESTED]
    assert [e.message for e in rounds] == [
        "regenerating 1 tasks with up to 3 retries each",
        "regenerating 2 tasks with up to 3 retries each",
    ]
    assert all(e.details["regenerate"] for e in rounds)
