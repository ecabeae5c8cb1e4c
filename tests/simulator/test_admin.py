"""Admin routes and the in-process handle: config validation, reset, stats."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from services.simulator.app import SimulatorHandle
from tests.simulator.conftest import APP

STATS_KEYS = {
    "calls",
    "responses",
    "faults_injected",
    "submits_total",
    "accepted_requests",
    "submits_by_payload",
    "duplicate_submits",
    "max_in_progress",
    "in_progress_now",
    "in_queue_now",
    "webhooks_sent",
    "webhook_failures",
    "chat_calls",
    "rate_limited",
    "over_budget",
    "rules_fired",
    "uploads",
    "chat_log",
    "call_log",
}


async def test_config_round_trip_never_shows_keys(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    changed = await http.post(
        "/_sim/config", json={"max_concurrency": 4, "fal_key": "fal-secret", "latency": 1}
    )
    shown = await http.get("/_sim/config")

    assert changed.status_code == 200
    assert shown.json() == changed.json()
    assert shown.json()["max_concurrency"] == 4
    assert shown.json()["latency"] == 1.0
    assert shown.json()["fal_key"] == "**********"
    assert shown.json()["openai_key"] is None
    assert "fal-secret" not in shown.text
    assert "fal-secret" not in repr(sim.state.config)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"latency": -1}, ["latency"]),
        ({"no_such_knob": 1}, ["no_such_knob"]),
        ({"faults": [{"rates": {"418x": 0.5}}]}, ["faults", 0, "rates", "418x", "[key]"]),
        ({"faults": [{"rates": {"503": 0.7, "429": 0.6}}]}, ["faults", 0]),
        ({"faults": [{"endpoints": ["submit"], "rates": {"truncate": 0.1}}]}, ["faults", 0]),
        ({"rules": [{"endpoint": "chat", "fault": "generation_failed"}]}, ["rules", 0]),
        ({"outages": [{"duration": 0}]}, ["outages", 0, "duration"]),
        ({"outages": [{"duration": 1, "status": 200}]}, ["outages", 0, "status"]),
    ],
)
async def test_bad_config_is_400_naming_the_field(
    sim: SimulatorHandle, http: httpx.AsyncClient, changes: dict[str, object], field: list[object]
) -> None:
    before = sim.state.config

    response = await http.post("/_sim/config", json=changes)

    assert response.status_code == 400
    assert field in [problem["loc"] for problem in response.json()["detail"]]
    assert sim.state.config is before


async def test_config_body_must_be_an_object(http: httpx.AsyncClient) -> None:
    assert (await http.post("/_sim/config", json=[1])).status_code == 400
    assert (await http.post("/_sim/config", content=b"{")).status_code == 400


async def test_handle_configure_validates_too(sim: SimulatorHandle) -> None:
    with pytest.raises(ValidationError):
        sim.configure(max_concurrency=-1)


async def test_reset_restores_start_config_and_clears_everything(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(latency=60, rules=[{"endpoint": "status", "fault": "500"}])
    submitted = (await http.post(f"/{APP}", json={"prompt": "x"})).json()

    reset = await http.post("/_sim/reset")
    stats = (await http.get("/_sim/stats")).json()

    assert reset.status_code == 200
    assert reset.json()["latency"] == 0.05
    assert reset.json()["rules"] == []
    assert stats["calls"] == {}
    assert stats["accepted_requests"] == 0
    assert stats["call_log"] == []
    assert (await http.get(submitted["status_url"])).status_code == 404


async def test_stats_document(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    await http.post(f"/{APP}", json={"prompt": "x"})

    full = (await http.get("/_sim/stats")).json()
    light = (await http.get("/_sim/stats", params={"logs": "false"})).json()

    assert set(full) == STATS_KEYS
    assert set(light) == STATS_KEYS - {"chat_log", "call_log"}
    entry = full["call_log"][0]
    assert set(entry) == {"t", "endpoint", "status", "fault", "request_id"}
    assert entry["endpoint"] == "submit"
    assert entry["status"] == 200
    assert full == sim.stats()


async def test_call_log_is_capped(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    sim.configure(call_log_limit=2)
    for _ in range(4):
        await http.get("/fal-ai/x/requests/nope/status")

    stats = sim.stats()
    assert stats["calls"]["status"] == 4
    assert len(stats["call_log"]) == 2


async def test_outages_are_anchored_when_configured(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(outages=[{"duration": 60, "endpoints": ["status"], "status": "timeout"}])
    sim.configure(hang_seconds=0)  # changing another knob leaves the outage running

    response = await http.get("/fal-ai/x/requests/nope/status")

    assert response.status_code == 504
    assert sim.stats()["faults_injected"] == {"status": {"outage": 1}}
