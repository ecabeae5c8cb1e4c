"""`GET /_sim/stats?timeline=true`: each accepted request's accept, start and completion times
(on the simulator's clock), what the benchmark's slot hand-off latency is computed from."""

from __future__ import annotations

import httpx

from services.simulator.app import SimulatorHandle
from tests.simulator.conftest import APP, ManualClock


async def test_timeline_has_accept_start_and_due_completion_per_request(
    manual_sim: SimulatorHandle, clock: ManualClock
) -> None:
    manual_sim.configure(max_concurrency=1)
    async with httpx.AsyncClient(base_url=manual_sim.url) as http:
        first = (await http.post(f"/{APP}", json={"n": 0})).json()
        clock.advance(2)
        await http.post(f"/{APP}", json={"n": 1})  # waits: the one slot is taken
        clock.advance(3)
        third = (await http.post(f"/{APP}", json={"n": 2})).json()
        assert (await http.put(third["cancel_url"])).status_code == 202
        # Nobody polls at 1010, when the first finishes: the completion is its due time anyway.
        clock.advance(20)
        stats = (await http.get("/_sim/stats", params={"logs": "false", "timeline": "true"})).json()
        plain = (await http.get("/_sim/stats", params={"logs": "false"})).json()

    assert stats["timeline"] == {
        "now": 1025.0,
        "submitted_at": [1000.0, 1002.0, 1005.0],
        "started_at": [1000.0, 1010.0, None],
        "completed_at": [1010.0, 1020.0, 1005.0],
        "outcome": ["ok", "ok", "cancelled"],
    }
    assert "timeline" not in plain  # the default document stays as it was
    assert first["request_id"]


async def test_timeline_shows_unfinished_requests_as_none(
    manual_sim: SimulatorHandle, clock: ManualClock
) -> None:
    async with httpx.AsyncClient(base_url=manual_sim.url) as http:
        await http.post(f"/{APP}", json={"n": 0})
        clock.advance(4)

    timeline = manual_sim.stats(with_logs=False, with_timeline=True)["timeline"]

    assert timeline["submitted_at"] == [1000.0]
    assert timeline["started_at"] == [1000.0]
    assert timeline["completed_at"] == [None]
    assert timeline["outcome"] == [None]
    assert "timeline" not in manual_sim.stats(with_logs=False)
