"""The gateway SIGKILLed under watchers (who resume with their cursor), and a provider outage
(the breaker opens, work waits without spending attempts, everything finishes after)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator_client import JobsClient
from services.simulator.app import SimulatorHandle
from tests.chaos.harness import audit, chaos_stack, watching

pytestmark = pytest.mark.chaos


async def test_the_gateway_killed_under_watchers_twice(
    tmp_path: Path, amqp_url: str, prefix: str, chaos_sim: SimulatorHandle, sqlite_url: str
) -> None:
    async with chaos_stack(tmp_path, amqp_url, prefix, chaos_sim, sqlite_url) as chaos:
        for label in ("gateway", "video_worker", "story_worker"):
            await chaos.start(label)
        ids = await chaos.submit(videos=3, stories=2, segments=4)
        async with watching(chaos, ids) as watchers:
            for _ in range(2):
                await chaos.in_flight("video.segment", "story.plan", "story.set")
                await chaos.kill("gateway")
                await chaos.start("gateway")
        result = await audit(chaos, ids, watchers)
    assert all(w.reconnects >= 1 for w in watchers if w.cursors)
    print(f"chaos gateway kills: {result}; reconnects {[w.reconnects for w in watchers]}")


async def test_a_provider_outage_defers_work_and_then_everything_finishes(
    tmp_path: Path, amqp_url: str, prefix: str, chaos_sim: SimulatorHandle, sqlite_url: str
) -> None:
    async with chaos_stack(
        tmp_path,
        amqp_url,
        prefix,
        chaos_sim,
        sqlite_url,
        BREAKER_CONSECUTIVE_FAILURES="3",
        BREAKER_OPEN_SECONDS="2",
    ) as chaos:
        for label in ("gateway", "video_worker", "story_worker"):
            await chaos.start(label)
        ids = await chaos.submit(videos=3, stories=2, segments=4)
        async with watching(chaos, ids) as watchers:
            await chaos.in_flight("video.segment", "story.plan", "story.set")
            chaos_sim.configure(
                outages=[{"duration": 6, "endpoints": ["submit", "status", "result", "chat"]}]
            )
        result = await audit(chaos, ids, watchers)
        events = await chaos.events(ids)
        kinds = {e.type for e in events}
        assert "breaker" in kinds and "task_deferred" in kinds, kinds
        # A task whose probes met the outage may have run out of attempts: it is recoverable,
        # and RetryFailed finishes the job.
        unfinished = [i for i, j in (await chaos.jobs(ids)).items() if j.status != "completed"]
        async with JobsClient(chaos.gateways[0]) as client:
            for job_id in unfinished:
                job = await client.get(job_id)
                assert job.recoverable, job.message
                await client.retry_failed(job_id)
        await chaos.all_finished(ids)
        assert {j.status for j in (await chaos.jobs(ids)).values()} == {"completed"}
    print(f"chaos provider outage: {result}; {len(unfinished)} jobs finished by RetryFailed")
