"""RabbitMQ stopped and started in the middle of a run (a private node: the shared broker is
never touched), with a StartVideoJob during the gap: it succeeds or fails with UNAVAILABLE and
leaves nothing half-made; everything accepted finishes once the broker is back."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from common.broker import Topology, delete_topology
from common.domain.kinds import BUILTIN_KINDS
from common.store.tables import Job
from orchestrator_client import JobsClient, Unavailable
from services.simulator.app import SimulatorHandle
from tests.chaos.conftest import PrivateRabbit
from tests.chaos.harness import Chaos, audit, chaos_stack, watching

pytestmark = pytest.mark.chaos
OUTAGE_SECONDS = 3.0


async def _start_during_the_gap(chaos: Chaos, key: str) -> str | None:
    """A start while the broker is down: the job id, or None if it was refused."""
    try:
        async with JobsClient(chaos.gateways[0], timeout=10, start_attempts=1) as client:
            started = await client.start_video(
                battle_arena_url="https://example.com/a.png", total_segments=3, idempotency_key=key
            )
    except Unavailable:
        return None
    return started.job_id


async def test_a_broker_restart_mid_run_loses_nothing(
    tmp_path: Path, private_rabbit: PrivateRabbit, chaos_sim: SimulatorHandle, sqlite_url: str
) -> None:
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    key = f"gap-{uuid.uuid4().hex[:8]}"
    try:
        async with chaos_stack(
            tmp_path, private_rabbit.url, prefix, chaos_sim, sqlite_url
        ) as chaos:
            for label in ("gateway", "video_worker", "story_worker"):
                await chaos.start(label)
            ids = await chaos.submit(videos=3, stories=2, segments=4)
            async with watching(chaos, ids) as watchers:
                await chaos.in_flight("video.segment", "story.plan", "story.set")
                await private_rabbit.stop()
                gap_job = await _start_during_the_gap(chaos, key)
                await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself
                await private_rabbit.start()
            gap_ids = [gap_job] if gap_job is not None else []
            async with watching(chaos, gap_ids) as gap_watchers:
                pass
            result = await audit(chaos, ids + gap_ids, [*watchers, *gap_watchers])
            async with chaos.db.read() as session:
                keyed = list(
                    (await session.scalars(select(Job.id).where(Job.idempotency_key == key))).all()
                )
            # Refused: nothing of it exists. Accepted: it is one whole job that finished.
            assert keyed == gap_ids
    finally:
        await delete_topology(
            private_rabbit.url, Topology(prefix=prefix, queues=BUILTIN_KINDS.queues)
        )
    print(f"chaos broker restart: {result}; start during the gap: {gap_job and 'accepted'}")
