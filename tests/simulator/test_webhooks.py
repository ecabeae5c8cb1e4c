"""Webhook delivery to a real receiver: on time without polling, repeated, ERROR on failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web

from services.simulator.app import SimulatorHandle
from tests.simulator.conftest import APP, wait_until


class Receiver:
    """A tiny webhook endpoint that records what it gets."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.arrived = asyncio.Condition()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        async with self.arrived:
            self.bodies.append(await request.json())
            self.arrived.notify_all()
        return web.json_response({}, status=self.status)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5), self.arrived:
            await self.arrived.wait_for(lambda: len(self.bodies) >= count)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield receiver
    await runner.cleanup()


async def _submit(sim: SimulatorHandle, webhook: str, body: object) -> str:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        response = await http.post(f"/{APP}?{urlencode({'fal_webhook': webhook})}", json=body)
    request_id: str = response.json()["request_id"]
    return request_id


async def test_webhook_arrives_without_polling(sim: SimulatorHandle, receiver: Receiver) -> None:
    request_id = await _submit(sim, receiver.url, {"prompt": "x"})

    await receiver.wait_for(1)

    body = receiver.bodies[0]
    assert body["request_id"] == request_id
    assert body["gateway_request_id"] == request_id
    assert body["status"] == "OK"
    assert body["error"] is None
    assert body["payload"]["video"]["file_name"] == f"{request_id}.mp4"
    await wait_until(lambda: sim.stats()["webhooks_sent"] == 1)


async def test_webhook_repeats(sim: SimulatorHandle, receiver: Receiver) -> None:
    sim.configure(webhook_repeats=3)
    request_id = await _submit(sim, receiver.url, {"prompt": "x"})

    await receiver.wait_for(3)

    assert [b["request_id"] for b in receiver.bodies] == [request_id] * 3
    await wait_until(lambda: sim.stats()["webhooks_sent"] == 3)


async def test_failed_generation_webhook_says_error(
    sim: SimulatorHandle, receiver: Receiver
) -> None:
    sim.configure(rules=[{"endpoint": "submit", "fault": "generation_failed"}])
    await _submit(sim, receiver.url, {"prompt": "x"})

    await receiver.wait_for(1)

    assert receiver.bodies[0]["status"] == "ERROR"
    assert receiver.bodies[0]["payload"] is None
    assert receiver.bodies[0]["error"]


async def test_delivery_failures_are_counted_not_raised(
    sim: SimulatorHandle, receiver: Receiver
) -> None:
    receiver.status = 500
    await _submit(sim, receiver.url, {"prompt": "rejected"})
    await _submit(sim, "http://127.0.0.1:9/closed-port", {"prompt": "unreachable"})

    await wait_until(lambda: sim.stats()["webhook_failures"] == 2)

    assert sim.stats()["webhooks_sent"] == 0
    async with httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.get("/_sim/health")).status_code == 200


async def test_cancelled_request_sends_no_webhook(sim: SimulatorHandle, receiver: Receiver) -> None:
    sim.configure(latency=0.5, max_concurrency=1)
    kept = await _submit(sim, receiver.url, {"prompt": "kept"})
    cancelled = await _submit(sim, receiver.url, {"prompt": "cancelled"})
    async with httpx.AsyncClient(base_url=sim.url) as http:
        await http.put(f"/fal-ai/kling-video/requests/{cancelled}/cancel")

    await receiver.wait_for(1)
    await wait_until(lambda: sim.stats()["webhooks_sent"] == 1)

    assert [b["request_id"] for b in receiver.bodies] == [kept]
    assert sim.state.queue.in_progress_now == 0
