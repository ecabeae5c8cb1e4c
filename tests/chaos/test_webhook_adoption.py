"""A video worker SIGKILLed mid-submit, with webhooks on: fal accepted the submits the dead
worker never recorded; each submit's webhook URL names its task and attempt, so the gateway
adopts those requests when fal calls back, and no segment is paid twice (the simulator's
accepted-submit counter is the proof)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.store.tables import Task
from services.simulator.app import SimulatorHandle
from tests.chaos.harness import Chaos, audit, chaos_stack, watching
from tests.support.procs import free_port

pytestmark = pytest.mark.chaos

SEGMENTS = 8
KILLS = 2


async def _orphans(chaos: Chaos, timeout: float = 20) -> int:
    """Wait until fal accepted submits whose request ids no task records yet (the worker is
    mid-submit, past the point of payment); how many."""
    async with asyncio.timeout(timeout):
        while True:
            accepted = chaos.sim.stats(with_logs=False)["accepted_requests"]
            recorded = len(await chaos.tasks(Task.request_id.is_not(None)))
            if accepted > recorded:
                return accepted - recorded
            await asyncio.sleep(0.02)


async def test_submits_cut_off_by_a_kill_are_adopted_from_their_webhooks_and_paid_once(
    tmp_path: Path, amqp_url: str, prefix: str, chaos_sim: SimulatorHandle, sqlite_url: str
) -> None:
    # Each submit is answered 1.5 s after fal accepted it (the chaos simulator's rule): kills land
    # between payment and record.
    http = f"127.0.0.1:{free_port()}"
    webhooks = {
        "PUBLIC_HTTP_URL": f"http://{http}",
        "WEBHOOK_SECRET": "chaos-webhook-secret",
        # fal calls back about 1 s after it accepted a submit (the generation's latency).
        "WEBHOOK_ADOPT_WINDOW": "8",
        "FAL_JWKS_URL": f"{chaos_sim.url}/.well-known/jwks.json",
    }
    async with chaos_stack(tmp_path, amqp_url, prefix, chaos_sim, sqlite_url, **webhooks) as chaos:
        await chaos.start("gateway", HTTP_ADDR=http)
        await chaos.start("video_worker")
        ids = await chaos.submit(videos=1, stories=0, segments=SEGMENTS)
        cut_off = 0
        async with watching(chaos, ids) as watchers:
            for _ in range(KILLS):
                try:
                    cut_off += await _orphans(chaos)
                except TimeoutError:
                    break  # every segment was submitted already
                await chaos.kill("video_worker")
                await chaos.start("video_worker")
        result = await audit(chaos, ids, watchers)
        events = await chaos.events(ids)
    assert cut_off >= 1
    assert result.statuses == {"completed": 1}
    stats = chaos_sim.stats(with_logs=False)
    assert stats["accepted_requests"] == SEGMENTS, stats  # one paid submit per segment
    adopted = [e for e in events if e.message.startswith("adopted fal request")]
    assert len(adopted) >= cut_off
    # A submit killed before it reached fal was made again once the window had passed.
    again = [e for e in events if "was lost" in e.message]
    print(
        f"chaos webhook adoption: {cut_off} submits cut off, {len(adopted)} adopted,"
        f" {len(again)} never reached fal and were made again; {result}"
    )
