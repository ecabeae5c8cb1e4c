"""The gateway process is SIGKILLed and restarted while a job's page is open: the page
reconnects by itself and its event log ends up exactly the job's events, none missing, none
twice. Real processes (gateway, video worker) on a real RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from orchestrator.v1 import jobs_pb2 as pb
from playwright.async_api import Page, expect

from common.broker import Topology, delete_topology
from common.domain.kinds import BUILTIN_KINDS
from services.simulator.app import SimulatorHandle
from tests.browser.helpers import event_cursors, expect_clean_log
from tests.support.client import watch_to_end
from tests.support.stack import running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
async def broker_prefix(amqp_url: str, queue_prefix: str) -> AsyncIterator[str]:
    yield queue_prefix
    await delete_topology(amqp_url, Topology(prefix=queue_prefix, queues=BUILTIN_KINDS.queues))


async def test_page_reconnects_after_gateway_sigkill_and_misses_nothing(
    page: Page, tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(latency=1.5)
    env = {"FAL_CONCURRENCY": "2", "FAL_POLL_INTERVAL": "0.2"}
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim, env=env) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url="https://example.com/a.png", total_segments=8)
        )
        await page.goto(f"{stack.http_url}/jobs/{started.job_id}")
        await page.evaluate("window.__sameDocument = true")
        live = page.locator("#live")
        await expect(live).to_have_attribute("data-state", "live")
        rows = page.locator("#events tr")
        await expect(rows.nth(7)).to_be_attached()  # a few events in, the job still running
        assert await page.locator("#job-status .word").inner_text() == "running"

        await stack.processes["gateway"].kill()
        await expect(live).to_have_attribute("data-state", "reconnecting")
        before = await event_cursors(page)
        await stack.start("gateway")  # same HTTP port, from the env

        await expect(live).to_have_attribute("data-state", "live")
        await expect(page.locator("#job-status .word")).to_have_text("completed", timeout=60_000)
        for index in range(1, 9):
            await expect(page.locator(f"#task-{index} .status .word")).to_have_text("succeeded")
        replay = await watch_to_end(stack.stub, started.job_id)
        await expect(rows).to_have_count(len(replay))
        cursors = await expect_clean_log(page)
        assert await page.evaluate("window.__sameDocument") is True  # no reload: it resumed

    assert cursors == [e.cursor for e in replay]
    assert before == cursors[: len(before)]
    assert len(replay) > len(before)  # events came after the restart, on the resumed stream
