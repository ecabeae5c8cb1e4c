"""Client side of the measurements: start a video job, watch it to its end, read its tasks.

Times are `time.perf_counter()` for durations and `time.time()` where they are compared with
the wall-clock `created_at` the orchestrator stores on each event.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from orchestrator.v1 import jobs_pb2 as pb

from bench.stack import Stub

ARENA_URL = "https://example.com/arena.png"
TERMINAL = frozenset(
    {
        pb.JOB_STATUS_COMPLETED,
        pb.JOB_STATUS_PARTIALLY_FAILED,
        pb.JOB_STATUS_FAILED,
        pb.JOB_STATUS_CANCELLED,
    }
)
# A job that sends no event for this long is reported as stalled, with where its tasks are.
STALL_AFTER = 60.0
# Upper bound on any one job, whatever its size: the whole run must stay within ~10 minutes.
WATCH_TIMEOUT_FLOOR = 60.0
WATCH_TIMEOUT_CAP = 900.0


class JobStalled(RuntimeError):
    """The job did not reach a terminal state in time (or the stream ended before it)."""


@dataclass
class Watch:
    """What one watcher saw of one job."""

    opened_at: float  # wall clock when the stream was opened
    events: int = 0
    type_counts: Counter[int] = field(default_factory=Counter)
    terminal_status: int | None = None
    ended_at: float | None = None  # perf_counter when the terminal event arrived
    # receive wall time - event.created_at, seconds, for events created after `opened_at`
    live_latencies: list[float] = field(default_factory=list)
    replayed: int = 0  # events created before the stream was opened (history, not progress)

    @property
    def types(self) -> dict[str, int]:
        """Events received by type name."""
        return {pb.EventType.Name(t): n for t, n in sorted(self.type_counts.items())}

    @property
    def status_name(self) -> str:
        if self.terminal_status is None:
            return "NOT FINISHED"
        return pb.JobStatus.Name(self.terminal_status).removeprefix("JOB_STATUS_")


async def start_video_job(stub: Stub, segments: int) -> tuple[str, float]:
    """StartVideoJob; the job id and the RPC's duration in seconds."""
    request = pb.StartVideoJobRequest(battle_arena_url=ARENA_URL, total_segments=segments)
    began = time.perf_counter()
    response = await stub.StartVideoJob(request, timeout=120)
    return response.job_id, time.perf_counter() - began


async def watch(
    stub: Stub,
    job_id: str,
    *,
    give_up_after: float,
    stall_after: float = STALL_AFTER,
    after_cursor: int = 0,
    latencies: bool = False,
) -> Watch:
    """Read WatchJob until the job's terminal event (the server then ends the stream).

    JobStalled when no event arrived for `stall_after` seconds (heartbeats do not count), or
    the job is not finished after `give_up_after` seconds.
    """
    seen = Watch(opened_at=time.time())
    request = pb.WatchJobRequest(job_id=job_id, after_cursor=after_cursor)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(give_up_after), asyncio.timeout(stall_after) as idle:
            async for item in stub.WatchJob(request):
                if not item.events:
                    continue  # a heartbeat
                received = time.time()
                idle.reschedule(loop.time() + stall_after)
                for event in item.events:
                    seen.events += 1
                    seen.type_counts[event.type] += 1
                    if latencies:
                        created = event.created_at.seconds + event.created_at.nanos / 1e9
                        if created >= seen.opened_at:
                            seen.live_latencies.append(received - created)
                        else:
                            seen.replayed += 1
                    if event.type == pb.EVENT_TYPE_JOB_STATUS and event.job_status in TERMINAL:
                        seen.terminal_status = event.job_status
                        seen.ended_at = time.perf_counter()
    except TimeoutError:
        summary = await task_summary(stub, job_id)
        raise JobStalled(
            f"job {job_id} stalled or too slow (no event for {stall_after:.0f}s or not finished"
            f" after {give_up_after:.0f}s; {seen.events} events seen): {summary}"
        ) from None
    if seen.terminal_status is None:
        raise JobStalled(f"WatchJob of {job_id} ended before the job's terminal event")
    return seen


async def task_summary(stub: Stub, job_id: str) -> str:
    """Job status and task counts by status, for error messages."""
    try:
        job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
    except grpc.aio.AioRpcError as exc:
        return f"(GetJob failed: {exc.code().name})"
    counts = Counter(pb.TaskStatus.Name(t.status).removeprefix("TASK_STATUS_") for t in job.tasks)
    status = pb.JobStatus.Name(job.status).removeprefix("JOB_STATUS_")
    return f"job {status}, tasks {dict(counts)}"


async def get_job(stub: Stub, job_id: str) -> pb.Job:
    """GetJob with every task (attempts, statuses)."""
    return await stub.GetJob(pb.GetJobRequest(job_id=job_id, omit_tasks=False), timeout=60)


def require_completed(seen: Watch, job_id: str) -> None:
    """Raise when the job ended in anything but COMPLETED: every figure assumes it did."""
    if seen.terminal_status != pb.JOB_STATUS_COMPLETED:
        raise JobStalled(f"job {job_id} ended {seen.status_name}, expected COMPLETED")


def watch_timeout(expected_seconds: float) -> float:
    """How long to wait for a job that should take about `expected_seconds`."""
    return min(WATCH_TIMEOUT_CAP, max(WATCH_TIMEOUT_FLOOR, 5 * expected_seconds))
