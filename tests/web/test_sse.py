"""`GET /jobs/{id}/events`: exact resume by Last-Event-ID, the same access rules as WatchJob,
stream slots, heartbeats, the watchers gauge, and streams ending on shutdown or deletion."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import httpx
import pytest
from orchestrator.v1 import jobs_pb2 as pb
from prometheus_client import REGISTRY

from services.simulator.app import SimulatorHandle
from tests.support.client import watch_to_end
from tests.support.inproc import inproc_stack, stack_settings
from tests.web.conftest import (
    ARENA,
    BOB_TOKEN,
    READ_TOKEN,
    SUBMIT_TOKEN,
    SseEvent,
    sse_events,
    token_setting,
)


def sse_gauge() -> float | None:
    return REGISTRY.get_sample_value("orchestrator_watchers", {"transport": "sse"})


async def read_until(
    http: httpx.AsyncClient, path: str, stop: int, headers: dict[str, str] | None = None
) -> list[SseEvent]:
    """Events of the stream up to and including cursor `stop` (then hang up)."""
    seen: list[SseEvent] = []
    async with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in sse_events(response):
            if event.id is not None:
                seen.append(event)
                if int(event.id) >= stop:
                    return seen
    raise AssertionError(f"the stream ended at {seen[-1].id if seen else None}")


async def test_resume_by_last_event_id_misses_nothing_and_repeats_nothing(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    async with (
        inproc_stack(stack_settings(tmp_path, sim)) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http,
    ):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=5)
        )
        replay = await watch_to_end(stack.stub, started.job_id)  # the whole job, for reference
        last = replay[-1].cursor
        path = f"/jobs/{started.job_id}/events"
        first = await read_until(http, path, 5)
        rest = await read_until(http, path, last, headers={"Last-Event-ID": first[-1].id or ""})
        by_query = await read_until(http, f"{path}?after=3", 4)
        # Last-Event-ID (the browser's reconnect) wins over the page's original ?after=.
        both = await read_until(http, f"{path}?after=1", 8, headers={"Last-Event-ID": "7"})

    seen = first + rest
    assert [int(e.id or 0) for e in seen] == list(range(1, last + 1))
    for event, reference in zip(seen, replay, strict=True):
        data = json.loads(event.data)
        assert data["cursor"] == reference.cursor == int(event.id or 0)
        assert data["message"] == reference.message
    assert [e.id for e in by_query] == ["4"]
    assert [e.id for e in both] == ["8"]
    assert json.loads(seen[-1].data)["job_status"] == "completed"


async def test_bad_cursors_and_unknown_jobs_are_refused_before_streaming(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    async with (
        inproc_stack(stack_settings(tmp_path, sim)) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http,
    ):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
        )
        await watch_to_end(stack.stub, started.job_id)
        path = f"/jobs/{started.job_id}/events"
        bad = await http.get(path, headers={"Last-Event-ID": "3; DROP"})
        beyond = await http.get(path, headers={"Last-Event-ID": "999999"})
        negative = await http.get(f"{path}?after=-1")
        slow = await http.get(f"{path}?heartbeat=301")
        missing = await http.get("/jobs/no-such-job/events")
        assert sse_gauge() == 0

    assert (bad.status_code, bad.json()["field"]) == (400, "Last-Event-ID")
    assert beyond.status_code == 400 and "beyond the job's newest event" in beyond.text
    assert (negative.status_code, negative.json()["field"]) == (400, "after")
    assert slow.status_code == 400 and "heartbeat" in slow.text
    assert missing.status_code == 404


async def test_same_access_rules_as_watchjob(tmp_path: Path, sim: SimulatorHandle) -> None:
    settings = stack_settings(tmp_path, sim, auth_tokens=token_setting())
    async with (
        inproc_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http,
    ):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1),
            metadata=(("authorization", f"Bearer {SUBMIT_TOKEN}"),),
        )
        path = f"/jobs/{started.job_id}/events"
        anonymous = await http.get(path)
        others = await http.get(path, headers={"Authorization": f"Bearer {BOB_TOKEN}"})
        by_cookie = await read_until(
            http, path, 1, headers={"Cookie": f"orchestrator_token={READ_TOKEN}"}
        )
        by_header = await read_until(
            http, path, 1, headers={"Authorization": f"Bearer {READ_TOKEN}"}
        )

    assert anonymous.status_code == 401
    assert others.status_code == 404  # another owner's job does not exist for bob
    assert by_cookie[0].id == by_header[0].id == "1"


async def test_streams_take_caller_slots_and_give_them_back(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    settings = stack_settings(tmp_path, sim, max_streams_per_caller=2, auth_tokens=token_setting())
    alice = {"Authorization": f"Bearer {SUBMIT_TOKEN}"}
    async with (
        inproc_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=30, headers=alice) as http,
    ):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1),
            metadata=(("authorization", alice["Authorization"]),),
        )
        path = f"/jobs/{started.job_id}/events"
        assert sse_gauge() == 0
        async with http.stream("GET", path) as one, http.stream("GET", path) as two:
            assert one.status_code == two.status_code == 200
            assert sse_gauge() == 2
            third = await http.get(path)
            assert third.status_code == 429
            assert "too many open event streams" in third.text
            # WatchJob counts against the same slots (the caller is the token's name).
            watch = stack.stub.WatchJob(
                pb.WatchJobRequest(job_id=started.job_id),
                metadata=(("authorization", alice["Authorization"]),),
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await watch.read()
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # Hung up: the reaper notices within a second and the slots are free again.
        async with asyncio.timeout(10):
            while sse_gauge() != 0:
                await asyncio.sleep(0.05)
        async with http.stream("GET", path) as again:
            assert again.status_code == 200


async def test_an_anonymous_client_shares_its_slots_between_sse_and_watchjob(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    # Without tokens the caller is its address: the same whichever port it comes through.
    settings = stack_settings(tmp_path, sim, max_streams_per_caller=1)
    async with (
        inproc_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http,
    ):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
        )
        async with http.stream("GET", f"/jobs/{started.job_id}/events") as one:
            assert one.status_code == 200
            watch = stack.stub.WatchJob(pb.WatchJobRequest(job_id=started.job_id))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await watch.read()
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_idle_streams_get_heartbeat_comments(tmp_path: Path, sim: SimulatorHandle) -> None:
    async with (
        inproc_stack(stack_settings(tmp_path, sim)) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http,
    ):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
        )
        last = (await watch_to_end(stack.stub, started.job_id))[-1].cursor
        path = f"/jobs/{started.job_id}/events?heartbeat=1"
        async with http.stream("GET", path, headers={"Last-Event-ID": str(last)}) as response:
            assert response.headers["cache-control"] == "no-cache, no-transform"
            async for event in sse_events(response):
                assert event.id is None  # nothing after the newest event: only comments
                beats = [c for c in event.comments if c.startswith("heartbeat")]
                if beats:
                    assert beats == [f"heartbeat {last}"]
                    break


async def test_shutdown_ends_open_streams_at_once(tmp_path: Path, sim: SimulatorHandle) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        async with inproc_stack(stack_settings(tmp_path, sim)) as stack:
            started = await stack.stub.StartVideoJob(
                pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
            )
            await watch_to_end(stack.stub, started.job_id)
            request = http.build_request("GET", f"{stack.http_url}/jobs/{started.job_id}/events")
            response = await http.send(request, stream=True)
            assert response.status_code == 200
            began = time.monotonic()
        # The gateway drained: the stream was ended, not waited for (aiohttp would wait 60 s).
        assert time.monotonic() - began < 10
        async with asyncio.timeout(5):
            body = await response.aread()
        await response.aclose()
    assert b"id: 1\n" in body
    assert sse_gauge() == 0


async def test_a_deleted_job_ends_the_stream_with_gone(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    settings = stack_settings(tmp_path, sim, job_retention=0.001)
    async with (
        inproc_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http,
    ):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
        )
        last = (await watch_to_end(stack.stub, started.job_id))[-1].cursor
        path = f"/jobs/{started.job_id}/events"
        async with http.stream("GET", path, headers={"Last-Event-ID": str(last)}) as response:
            assert response.status_code == 200
            await stack.gateway.outbox.delete_expired()
            events = [e async for e in sse_events(response) if e.event != "message" or e.id]
    assert [e.event for e in events] == ["gone"]
