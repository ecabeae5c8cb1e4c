"""Fault injection on the fal endpoints: statuses, hangs, resets, outages, rules, rates."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fal_client.client import AsyncRequestHandle, InProgress

from services.simulator.app import SimulatorHandle, run_simulator
from services.simulator.config import SimulatorConfig
from tests.simulator.conftest import APP, ManualClock, wait_until


async def test_status_fault_has_fal_body_and_retry_after(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(faults=[{"endpoints": ["submit"], "rates": {"429": 1.0}, "retry_after": 1.5}])

    response = await http.post(f"/{APP}", json={"prompt": "x"})

    assert response.status_code == 429
    assert response.json() == {"detail": "Too Many Requests"}
    assert response.headers["retry-after"] == "2"  # whole seconds, rounded up
    assert response.headers["x-fal-request-id"]
    stats = sim.stats()
    assert stats["accepted_requests"] == 0  # a faulted submit is never a paid request
    assert stats["responses"]["submit"] == {"429": 1}
    assert stats["faults_injected"]["submit"] == {"429": 1}


async def test_ingress_errors_look_like_nginx(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(faults=[{"endpoints": ["submit"], "rates": {"502": 1.0}, "ingress": True}])

    response = await http.post(f"/{APP}", json={"prompt": "x"})

    assert response.status_code == 502
    assert "nginx" in response.text
    assert "x-fal-request-id" not in response.headers


async def test_timeout_holds_then_answers_504(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(hang_seconds=0.3, rules=[{"endpoint": "submit", "fault": "timeout", "times": 2}])

    started = time.monotonic()
    held = await http.post(f"/{APP}", json={"prompt": "x"})
    assert held.status_code == 504
    assert time.monotonic() - started >= 0.3

    with pytest.raises(httpx.ReadTimeout):
        await http.post(f"/{APP}", json={"prompt": "x"}, timeout=0.05)
    assert sim.stats()["calls"]["submit"] == 2  # counted on arrival, while still held
    assert sim.stats()["accepted_requests"] == 0


async def test_reset_drops_the_connection(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    sim.configure(rules=[{"endpoint": "submit", "fault": "reset", "times": 1}])

    with pytest.raises(httpx.TransportError):
        await http.post(f"/{APP}", json={"prompt": "x"})
    after = await http.post(f"/{APP}", json={"prompt": "x"})

    assert after.status_code == 200
    stats = sim.stats()
    assert stats["responses"]["submit"] == {"reset": 1, "200": 1}
    assert stats["call_log"][0]["status"] is None
    assert stats["call_log"][0]["fault"] == "reset"


async def test_outage_window_on_the_simulator_clock(
    manual_sim: SimulatorHandle, clock: ManualClock
) -> None:
    manual_sim.configure(
        outages=[{"start": 5, "duration": 10, "endpoints": ["submit"], "retry_after": 3}]
    )
    async with httpx.AsyncClient(base_url=manual_sim.url) as http:
        before = await http.post(f"/{APP}", json={"n": 1})
        clock.advance(5)
        during = await http.post(f"/{APP}", json={"n": 2})
        status_during = await http.get(before.json()["status_url"])
        clock.advance(10)
        after = await http.post(f"/{APP}", json={"n": 3})

    assert before.status_code == 200
    assert during.status_code == 503
    assert during.headers["retry-after"] == "3"
    assert status_during.status_code == 202  # only the listed endpoints are out
    assert after.status_code == 200
    refused = [c for c in manual_sim.stats()["call_log"] if c["fault"] == "outage"]
    assert [(c["endpoint"], c["status"]) for c in refused] == [("submit", 503)]


async def test_rule_fires_only_on_matching_bodies_and_only_times(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "flaky", "fault": 503, "times": 2}])

    other = await http.post(f"/{APP}", json={"prompt": "steady"})
    statuses = [
        (await http.post(f"/{APP}", json={"prompt": "flaky"})).status_code for _ in range(3)
    ]

    assert other.status_code == 200
    assert statuses == [503, 503, 200]
    assert sim.stats()["rules_fired"] == [2]


async def test_result_rule_matches_the_original_submit_body(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(latency=0, rules=[{"endpoint": "result", "match": "segment-7", "fault": "500"}])
    hit = (await http.post(f"/{APP}", json={"prompt": "segment-7"})).json()
    miss = (await http.post(f"/{APP}", json={"prompt": "segment-8"})).json()

    assert (await http.get(hit["response_url"])).status_code == 500
    assert (await http.get(miss["response_url"])).status_code == 200


async def test_slow_response_accepts_the_submit_before_the_client_gives_up(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(hang_seconds=0.3, rules=[{"endpoint": "submit", "fault": "slow_response"}])

    with pytest.raises(httpx.ReadTimeout):
        await http.post(f"/{APP}", json={"prompt": "paid"}, timeout=0.05)

    # The provider did the work: a blind resubmit would now pay twice.
    assert sim.stats()["accepted_requests"] == 1


async def test_fal_client_retries_429_by_itself(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(latency=60, rules=[{"endpoint": "status", "fault": "429", "times": 1}])
    data = (await http.post(f"/{APP}", json={"prompt": "x"})).json()
    handle = AsyncRequestHandle(
        request_id=data["request_id"],
        response_url=data["response_url"],
        status_url=data["status_url"],
        cancel_url=data["cancel_url"],
        client=http,
    )

    status = await handle.status()

    assert isinstance(status, InProgress)
    assert sim.stats()["responses"]["status"] == {"429": 1, "202": 1}


async def test_same_seed_same_faults() -> None:
    config = SimulatorConfig(latency=0, seed=42).merged(
        {"faults": [{"endpoints": ["submit"], "rates": {"503": 0.3, "429": 0.2}}]}
    )

    async def run(cfg: SimulatorConfig) -> list[int]:
        async with run_simulator(cfg) as sim, httpx.AsyncClient(base_url=sim.url) as http:
            return [(await http.post(f"/{APP}", json={"n": n})).status_code for n in range(40)]

    first, second = await run(config), await run(config)
    other = await run(config.merged({"seed": 43}))

    assert first == second
    assert first != other
    assert {503, 429, 200} <= set(first)


async def test_shutdown_does_not_wait_for_held_calls() -> None:
    config = SimulatorConfig(hang_seconds=60).merged(
        {"rules": [{"endpoint": "submit", "fault": "timeout"}]}
    )
    async with httpx.AsyncClient(timeout=30) as http:
        async with run_simulator(config) as sim:
            call = asyncio.create_task(http.post(f"{sim.url}/{APP}", json={}))
            await wait_until(lambda: bool(sim.stats()["calls"].get("submit")))
            started = time.monotonic()
        elapsed = time.monotonic() - started
        answer = await asyncio.gather(call, return_exceptions=True)

    assert elapsed < 2
    assert answer  # answered (504) or cut off; either way not after 60 s
