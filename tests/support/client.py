"""gRPC client helpers for tests: a stub, and "watch this job to its end"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeAlias

import grpc
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

# Only the type stubs know the async stub class; at run time it is JobServiceStub.
Stub: TypeAlias = "pb_grpc.JobServiceAsyncStub"


@asynccontextmanager
async def job_service(address: str) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.JobServiceStub(channel)


async def watch_to_end(
    stub: Stub,
    job_id: str,
    *,
    after: int = 0,
    timeout: float = 60.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[pb.JobEvent]:
    """Every event of the job after `after`, until the server ends the stream (job finished)."""
    events: list[pb.JobEvent] = []
    request = pb.WatchJobRequest(job_id=job_id, after_cursor=after)
    async with asyncio.timeout(timeout):
        async for item in stub.WatchJob(request, metadata=metadata):
            events.extend(item.events)
    return events


async def events_until(
    stub: Stub,
    job_id: str,
    done: Callable[[list[pb.JobEvent]], bool],
    *,
    follow: bool = False,
    timeout: float = 30.0,
) -> list[pb.JobEvent]:
    """Watch the job until `done(events seen so far)` holds, then hang up; the events seen."""
    seen: list[pb.JobEvent] = []
    async with asyncio.timeout(timeout):
        request = pb.WatchJobRequest(job_id=job_id, follow=follow)
        async for item in stub.WatchJob(request):
            for event in item.events:
                seen.append(event)
                if done(seen):
                    return seen
    raise AssertionError(f"the job ended before the awaited event; saw {len(seen)} events")


def running_tasks(events: list[pb.JobEvent]) -> set[int]:
    """Indices of the tasks the events show reaching RUNNING."""
    return {
        e.task_index
        for e in events
        if e.type == pb.EVENT_TYPE_TASK_STATUS and e.task_status == pb.TASK_STATUS_RUNNING
    }


def status_name(status: int) -> str:
    return pb.JobStatus.Name(status).removeprefix("JOB_STATUS_")


def assert_cursor_order(events: list[pb.JobEvent], start: int = 1) -> None:
    """Cursors are exactly start, start+1, ...: in order, none missing, none twice."""
    cursors = [e.cursor for e in events]
    assert cursors == list(range(start, start + len(cursors))), cursors
