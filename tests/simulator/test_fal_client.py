"""The real fal_client request handle against the simulator.

fal_client's queue host is fixed at import (https only), so the submit goes over httpx and
the real `AsyncRequestHandle` then follows the URLs the simulator handed back, which is
exactly how a persisted request is resumed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fal_client.client import AsyncRequestHandle, Completed, FalClientHTTPError, InProgress, Queued

from services.simulator.app import SimulatorHandle
from tests.simulator.conftest import APP, ManualClock


@pytest.fixture
async def fal_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


async def _handle(url: str, client: httpx.AsyncClient, body: object) -> AsyncRequestHandle:
    response = await client.post(f"{url}/{APP}", json=body)
    response.raise_for_status()
    data = response.json()
    return AsyncRequestHandle(
        request_id=data["request_id"],
        response_url=data["response_url"],
        status_url=data["status_url"],
        cancel_url=data["cancel_url"],
        client=client,
    )


async def test_handle_polls_to_completion_and_gets_the_video(
    sim: SimulatorHandle, fal_http: httpx.AsyncClient
) -> None:
    handle = await _handle(sim.url, fal_http, {"prompt": "a lighthouse"})

    first = await handle.status(with_logs=True)
    result = await handle.get(interval=0.01)
    last = await handle.status()

    assert isinstance(first, InProgress | Completed)
    assert isinstance(last, Completed)
    assert last.metrics["inference_time"] == pytest.approx(0.05)
    assert result["video"]["file_name"] == f"{handle.request_id}.mp4"


async def test_handle_sees_queue_position(
    manual_sim: SimulatorHandle, clock: ManualClock, fal_http: httpx.AsyncClient
) -> None:
    manual_sim.configure(max_concurrency=1)
    running = await _handle(manual_sim.url, fal_http, {"prompt": "1"})
    waiting = await _handle(manual_sim.url, fal_http, {"prompt": "2"})

    assert await waiting.status() == Queued(position=0)
    assert isinstance(await running.status(), InProgress)
    clock.advance(10)
    assert isinstance(await waiting.status(), InProgress)


async def test_handle_cancel(manual_sim: SimulatorHandle, fal_http: httpx.AsyncClient) -> None:
    handle = await _handle(manual_sim.url, fal_http, {"prompt": "x"})

    await handle.cancel()

    assert isinstance(await handle.status(), Completed)
    with pytest.raises(FalClientHTTPError) as caught:
        await handle.cancel()
    assert caught.value.status_code == 400


async def test_failed_generation_is_completed_then_422(
    sim: SimulatorHandle, fal_http: httpx.AsyncClient
) -> None:
    sim.configure(
        latency=0, rules=[{"endpoint": "submit", "match": "doomed", "fault": "generation_failed"}]
    )
    handle = await _handle(sim.url, fal_http, {"prompt": "doomed"})

    status = await handle.status()
    with pytest.raises(FalClientHTTPError) as caught:
        await handle.get()

    assert isinstance(status, Completed)
    assert status.error is not None
    assert status.error_type == "generation_error"
    assert caught.value.status_code == 422
    assert caught.value.response.json()["detail"][0]["loc"] == ["body"]
    assert "x-fal-request-id" in caught.value.response_headers
