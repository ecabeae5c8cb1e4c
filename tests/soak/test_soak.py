"""Soak: jobs submitted and watched without pause for a few minutes (SOAK_SECONDS, default 120)
against 10% provider faults, the processes' memory sampled all along. Bound: no task stuck,
every job finished, and each process's resident memory at the end within
MEMORY_GROWTH x (its memory after warm-up) + MEMORY_SLACK_MB."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from common.store.database import open_database
from common.store.tables import Task
from orchestrator_client import JobsClient
from services.simulator.app import SimulatorHandle, run_simulator
from services.simulator.config import SimulatorConfig
from tests.support.stack import FAL_KEY, OPENAI_KEY, running_stack

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
DRAIN_SECONDS = 120.0  # after the last start, for every watched job to end

# The project's 120 s per-test limit cannot hold a run of SOAK_SECONDS plus its drain.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(SOAK_SECONDS + DRAIN_SECONDS + 60)]
WARM_UP = 0.25  # the first quarter of the run is warm-up
MEMORY_GROWTH = 1.25
MEMORY_SLACK_MB = 24.0
SAMPLE_EVERY = 2.0
FAULTS = [{"rates": {"429": 0.04, "503": 0.04, "timeout": 0.02}, "retry_after": 0.2}]


@pytest.fixture
async def soak_sim() -> AsyncIterator[SimulatorHandle]:
    config = SimulatorConfig(
        latency=0.5, chat_latency=0.1, hang_seconds=1.5, fal_key=FAL_KEY, openai_key=OPENAI_KEY
    )
    async with run_simulator(config) as handle:
        yield handle


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_soak(
    tmp_path: Path, amqp_url: str, queue_prefix: str, soak_sim: SimulatorHandle
) -> None:
    soak_sim.configure(faults=FAULTS)
    env = {
        "FAL_TIMEOUT": "1",
        "OPENAI_TIMEOUT": "1",
        "VIDEO_MAX_RETRIES": "8",
        "STORY_MAX_RETRIES": "8",
    }
    samples: dict[str, list[tuple[float, float]]] = {}
    async with running_stack(
        tmp_path,
        amqp_url,
        queue_prefix,
        soak_sim,
        services=("gateway", "video_worker", "story_worker"),
        env=env,
    ) as stack:
        started = time.monotonic()
        watchers: set[asyncio.Task[None]] = set()
        ids: list[str] = []

        async def sample() -> None:
            while True:
                now = time.monotonic() - started
                for name, process in stack.processes.items():
                    if process.proc is not None:
                        samples.setdefault(name, []).append((now, _rss_mb(process.proc.pid)))
                await asyncio.sleep(SAMPLE_EVERY)

        async def follow(client: JobsClient, job_id: str) -> None:
            async for _ in client.watch(job_id):
                pass

        sampler = asyncio.create_task(sample())
        async with JobsClient(stack.env["GRPC_ADDR"]) as client:
            n = 0
            while time.monotonic() - started < SOAK_SECONDS:
                if n % 2:
                    job = await client.start_video(
                        battle_arena_url="https://example.com/a.png", total_segments=3
                    )
                else:
                    job = await client.start_story(
                        idea=f"soak story {n}", total_segments=4, segments_per_set=2
                    )
                ids.append(job.job_id)
                watcher = asyncio.create_task(follow(client, job.job_id))
                watchers.add(watcher)
                watcher.add_done_callback(watchers.discard)
                n += 1
                await asyncio.sleep(0.25)
            async with asyncio.timeout(DRAIN_SECONDS):
                await asyncio.gather(*watchers)
        sampler.cancel()
        async with (
            open_database(stack.env["DATABASE_URL"], migrate=False) as db,
            db.read() as session,
        ):
            stuck = (
                await session.scalars(
                    select(Task.id).where(
                        Task.status.not_in(["succeeded", "failed", "cancelled", "skipped"])
                    )
                )
            ).all()
    assert not stuck, f"{len(stuck)} tasks never finished"
    report = []
    for name, points in samples.items():
        warm = [mb for t, mb in points if WARM_UP * SOAK_SECONDS <= t < 2 * WARM_UP * SOAK_SECONDS]
        end = [mb for t, mb in points if t >= (1 - WARM_UP) * SOAK_SECONDS]
        baseline, final = statistics.median(warm), statistics.median(end)
        report.append(f"{name} {baseline:.0f} -> {final:.0f} MB")
        assert final <= MEMORY_GROWTH * baseline + MEMORY_SLACK_MB, report
    print(f"soak: {len(ids)} jobs in {SOAK_SECONDS:.0f}s, 10% faults; RSS {', '.join(report)}")
