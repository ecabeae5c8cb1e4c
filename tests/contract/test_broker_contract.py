"""The broker contract (common/broker/base.py), checked against every implementation.

Outcomes are awaited through asyncio queues/events with timeouts; a short sleep appears only to
show that something does NOT happen (no redelivery, no extra handler).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

import aio_pika
import pytest
from prometheus_client import REGISTRY

from common.broker import (
    AmqpBroker,
    BrokerError,
    Incoming,
    Outgoing,
    ProgressNote,
    Reject,
    Topology,
    delete_topology,
    open_broker,
)

from .conftest import WAIT, Harness

VIDEO = "video.segment"
STORY = "story.set"
QUIET = 0.3  # how long "nothing else arrives" is observed


def collector() -> tuple[asyncio.Queue[Incoming], Callable[[Incoming], Awaitable[None]]]:
    received: asyncio.Queue[Incoming] = asyncio.Queue()

    async def handler(message: Incoming) -> None:
        received.put_nowait(message)

    return received, handler


async def next_of(received: asyncio.Queue[Incoming], timeout: float = WAIT) -> Incoming:
    return await asyncio.wait_for(received.get(), timeout)


async def assert_quiet(received: asyncio.Queue[Incoming]) -> None:
    await asyncio.sleep(QUIET)
    assert received.empty(), f"unexpected delivery: {received.get_nowait()}"


async def test_publish_consume_ack_keeps_body_headers_and_id(harness: Harness) -> None:
    received, handler = collector()
    await harness.broker.publish(
        [Outgoing(VIDEO, b'{"task": 1}', message_id="m-1", headers={"job": "j1", "attempt": 2})]
    )
    consumer = await harness.broker.consume(VIDEO, handler, prefetch=1)
    message = await next_of(received)
    assert message.queue is VIDEO
    assert message.body == b'{"task": 1}'
    assert message.message_id == "m-1"
    assert dict(message.headers) == {"job": "j1", "attempt": 2}
    assert message.priority == 0
    assert not message.redelivered
    await consumer.stop(timeout=WAIT)
    # Acked: a new consumer gets nothing.
    again = await harness.broker.consume(VIDEO, handler, prefetch=1)
    await assert_quiet(received)
    await again.stop(timeout=WAIT)


async def test_batch_of_1000_arrives_exactly_once(harness: Harness) -> None:
    counts: collections.Counter[str | None] = collections.Counter()
    all_in = asyncio.Event()

    async def handler(message: Incoming) -> None:
        counts[message.message_id] += 1
        if len(counts) == 1000:
            all_in.set()

    batch = [Outgoing(VIDEO, b"x", message_id=f"m-{i}") for i in range(1000)]
    await harness.broker.publish(batch)
    consumer = await harness.broker.consume(VIDEO, handler, prefetch=100)
    await asyncio.wait_for(all_in.wait(), WAIT)
    await asyncio.sleep(QUIET)
    await consumer.stop(timeout=WAIT)
    assert set(counts) == {f"m-{i}" for i in range(1000)}
    assert set(counts.values()) == {1}


async def test_higher_priority_is_delivered_first(harness: Harness) -> None:
    received, handler = collector()
    await harness.broker.publish([Outgoing(VIDEO, b"low", priority=1)])
    await harness.broker.publish([Outgoing(VIDEO, b"high", priority=9)])
    consumer = await harness.broker.consume(VIDEO, handler, prefetch=1)
    first, second = await next_of(received), await next_of(received)
    await consumer.stop(timeout=WAIT)
    assert [first.body, second.body] == [b"high", b"low"]
    assert [first.priority, second.priority] == [9, 1]


@pytest.mark.parametrize("delay", [0.3, 1.3], ids=["one-tier", "multi-hop"])
async def test_delay_is_honoured_within_a_bound(harness: Harness, delay: float) -> None:
    received, handler = collector()
    consumer = await harness.broker.consume(VIDEO, handler, prefetch=1)
    started = time.monotonic()
    await harness.broker.publish([Outgoing(VIDEO, b"later", delay=delay, headers={"k": "v"})])
    message = await next_of(received)
    elapsed = time.monotonic() - started
    await consumer.stop(timeout=WAIT)
    # 5 ms of slack: the due time is wall clock, the measurement monotonic.
    assert delay - 0.005 <= elapsed <= delay + 0.7
    assert dict(message.headers) == {"k": "v"}  # delay bookkeeping is not visible


def delay_hops(queue: str) -> float:
    value = REGISTRY.get_sample_value("orchestrator_broker_delay_hops_total", {"queue": queue})
    return value or 0.0


@pytest.mark.parametrize(
    ("prefetch", "messages", "parked"),
    [(4, 1, False), (1, 1, True), (4, 3, True)],
    ids=["room", "no-room", "room-for-two"],
)
async def test_a_consumer_with_room_waits_out_a_short_remainder_itself(
    amqp_harness: Harness, prefetch: int, messages: int, parked: bool
) -> None:
    """0.45 s: published into the 250 ms tier, 0.2 s left on arrival (less if the tier is
    late). A consumer holding less than half its prefetch waits that out itself; past that it
    parks the message in a shorter tier again (unless the tier was over 150 ms late)."""
    received, handler = collector()
    consumer = await amqp_harness.broker.consume(VIDEO, handler, prefetch=prefetch)
    before = delay_hops(VIDEO)
    started = time.monotonic()
    await amqp_harness.broker.publish(
        [Outgoing(VIDEO, b"soon", delay=0.45) for _ in range(messages)]
    )
    for _ in range(messages):
        await next_of(received)
    elapsed = time.monotonic() - started
    await consumer.stop(timeout=WAIT)
    assert 0.45 - 0.005 <= elapsed <= 0.45 + 0.7
    hops = delay_hops(VIDEO) - before
    assert hops >= 1 if parked else hops == 0


@pytest.mark.parametrize(("slack", "hops"), [(0.03, 0), (0.0, 1)], ids=["slack", "exact"])
async def test_a_delay_just_short_of_a_tier_takes_it_within_its_slack(
    amqp_harness: Harness, slack: float, hops: int
) -> None:
    """0.98 s with 30 ms of slack: the 1 s tier, nothing else. Exact: 500 ms, 250 ms, then
    0.23 s early, parked in the 100 ms tier or waited out (a consumer with room: one hop)."""
    received, handler = collector()
    consumer = await amqp_harness.broker.consume(VIDEO, handler, prefetch=4)
    before = delay_hops(VIDEO)
    started = time.monotonic()
    await amqp_harness.broker.publish([Outgoing(VIDEO, b"poll", delay=0.98, slack=slack)])
    await next_of(received)
    elapsed = time.monotonic() - started
    await consumer.stop(timeout=WAIT)
    assert 0.98 - 0.005 <= elapsed <= 0.98 + slack + 0.7
    assert delay_hops(VIDEO) - before == hops


async def test_a_message_held_through_a_connection_drop_is_handled_once(
    amqp_url: str, queue_prefix: str
) -> None:
    """2.9 s: the 2 s tier, then 0.9 s waited out by the consumer (a hold of up to 10 s here).
    The connection drops during that wait: RabbitMQ requeues the message, the restored
    consumer gets it again, and only that delivery is handled."""
    topology = Topology(prefix=queue_prefix, queues=(VIDEO,), delay_hold_ms=10_000)
    received, handler = collector()
    url = f"{amqp_url}?reconnect_interval=0.2"
    try:
        async with open_broker(url, topology) as broker:
            assert isinstance(broker, AmqpBroker)
            consumer = await broker.consume(VIDEO, handler, prefetch=4)
            await broker.publish([Outgoing(VIDEO, b"held", delay=2.9)])
            # Out of its tier, then taken off the work queue: held by the consumer.
            async with await aio_pika.connect(amqp_url) as watcher:
                channel = await watcher.channel()
                await _until_empty(channel, topology.delay_queue(2000))
                await _until_empty(channel, topology.work_queue(VIDEO))
            await broker.connection.reconnect()
            message = await next_of(received)
            assert (message.body, message.redelivered) == (b"held", True)
            await assert_quiet(received)
            await consumer.stop(timeout=WAIT)
    finally:
        await delete_topology(amqp_url, topology)


async def _until_empty(channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
    """Wait until `queue` holds no ready message (checked every 10 ms, for at most WAIT s)."""
    deadline = time.monotonic() + WAIT
    while (await channel.declare_queue(queue, passive=True)).declaration_result.message_count:
        assert time.monotonic() < deadline, f"{queue} still holds a message"
        await asyncio.sleep(0.01)


async def test_short_delay_is_not_blocked_by_a_long_one(harness: Harness) -> None:
    received, handler = collector()
    consumer = await harness.broker.consume(VIDEO, handler, prefetch=1)
    started = time.monotonic()
    await harness.broker.publish([Outgoing(VIDEO, b"long", delay=30.0)])
    await harness.broker.publish([Outgoing(VIDEO, b"short", delay=0.2)])
    message = await next_of(received)
    elapsed = time.monotonic() - started
    assert message.body == b"short"
    assert elapsed < 1.0
    await assert_quiet(received)
    await consumer.stop(timeout=WAIT)


@pytest.mark.parametrize("failure", [Reject("poison"), RuntimeError("bug")], ids=repr)
async def test_failing_handler_dead_letters_without_redelivery(
    harness: Harness, failure: Exception
) -> None:
    calls: asyncio.Queue[Incoming] = asyncio.Queue()

    async def handler(message: Incoming) -> None:
        calls.put_nowait(message)
        raise failure

    await harness.broker.publish([Outgoing(VIDEO, b"bad")])
    consumer = await harness.broker.consume(VIDEO, handler, prefetch=1)
    assert (await next_of(calls)).body == b"bad"
    assert await harness.dead_letters(1) == [b"bad"]
    await assert_quiet(calls)
    await consumer.stop(timeout=WAIT)


async def test_prefetch_bounds_concurrent_handlers(harness: Harness) -> None:
    prefetch, total = 3, 12
    running = 0
    peak = 0
    done = 0
    full = asyncio.Event()
    release = asyncio.Event()
    all_done = asyncio.Event()

    async def handler(message: Incoming) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        if running == prefetch:
            full.set()
        await release.wait()
        running -= 1
        done += 1
        if done == total:
            all_done.set()

    await harness.broker.publish([Outgoing(VIDEO, b"x") for _ in range(total)])
    consumer = await harness.broker.consume(VIDEO, handler, prefetch=prefetch)
    await asyncio.wait_for(full.wait(), WAIT)
    await asyncio.sleep(QUIET)  # a 4th handler would start now if the bound leaked
    assert running == prefetch
    release.set()
    await asyncio.wait_for(all_done.wait(), WAIT)
    await consumer.stop(timeout=WAIT)
    assert peak == prefetch


async def test_stop_drains_then_requeues_what_it_cancelled(harness: Harness) -> None:
    started: asyncio.Queue[Incoming] = asyncio.Queue()
    quick_gate = asyncio.Event()
    finished: list[bytes] = []

    async def handler(message: Incoming) -> None:
        started.put_nowait(message)
        if message.body == b"quick":
            await quick_gate.wait()
        else:
            await asyncio.Event().wait()  # never finishes on its own
        finished.append(message.body)

    await harness.broker.publish([Outgoing(VIDEO, b"quick"), Outgoing(VIDEO, b"stuck")])
    consumer = await harness.broker.consume(VIDEO, handler, prefetch=2)
    assert {(await next_of(started)).body, (await next_of(started)).body} == {b"quick", b"stuck"}

    stopping = asyncio.create_task(consumer.stop(timeout=1.0))
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waiting for the in-flight handlers
    quick_gate.set()
    await asyncio.wait_for(stopping, WAIT)
    assert finished == [b"quick"]
    await consumer.stop(timeout=1.0)  # idempotent

    received, collect = collector()
    successor = await harness.broker.consume(VIDEO, collect, prefetch=2)
    message = await next_of(received)
    assert (message.body, message.redelivered) == (b"stuck", True)
    await assert_quiet(received)  # "quick" was acked
    await successor.stop(timeout=WAIT)


async def test_notifications_reach_every_subscriber(harness: Harness) -> None:
    inboxes: list[asyncio.Queue[ProgressNote]] = [asyncio.Queue(), asyncio.Queue()]
    subscriptions = [await harness.broker.subscribe(inbox.put_nowait) for inbox in inboxes]
    notes = [ProgressNote("job-1", 7), ProgressNote("job-2", 3)]
    await harness.broker.notify(notes)
    for inbox in inboxes:
        got = [await asyncio.wait_for(inbox.get(), WAIT) for _ in notes]
        assert sorted(got, key=lambda n: n.job_id) == notes
    for subscription in subscriptions:
        await subscription.close()
    await harness.broker.notify([ProgressNote("job-3", 1)])
    await asyncio.sleep(QUIET)
    assert all(inbox.empty() for inbox in inboxes)


async def test_invalid_batches_and_closed_brokers_are_refused(harness: Harness) -> None:
    with pytest.raises(ValueError, match="max_priority"):
        await harness.broker.publish([Outgoing(VIDEO, b"x", priority=11)])
    with pytest.raises(ValueError):
        Outgoing(VIDEO, b"x", delay=-1.0)
    async with harness.open_another() as other:
        pass
    with pytest.raises(BrokerError):
        await other.publish([Outgoing(VIDEO, b"x")])


# ---- RabbitMQ only: what durability and connection loss mean ----


async def test_unroutable_publish_is_an_error_not_a_silent_drop(amqp_harness: Harness) -> None:
    connection = await aio_pika.connect(amqp_harness.url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(amqp_harness.topology.work_queue(STORY))
    with pytest.raises(BrokerError, match="not confirmed"):
        await amqp_harness.broker.publish([Outgoing(STORY, b"nowhere")])
    await amqp_harness.broker.publish([Outgoing(VIDEO, b"still fine")])  # the channel survived


async def test_message_outlives_its_publisher(amqp_harness: Harness) -> None:
    async with amqp_harness.open_another() as publisher:
        await publisher.publish([Outgoing(VIDEO, b"kept", priority=2)])
    received, handler = collector()
    consumer = await amqp_harness.broker.consume(VIDEO, handler, prefetch=1)
    message = await next_of(received)
    await consumer.stop(timeout=WAIT)
    assert (message.body, message.priority) == (b"kept", 2)


async def test_unacked_message_is_redelivered_when_its_consumer_dies(amqp_harness: Harness) -> None:
    taken = asyncio.Event()

    async def hold(message: Incoming) -> None:
        taken.set()
        await asyncio.Event().wait()

    async with amqp_harness.open_another() as doomed:
        assert isinstance(doomed, AmqpBroker)
        await doomed.consume(VIDEO, hold, prefetch=1)
        await amqp_harness.broker.publish([Outgoing(VIDEO, b"orphan", message_id="o-1")])
        await asyncio.wait_for(taken.wait(), WAIT)
        received, handler = collector()
        survivor = await amqp_harness.broker.consume(VIDEO, handler, prefetch=1)
        await assert_quiet(received)  # still held by the doomed consumer
        await doomed.connection.close()  # the process "dies" without acking
        message = await next_of(received)
        assert (message.body, message.message_id, message.redelivered) == (b"orphan", "o-1", True)
        await survivor.stop(timeout=WAIT)


async def test_consumer_and_subscription_come_back_after_a_connection_drop(
    amqp_harness: Harness,
) -> None:
    received, handler = collector()
    notes: asyncio.Queue[ProgressNote] = asyncio.Queue()
    url = f"{amqp_harness.url}?reconnect_interval=0.2"
    async with open_broker(url, amqp_harness.topology) as broker:
        assert isinstance(broker, AmqpBroker)
        consumer = await broker.consume(VIDEO, handler, prefetch=1)
        await broker.subscribe(notes.put_nowait)
        await broker.connection.reconnect()
        await broker.publish([Outgoing(VIDEO, b"after-drop")])
        assert (await next_of(received)).body == b"after-drop"
        # The subscription's exclusive queue died with the old connection; wait for its return.
        for attempt in range(50):
            await broker.notify([ProgressNote("job-r", attempt)])
            try:
                note = await asyncio.wait_for(notes.get(), 0.1)
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("subscription did not come back")
        assert note.job_id == "job-r"
        await consumer.stop(timeout=WAIT)
