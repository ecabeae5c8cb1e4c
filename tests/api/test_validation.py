"""Bad input gets the right gRPC status, a message naming the field, and writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.support.client import watch_to_end
from tests.support.inproc import InProcStack, inproc_stack, stack_settings

ARENA = "https://example.com/arena.png"


@pytest.fixture
async def stack(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    async with inproc_stack(stack_settings(tmp_path, sim)) as s:
        yield s


async def _status(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _job_count(stack: InProcStack) -> int:
    listed = await stack.stub.ListJobs(pb.ListJobsRequest(page_size=500))
    return len(listed.jobs)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"total_segments": 3}, "battle_arena_url"),
        ({"battle_arena_url": "ftp://example.com/a.png", "total_segments": 3}, "battle_arena_url"),
        ({"battle_arena_url": "arena.png", "total_segments": 3}, "battle_arena_url"),
        ({"battle_arena_url": ARENA}, "total_segments"),
        ({"battle_arena_url": ARENA, "total_segments": 0}, "total_segments"),
        ({"battle_arena_url": ARENA, "total_segments": 100_000}, "total_segments"),
        ({"battle_arena_url": ARENA, "total_segments": -4}, "total_segments"),
        (
            {"battle_arena_url": ARENA, "total_segments": 2, "segment_prompts": ["only one"]},
            "total_segments",
        ),
        ({"battle_arena_url": ARENA, "segment_prompts": ["ok", " "]}, "segment_prompts[1]"),
        ({"battle_arena_url": ARENA, "total_segments": 2, "model": "no spaces"}, "model"),
        ({"battle_arena_url": ARENA, "total_segments": 2, "max_retries": 11}, "max_retries"),
        ({"battle_arena_url": ARENA, "total_segments": 2, "priority": 9}, "priority"),
    ],
)
async def test_bad_video_request_is_invalid_argument_naming_the_field(
    stack: InProcStack, fields: dict[str, Any], field: str
) -> None:
    error = await _status(stack.stub.StartVideoJob(pb.StartVideoJobRequest(**fields)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}:"), error.details()
    assert await _job_count(stack) == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"total_segments": 10}, "idea"),
        ({"idea": "   ", "total_segments": 10}, "idea"),
        ({"idea": "x", "total_segments": 0}, "total_segments"),
        ({"idea": "x", "total_segments": 100_000}, "total_segments"),
        ({"idea": "x", "total_segments": 10, "segments_per_set": 51}, "segments_per_set"),
        ({"idea": "x", "total_segments": 10, "output_directory": "../x"}, "output_directory"),
        ({"idea": "x", "total_segments": 10, "output_directory": "/etc"}, "output_directory"),
    ],
)
async def test_bad_story_request_is_invalid_argument_naming_the_field(
    stack: InProcStack, fields: dict[str, Any], field: str
) -> None:
    error = await _status(stack.stub.StartStoryJob(pb.StartStoryJobRequest(**fields)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}:"), error.details()
    assert await _job_count(stack) == 0


async def test_unknown_and_missing_job_ids(stack: InProcStack) -> None:
    unknown = "4f1c2b9e-0000-0000-0000-000000000000"
    calls = [
        lambda job_id: stack.stub.GetJob(pb.GetJobRequest(job_id=job_id)),
        lambda job_id: stack.stub.RetryFailed(pb.RetryFailedRequest(job_id=job_id)),
        lambda job_id: stack.stub.CancelJob(pb.CancelJobRequest(job_id=job_id)),
        lambda job_id: _first(stack.stub.WatchJob(pb.WatchJobRequest(job_id=job_id))),
    ]
    for call in calls:
        error = await _status(call(unknown))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert unknown in (error.details() or "")
        error = await _status(call(""))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("job_id:")


async def _first(stream: Any) -> Any:
    async for item in stream:
        return item
    return None


async def test_bad_cursor_and_paging_arguments(stack: InProcStack) -> None:
    started = await stack.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
    )
    events = await watch_to_end(stack.stub, started.job_id)
    for cursor in (-1, events[-1].cursor + 1):
        request = pb.WatchJobRequest(job_id=started.job_id, after_cursor=cursor)
        error = await _status(_first(stack.stub.WatchJob(request)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("after_cursor:"), error.details()
    request = pb.WatchJobRequest(job_id=started.job_id, heartbeat_seconds=301)
    error = await _status(_first(stack.stub.WatchJob(request)))
    assert (error.details() or "").startswith("heartbeat_seconds:")
    error = await _status(stack.stub.ListJobs(pb.ListJobsRequest(page_size=501)))
    assert (error.details() or "").startswith("page_size:")
    error = await _status(stack.stub.ListJobs(pb.ListJobsRequest(page_token="%%%")))
    assert (error.details() or "").startswith("page_token:")
    # The last cursor itself is fine: the finished job's stream is simply empty.
    assert await watch_to_end(stack.stub, started.job_id, after=events[-1].cursor) == []


async def test_idempotency_key_returns_the_same_job(stack: InProcStack) -> None:
    request = pb.StartVideoJobRequest(
        battle_arena_url=ARENA, total_segments=2, idempotency_key="order-42"
    )
    first = await stack.stub.StartVideoJob(request)
    again = await stack.stub.StartVideoJob(request)
    assert (first.created, again.created) == (True, False)
    assert again.job_id == first.job_id
    assert await _job_count(stack) == 1
    other = pb.StartVideoJobRequest(
        battle_arena_url=ARENA, total_segments=3, idempotency_key="order-42"
    )
    error = await _status(stack.stub.StartVideoJob(other))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (error.details() or "").startswith("idempotency_key:")
    assert await _job_count(stack) == 1


async def test_retry_failed_preconditions(stack: InProcStack, sim: SimulatorHandle) -> None:
    sim.configure(latency=5)
    started = await stack.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
    )
    error = await _status(stack.stub.RetryFailed(pb.RetryFailedRequest(job_id=started.job_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    request = pb.RetryFailedRequest(job_id=started.job_id, max_retries=11)
    error = await _status(stack.stub.RetryFailed(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("max_retries:")


async def test_list_jobs_pages_newest_first_and_filters(stack: InProcStack) -> None:
    ids = []
    for n in (1, 2, 3):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=n)
        )
        ids.append(started.job_id)
    story = await stack.stub.StartStoryJob(pb.StartStoryJobRequest(idea="x", total_segments=2))
    first = await stack.stub.ListJobs(pb.ListJobsRequest(page_size=2, kind=pb.JOB_KIND_VIDEO))
    assert [j.id for j in first.jobs] == [ids[2], ids[1]] and first.next_page_token
    second = await stack.stub.ListJobs(
        pb.ListJobsRequest(page_size=2, kind=pb.JOB_KIND_VIDEO, page_token=first.next_page_token)
    )
    assert [j.id for j in second.jobs] == [ids[0]] and not second.next_page_token
    stories = await stack.stub.ListJobs(pb.ListJobsRequest(kind=pb.JOB_KIND_STORY))
    assert [j.id for j in stories.jobs] == [story.job_id]
    assert all(not j.tasks for j in first.jobs)  # summaries
    finished = await stack.stub.ListJobs(pb.ListJobsRequest(statuses=[pb.JOB_STATUS_CANCELLED]))
    assert finished.jobs == []
