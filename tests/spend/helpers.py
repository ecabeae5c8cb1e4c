"""What the spend tests share: stacks on the real broker, what fal was asked (from the
simulator's own records), and waiting on a job's events instead of sleeping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from services.simulator.fal_queue import QueuedRequest
from tests.support.client import Stub
from tests.support.inproc import InProcStack, inproc_stack, stack_settings
from tests.support.procs import ServiceProcess
from tests.support.stack import READY, Stack

ARENA = "https://example.com/arena.png"
Metadata = tuple[tuple[str, str], ...]


@asynccontextmanager
async def stack_on_rabbitmq(
    tmp_path: Path,
    sim: SimulatorHandle,
    amqp_url: str,
    prefix: str,
    *,
    workers: tuple[str, ...] = ("video",),
    **overrides: object,
) -> AsyncIterator[InProcStack]:
    """The gateway and workers in the test's loop, on the real RabbitMQ and a SQLite file."""
    settings = stack_settings(tmp_path, sim, amqp_url=amqp_url, queue_prefix=prefix, **overrides)
    async with inproc_stack(settings, workers=workers) as stack:
        yield stack


async def add_process(stack: Stack, service: str, key: str) -> ServiceProcess:
    """Start one more process of `service` (a second worker) with the stack's settings; it is
    stopped with the stack."""
    process = ServiceProcess(service, stack.env, READY[service])
    stack.processes[key] = process
    await process.start()
    return process


def fal_requests(sim: SimulatorHandle) -> list[QueuedRequest]:
    """Every request fal accepted (and would bill), in the order it was submitted."""
    log = sim.stats()["call_log"]  # (reading the stats also brings the queue up to now)
    ids = {e["request_id"] for e in log if e["endpoint"] == "submit" and e["request_id"]}
    found = [sim.state.queue.get(i) for i in ids]
    return sorted((r for r in found if r is not None), key=lambda r: r.sequence)


def prompt_of(request: QueuedRequest) -> str:
    return str(request.arguments["prompt"])


def job_of(request: QueuedRequest) -> str:
    """The job's prompt base ("Alpha" of "Alpha (segment 2 of 6)")."""
    return prompt_of(request).split(" (segment ")[0]


def max_overlap(requests: Iterable[QueuedRequest]) -> int:
    """The most of `requests` fal was generating at one moment (its IN_PROGRESS count)."""
    edges: list[tuple[float, int]] = []
    for r in requests:
        assert r.started_at is not None and r.completed_at is not None, "still generating"
        edges += [(r.started_at, 1), (r.completed_at, -1)]
    most = now = 0
    for _, step in sorted(edges):  # at equal times an end (-1) sorts before a start
        now += step
        most = max(most, now)
    return most


async def events_while(
    stub: Stub,
    job_id: str,
    done: Callable[[list[pb.JobEvent]], bool],
    *,
    timeout: float = 30.0,
    follow: bool = False,
    metadata: Metadata = (),
) -> list[pb.JobEvent]:
    """The job's events from the start until `done(events so far)` holds (AssertionError if
    the stream ends first; TimeoutError after `timeout`)."""
    seen: list[pb.JobEvent] = []
    async with asyncio.timeout(timeout):
        request = pb.WatchJobRequest(job_id=job_id, follow=follow)
        async for item in stub.WatchJob(request, metadata=metadata):
            seen.extend(item.events)
            if done(seen):
                return seen
    raise AssertionError(f"job {job_id} ended before the awaited event; saw {len(seen)} events")


def count(events: Iterable[pb.JobEvent], *, status: int) -> int:
    """How many of `events` moved a task to `status`."""
    return sum(1 for e in events if e.type == pb.EVENT_TYPE_TASK_STATUS and e.task_status == status)


def json_logs(process: ServiceProcess) -> list[dict[str, Any]]:
    """A process's log lines (LOG_FORMAT=json) as objects."""
    lines = []
    for line in process.lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            lines.append(item)
    return lines
