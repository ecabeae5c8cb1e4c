"""Two gateways and two workers of each kind on one database (PostgreSQL, and one SQLite file):
jobs are started on both gateways, one worker of each kind and one gateway are killed mid-run,
and the audit holds as with one of each."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.simulator.app import SimulatorHandle
from tests.chaos.harness import audit, chaos_stack, watching

pytestmark = pytest.mark.chaos
PROCESSES = (
    "gateway",
    "gateway#2",
    "video_worker",
    "video_worker#2",
    "story_worker",
    "story_worker#2",
)


async def test_two_of_each_on_one_database(
    tmp_path: Path, amqp_url: str, prefix: str, chaos_sim: SimulatorHandle, any_database: str
) -> None:
    async with chaos_stack(tmp_path, amqp_url, prefix, chaos_sim, any_database) as chaos:
        for label in PROCESSES:
            await chaos.start(label)
        ids = await chaos.submit(videos=4, stories=4, segments=4)
        async with watching(chaos, ids) as watchers:
            await chaos.in_flight("story.plan", "story.set")
            await chaos.kill("story_worker#2")
            await chaos.in_flight("video.segment")
            await chaos.kill("video_worker")
            await chaos.kill("gateway#2")
            await chaos.start("gateway#2")
        result = await audit(chaos, ids, watchers)
    assert result.statuses == {"completed": len(ids)}
    print(f"chaos two of each on {any_database.split(':', maxsplit=1)[0]}: {result}")
