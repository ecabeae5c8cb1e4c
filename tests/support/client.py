"""gRPC client helpers for tests: a stub, and "watch this job to its end"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
    stub: Stub, job_id: str, *, after: int = 0, timeout: float = 60.0
) -> list[pb.JobEvent]:
    """Every event of the job after `after`, until the server ends the stream (job finished)."""
    events: list[pb.JobEvent] = []
    async with asyncio.timeout(timeout):
        async for item in stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_cursor=after)):
            if item.HasField("event"):
                events.append(item.event)
    return events


def task_events(events: list[pb.JobEvent], index: int) -> list[pb.JobEvent]:
    return [e for e in events if e.task_index == index]


def status_name(status: int) -> str:
    return pb.JobStatus.Name(status).removeprefix("JOB_STATUS_")


def assert_cursor_order(events: list[pb.JobEvent], start: int = 1) -> None:
    """Cursors are exactly start, start+1, ...: in order, none missing, none twice."""
    cursors = [e.cursor for e in events]
    assert cursors == list(range(start, start + len(cursors))), cursors
