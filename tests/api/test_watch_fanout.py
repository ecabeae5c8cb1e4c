"""The progress fan-out: one job's events shared by many watchers on both transports.

Watchers at the same cursor receive the same batch, encoded once (WatchJob sends bytes
serialized once; SSE messages likewise), feeds read in one trip to the store, and watchers wait
on their feed without timers of their own. None of that may change what a watcher receives:
every event once, in cursor order, from where it resumed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path

import httpx
import pytest
from orchestrator.v1 import jobs_pb2 as pb

from common.broker import ProgressNote
from common.collector import GC_YOUNG_THRESHOLD, settle_collector
from common.domain.records import EventRecord
from common.domain.states import JobStatus
from common.lifecycle import Background
from services.gateway import progress
from services.gateway import proto_convert as convert
from services.gateway.feed_reads import FeedReads, Head, read_events
from services.gateway.grpc_api import encode_batch
from services.gateway.progress import BATCH, FALLBACK_READ_SECONDS, JobFeed, ProgressHub
from services.simulator.app import SimulatorHandle
from tests.support.client import Stub, events_until, watch_to_end
from tests.support.inproc import inproc_stack, stack_settings
from tests.web.conftest import sse_events

ARENA = "https://example.com/arena.png"


async def grpc_watch(stub: Stub, job_id: str, after: int) -> list[pb.JobEvent]:
    return await watch_to_end(stub, job_id, after=after)


async def sse_watch(http: httpx.AsyncClient, job_id: str, after: int) -> list[dict[str, object]]:
    """The SSE stream's events after `after` up to the job's terminal event."""
    seen: list[dict[str, object]] = []
    async with http.stream("GET", f"/jobs/{job_id}/events?after={after}") as response:
        assert response.status_code == 200
        async for event in sse_events(response):
            if event.id is None:
                continue
            data = json.loads(event.data)
            assert data["cursor"] == int(event.id)
            seen.append(data)
            if data["type"] == "job_status" and data["job_status"] in {
                "completed",
                "partially_failed",
                "failed",
                "cancelled",
            }:
                return seen
    raise AssertionError("the SSE stream ended before the job did")


async def test_many_watchers_on_both_transports_each_get_every_event_once(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    async with (
        inproc_stack(stack_settings(tmp_path, sim)) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=60) as http,
    ):
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=8)
        )
        job_id = started.job_id
        # Watchers at the same cursors (sharing batches), and others resuming from cursors
        # the job has reached (history, then live).
        afters = [0] * 6 + [1, 2, 3]
        async with asyncio.TaskGroup() as tasks:
            grpc_runs = [tasks.create_task(grpc_watch(stack.stub, job_id, 0)) for _ in range(6)]
            sse_runs = [tasks.create_task(sse_watch(http, job_id, 0)) for _ in range(6)]
            await events_until(stack.stub, job_id, lambda seen: len(seen) >= 3)
            for after in afters[6:]:
                grpc_runs.append(tasks.create_task(grpc_watch(stack.stub, job_id, after)))
                sse_runs.append(tasks.create_task(sse_watch(http, job_id, after)))
        reference = await watch_to_end(stack.stub, job_id)  # the finished job, replayed

    last = reference[-1].cursor
    assert [e.cursor for e in reference] == list(range(1, last + 1))
    for after, run in zip(afters, grpc_runs, strict=True):
        assert run.result() == reference[after:]
    for after, sse_run in zip(afters, sse_runs, strict=True):
        seen = sse_run.result()
        assert [e["cursor"] for e in seen] == list(range(after + 1, last + 1))
        assert [e["message"] for e in seen] == [e.message for e in reference[after:]]


async def test_watchjob_bytes_are_the_encoding_of_the_response(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    """A batch is sent as its events' one-element responses concatenated: byte for byte
    what serializing one WatchJobResponse holding them all gives (details included)."""
    async with inproc_stack(stack_settings(tmp_path, sim)) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=3)
        )
        await watch_to_end(stack.stub, started.job_id)
        events, _ = await read_events(stack.infra.db, started.job_id, 0, 1000)
    assert len(events) > 3 and any(e.details for e in events)
    message = pb.WatchJobResponse(events=[convert.event_message(e) for e in events])
    assert encode_batch(events) == message.SerializeToString()
    assert pb.WatchJobResponse.FromString(encode_batch(events[1:3])).events == message.events[1:3]


async def test_a_feed_reads_in_one_trip_what_the_async_session_reads(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    async with inproc_stack(stack_settings(tmp_path, sim)) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=2)
        )
        await watch_to_end(stack.stub, started.job_id)
        db = stack.infra.db
        reads = FeedReads(db)
        try:
            assert reads.read == reads._read_in_thread  # a SQLite file: the one-trip reader
            for cursor, limit in ((0, 1000), (2, 3), (10_000, 5)):
                ours, our_head = await reads.read(started.job_id, cursor, limit)
                theirs, their_head = await read_events(db, started.job_id, cursor, limit)
                assert [(e.seq, e.message, e.details) for e in ours] == [
                    (e.seq, e.message, e.details) for e in theirs
                ]
                assert our_head == their_head
                assert our_head is not None and our_head[0] is JobStatus.COMPLETED
            assert await reads.read("no-such-job", 0, 10) == ([], None)
        finally:
            await reads.close()


async def test_a_heartbeat_longer_than_the_feed_period_comes_on_time(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    """Watchers wait without a timer while their heartbeat is further away than the feed's
    periodic read, which wakes them; the heartbeat still comes when due, not before."""
    interval = 3
    assert interval > FALLBACK_READ_SECONDS
    async with inproc_stack(stack_settings(tmp_path, sim)) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
        )
        last = (await watch_to_end(stack.stub, started.job_id))[-1].cursor
        request = pb.WatchJobRequest(
            job_id=started.job_id, after_cursor=last, follow=True, heartbeat_seconds=interval
        )
        began = time.monotonic()
        beats: list[float] = []
        async with asyncio.timeout(30):
            async for item in stack.stub.WatchJob(request):
                assert not item.events  # nothing after the newest event
                assert item.heartbeat.cursor == last
                beats.append(time.monotonic() - began)
                if len(beats) == 2:
                    break
    assert beats[0] >= interval - 0.5
    assert beats[1] - beats[0] >= interval - 0.5


async def woken(feed: JobFeed) -> None:
    wakeup = feed.next_wake(feed.wakes)
    assert wakeup is not None
    await wakeup


def _event(job_id: str, seq: int) -> EventRecord:
    return EventRecord(job_id, seq, "task_status", None, "", "", f"event {seq}", "", {}, 0.0)


async def test_watchers_at_one_cursor_share_a_batch_until_the_feed_reads_again() -> None:
    written = [_event("j", seq) for seq in range(1, BATCH + 11)]
    upto = 5

    async def read(job_id: str, cursor: int, limit: int) -> tuple[list[EventRecord], Head]:
        fresh = [e for e in written if cursor < e.seq <= upto][:limit]
        return fresh, (JobStatus.RUNNING, upto)

    hub = ProgressHub(read, Background())
    with hub.watching("j", 0, JobStatus.RUNNING, "") as feed:
        async with asyncio.timeout(10):
            while feed.fetched < upto:
                await woken(feed)
        first = feed.batch_after(0)
        assert first is not None and [e.seq for e in first.events] == [1, 2, 3, 4, 5]
        assert feed.batch_after(0) is first  # the next watcher at cursor 0
        assert feed.batch_after(2) is not first and feed.batch_after(2) is feed.batch_after(2)
        assert feed.batch_after(5) is None
        made = []
        assert first.derive("x", lambda events: made.append(1) or len(events)) == 5
        assert first.derive("x", lambda events: made.append(1) or len(events)) == 5
        assert made == [1]  # derived once
        upto = len(written)
        hub.on_note(ProgressNote("j", upto))
        async with asyncio.timeout(10):
            while feed.fetched < upto:
                await woken(feed)
        again = feed.batch_after(0)
        assert again is not first and again is not None and len(again) == BATCH  # at most
        assert (again.first, again.last) == (1, BATCH)
        rest = feed.batch_after(BATCH)
        assert rest is not None and (rest.first, rest.last) == (BATCH + 1, upto)


async def test_a_feed_wakes_its_watchers_even_while_its_reads_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Watchers wait on their feed with no timer of their own (their heartbeats depend on
    being woken), so a feed whose reads fail or hang still wakes them every period."""
    monkeypatch.setattr(progress, "FALLBACK_READ_SECONDS", 0.05)
    reads = 0
    hang = asyncio.Event()

    async def failing(job_id: str, cursor: int, limit: int) -> tuple[list[EventRecord], Head]:
        nonlocal reads
        reads += 1
        if reads > 3:
            await hang.wait()  # then one that hangs
        raise RuntimeError("database unavailable")

    background = Background()
    hub = ProgressHub(failing, background)
    with hub.watching("j", 0, JobStatus.RUNNING, "") as feed:
        async with asyncio.timeout(10):
            for _ in range(8):
                await woken(feed)
    assert reads >= 4
    hang.set()
    await background.drain(within=5)


def test_the_gateway_process_settles_its_collector() -> None:
    """What starting made is frozen out of the collector's sight and young collections are
    rarer (no full collection pauses a busy fan-out); the process's main does it once."""
    before = gc.get_threshold()
    try:
        settle_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
