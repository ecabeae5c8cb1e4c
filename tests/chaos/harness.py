"""The chaos harness: the services as real processes (any number of each), a mixed load of video
and story jobs, watchers that reconnect with their cursor, and the final audit.

Every scenario ends with `audit`, which checks from the database and the simulator's counters
that every accepted job finished with every task terminal, that no provider call was paid twice
without an event saying why, and that every watcher saw every event of its job exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc
from sqlalchemy import or_, select

from common.domain.records import JobRecord, TaskRecord
from common.store.database import Database, open_database
from common.store.records import TASK_COLUMNS, load_job
from common.store.tables import Event, Task
from orchestrator_client import JobsClient
from services.simulator.app import SimulatorHandle
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import FAL_KEY, OPENAI_KEY, READY

ARENA = "https://example.com/arena.png"
WAIT_FOR_JOBS = 150.0
TAKEOVER_BOUND = 10.0  # seconds from a worker's death to its in-flight tasks being taken over


def chaos_env(
    tmp_path: Path, amqp_url: str, prefix: str, sim: SimulatorHandle, database_url: str
) -> dict[str, str]:
    """Production-like timeouts: a task mid-call is only rescued after 60 s + the call timeout by
    its deadline, so anything faster is the worker leases' doing."""
    return {
        "DATABASE_URL": database_url,
        "AMQP_URL": amqp_url,
        "QUEUE_PREFIX": prefix,
        "FAL_QUEUE_URL": sim.url,
        "FAL_KEY": FAL_KEY,
        "OPENAI_BASE_URL": f"{sim.url}/v1",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OUTPUT_ROOT": str(tmp_path / "output"),
        "FAL_POLL_INTERVAL": "0.25",
        # Few slots: submits go on all through a run, so there is always one to interrupt.
        "FAL_CONCURRENCY": "4",
        "FAL_TIMEOUT": "30",
        "OPENAI_TIMEOUT": "60",
        "STALE_AFTER": "60",
        "WORKER_LEASE_SECONDS": "6",
        "VIDEO_BACKOFF_INITIAL": "0.1",
        "VIDEO_BACKOFF_CAP": "1",
        "STORY_BACKOFF_INITIAL": "0.1",
        "STORY_BACKOFF_CAP": "1",
        "VIDEO_MAX_RETRIES": "6",
        "STORY_MAX_RETRIES": "6",
        "MAX_RETRY_AFTER": "1",
        "BREAKER_OPEN_SECONDS": "1",
        "SWEEP_INTERVAL": "1",
        "DRAIN_SECONDS": "5",
        "LOG_LEVEL": "INFO",
    }


@dataclass
class Chaos:
    env: dict[str, str]
    sim: SimulatorHandle
    db: Database
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    gateways: list[str] = field(default_factory=list)

    async def start(self, label: str, **env: str) -> ServiceProcess:
        """Start (or restart) the process `label` ("gateway", "video_worker#2", ...)."""
        process = self.processes.get(label)
        if process is None:
            module = label.split("#", maxsplit=1)[0]
            own = {**self.env, **env}
            if module == "gateway":
                own.setdefault("GRPC_ADDR", f"127.0.0.1:{free_port()}")
                own.setdefault("HTTP_ADDR", f"127.0.0.1:{free_port()}")
                self.gateways.append(own["GRPC_ADDR"])
            process = ServiceProcess(module, own, READY[module])
            self.processes[label] = process
        await process.start(timeout=60)
        return process

    async def kill(self, label: str) -> float:
        """SIGKILL `label`; the wall-clock time of its death."""
        await self.processes[label].kill()
        return time.time()

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.processes.values())

    # Load ---------------------------------------------------------------------------------

    async def submit(self, videos: int, stories: int, *, segments: int = 4) -> list[str]:
        """Start jobs alternately on the gateways (idempotent starts, retried when a gateway is
        away); the ids of the accepted jobs."""
        ids: list[str] = []
        for n in range(videos + stories):
            target = self.gateways[n % len(self.gateways)]
            async with JobsClient(target, timeout=10, start_attempts=8) as client:
                if n < videos:
                    started = await client.start_video(
                        battle_arena_url=ARENA,
                        total_segments=segments,
                        prompt=f"chaos clip {n}",
                    )
                else:
                    started = await client.start_story(
                        idea=f"a chaos story number {n}",
                        total_segments=segments,
                        segments_per_set=2,
                    )
            ids.append(started.job_id)
        return ids

    # Looking --------------------------------------------------------------------------------

    async def jobs(self, ids: list[str]) -> dict[str, JobRecord]:
        async with self.db.read() as session:
            found = {i: await load_job(session, i) for i in ids}
        return {i: j for i, j in found.items() if j is not None}

    async def tasks(self, *where: Any) -> list[TaskRecord]:
        async with self.db.read() as session:
            rows = await session.execute(select(*TASK_COLUMNS).where(*where))
            return [TaskRecord.of(r) for r in rows]

    async def events(self, job_ids: list[str]) -> list[Event]:
        async with self.db.read() as session:
            return list(
                (
                    await session.scalars(
                        select(Event)
                        .where(Event.job_id.in_(job_ids))
                        .order_by(Event.job_id, Event.seq)
                    )
                ).all()
            )

    async def in_flight(self, *kinds: str, timeout: float = 30.0) -> list[TaskRecord]:
        """Wait until some tasks of `kinds` are mid-call; those tasks."""
        mid_call = [
            (Task.kind == kind)
            & (Task.status == ("submitting" if kind == "video.segment" else "running"))
            for kind in kinds
        ]
        async with asyncio.timeout(timeout):
            while True:
                found = await self.tasks(or_(*mid_call))
                if found:
                    return found
                await asyncio.sleep(0.05)

    async def all_finished(
        self, ids: list[str], timeout: float = WAIT_FOR_JOBS
    ) -> dict[str, JobRecord]:
        async with asyncio.timeout(timeout):
            while True:
                jobs = await self.jobs(ids)
                if len(jobs) == len(ids) and all(j.finished_at is not None for j in jobs.values()):
                    return jobs
                await asyncio.sleep(0.25)


