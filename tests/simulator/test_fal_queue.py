"""The queue model on a manual clock: positions, concurrency, priority, exact timing."""

from __future__ import annotations

import httpx

from services.simulator.app import SimulatorHandle
from services.simulator.fal_queue import FalQueue, Outcome, QueuedRequest, QueueStatus
from tests.simulator.conftest import APP, ManualClock


def _request(
    name: str, clock: ManualClock, latency: float = 10.0, priority: str = "normal"
) -> QueuedRequest:
    return QueuedRequest(
        request_id=name,
        app_id=APP,
        route_prefix="fal-ai/kling-video",
        base_url="http://sim",
        arguments={},
        body_text="{}",
        webhook_url=None,
        priority="low" if priority == "low" else "normal",
        latency=latency,
        fails=False,
        seed=1,
        file_size=64,
        submitted_at=clock(),
    )


def test_waiting_requests_start_when_a_slot_frees_not_when_polled() -> None:
    clock = ManualClock()
    queue = FalQueue(clock)
    queue.set_max_concurrency(2)
    a, b, c = (_request(n, clock) for n in "abc")
    assert [queue.submit(r) for r in (a, b, c)] == [0, 0, 0]
    assert c.status is QueueStatus.IN_QUEUE

    clock.advance(25)  # nobody polled at t=10, when a and b finished
    queue.advance()

    assert a.completed_at == b.completed_at == 1010.0
    assert c.started_at == 1010.0
    assert c.completed_at == 1020.0
    assert c.outcome is Outcome.OK
    assert queue.max_in_progress == 2


def test_positions_count_normal_before_low_priority() -> None:
    clock = ManualClock()
    queue = FalQueue(clock)
    queue.set_max_concurrency(1)
    queue.submit(_request("running", clock))
    low = _request("low", clock, priority="low")
    queue.submit(low)
    normal = _request("normal", clock)
    queue.submit(normal)

    assert queue.position(normal) == 0
    assert queue.position(low) == 1
    clock.advance(10)
    queue.advance()
    assert normal.status is QueueStatus.IN_PROGRESS
    assert queue.position(low) == 0


def test_cancel_running_frees_its_slot() -> None:
    clock = ManualClock()
    queue = FalQueue(clock)
    queue.set_max_concurrency(1)
    running, waiting = _request("r", clock), _request("w", clock)
    queue.submit(running)
    queue.submit(waiting)

    assert queue.cancel(running)
    assert running.outcome is Outcome.CANCELLED
    assert waiting.status is QueueStatus.IN_PROGRESS
    assert not queue.cancel(running)


def test_raising_concurrency_starts_waiting_requests() -> None:
    clock = ManualClock()
    queue = FalQueue(clock)
    queue.set_max_concurrency(1)
    requests = [_request(str(n), clock) for n in range(3)]
    for request in requests:
        queue.submit(request)
    assert queue.in_progress_now == 1

    queue.set_max_concurrency(0)

    assert queue.in_progress_now == 3
    assert queue.max_in_progress == 3


async def test_positions_and_max_in_progress_over_http(
    manual_sim: SimulatorHandle, clock: ManualClock
) -> None:
    manual_sim.configure(max_concurrency=2)
    async with httpx.AsyncClient(base_url=manual_sim.url) as http:
        submitted = [(await http.post(f"/{APP}", json={"n": n})).json() for n in range(5)]
        assert [s["queue_position"] for s in submitted] == [0, 0, 0, 1, 2]

        last = await http.get(submitted[4]["status_url"])
        assert last.status_code == 202
        assert last.json()["status"] == "IN_QUEUE"
        assert last.json()["queue_position"] == 2

        clock.advance(10)
        moved = await http.get(submitted[4]["status_url"])
        assert moved.json() == {
            "status": "IN_QUEUE",
            "queue_position": 0,
            "response_url": submitted[4]["response_url"],
        }

    stats = manual_sim.stats()
    assert stats["max_in_progress"] == 2
    assert stats["in_progress_now"] == 2
    assert stats["in_queue_now"] == 1


async def test_latency_jitter_stays_in_range(sim: SimulatorHandle) -> None:
    sim.configure(latency=10.0, latency_jitter=0.2)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        ids = [(await http.post(f"/{APP}", json={"n": n})).json()["request_id"] for n in range(20)]

    latencies = [sim.state.queue.get(i).latency for i in ids]  # type: ignore[union-attr]
    assert all(8.0 <= latency <= 12.0 for latency in latencies)
    assert len(set(latencies)) > 1