class Watcher:
    """Watches one job to its end over raw WatchJob streams, reconnecting (to any gateway)
    with its last cursor when a stream breaks; keeps everything it received, as received."""

    def __init__(self, chaos: Chaos, job_id: str) -> None:
        self.chaos = chaos
        self.job_id = job_id
        self.cursors: list[int] = []
        self.reconnects = 0

    async def run(self, timeout: float = WAIT_FOR_JOBS) -> None:
        async with asyncio.timeout(timeout):
            while True:
                target = random.choice(self.chaos.gateways)
                after = self.cursors[-1] if self.cursors else 0
                try:
                    async with grpc.aio.insecure_channel(target) as channel:
                        stub = pb_grpc.JobServiceStub(channel)
                        request = pb.WatchJobRequest(
                            job_id=self.job_id, after_cursor=after, heartbeat_seconds=2
                        )
                        async for item in stub.WatchJob(request):
                            self.cursors += [e.cursor for e in item.events]
                    return  # the server ended the stream: the job finished
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.CANCELLED,
                        grpc.StatusCode.UNKNOWN,
                        grpc.StatusCode.INTERNAL,
                    ):
                        raise
                    self.reconnects += 1
                    await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def watching(chaos: Chaos, ids: list[str]) -> AsyncIterator[list[Watcher]]:
    watchers = [Watcher(chaos, i) for i in ids]
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    try:
        yield watchers
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class Audit:
    jobs: int
    tasks: int
    fal_paid: int
    fal_explained: int
    chat_paid: int
    chat_explained: int
    statuses: Mapping[str, int]


async def audit(chaos: Chaos, ids: list[str], watchers: list[Watcher]) -> Audit:
    """The checks every scenario ends with (see the module docstring); the figures."""
    jobs = await chaos.all_finished(ids)
    assert sorted(jobs) == sorted(ids), "an accepted job was lost"
    tasks = await chaos.tasks(Task.job_id.in_(ids))
    open_tasks = [
        t for t in tasks if t.status not in ("succeeded", "failed", "cancelled", "skipped")
    ]
    assert not open_tasks, (
        f"tasks not terminal: {[(t.job_id, t.index, t.status) for t in open_tasks]}"
    )
    events = await chaos.events(ids)
    by_job: dict[str, list[int]] = {}
    for e in events:
        by_job.setdefault(e.job_id, []).append(e.seq)
    for job_id, seqs in by_job.items():
        assert seqs == list(range(1, jobs[job_id].last_seq + 1)), f"cursor gap in {job_id}"
    for w in watchers:
        expected = list(range(1, jobs[w.job_id].last_seq + 1))
        assert w.cursors == expected, (w.job_id, w.cursors[:20], len(w.cursors), len(expected))
    stats = chaos.sim.stats(with_logs=False)
    fal_explained = sum(
        1
        for e in events
        if e.message.startswith("submitting attempt") or "request id of attempt" in e.message
    )
    chat_explained = sum(
        1
        for e in events
        if e.message.startswith("running attempt") or "stopped mid-call" in e.message
    )
    assert stats["accepted_requests"] <= fal_explained, (
        f"fal paid {stats['accepted_requests']} submits, events explain {fal_explained}"
    )
    assert stats["chat_calls"] <= chat_explained, (
        f"OpenAI got {stats['chat_calls']} calls, events explain {chat_explained}"
    )
    statuses: dict[str, int] = {}
    for job in jobs.values():
        statuses[job.status] = statuses.get(job.status, 0) + 1
    return Audit(
        jobs=len(jobs),
        tasks=len(tasks),
        fal_paid=stats["accepted_requests"],
        fal_explained=fal_explained,
        chat_paid=stats["chat_calls"],
        chat_explained=chat_explained,
        statuses=statuses,
    )


@contextlib.asynccontextmanager
async def chaos_stack(
    tmp_path: Path,
    amqp_url: str,
    prefix: str,
    sim: SimulatorHandle,
    database_url: str,
    **env: str,
) -> AsyncIterator[Chaos]:
    settings = {**chaos_env(tmp_path, amqp_url, prefix, sim, database_url), **env}
    async with open_database(database_url) as db:
        chaos = Chaos(settings, sim, db)
        try:
            yield chaos
        except BaseException:
            print(chaos.logs())
            raise
        finally:
            for process in reversed(list(chaos.processes.values())):
                await process.stop(timeout=15)
