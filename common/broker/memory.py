"""The in-process `Broker`: the same contract in memory, for the one-process dev stack and tests.

Nothing survives the process (`durable = False`). One priority queue per work queue; delays are
loop timers; dead letters are kept in `dead_letters` for inspection. A consumer takes a message
only when it has a free slot, which is what RabbitMQ's prefetch amounts to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from common.broker.base import (
    BrokerError,
    Consumer,
    Handler,
    Incoming,
    Outgoing,
    ProgressNote,
    Subscription,
    check_batch,
)
from common.broker.handling import Outcome, run_handler
from common.broker.topology import Topology

log = logging.getLogger(__name__)

# Ordered by (-priority, sequence): highest priority first, then publish order. A requeued
# message keeps its sequence number, so it goes back near the head as on RabbitMQ.
_Entry = tuple[int, int, Incoming]


class MemoryConsumer:
    """A `Consumer` of one in-memory queue."""

    def __init__(
        self,
        queue: asyncio.PriorityQueue[_Entry],
        handler: Handler,
        prefetch: int,
        dead_letters: list[Incoming],
        on_stopped: Callable[[MemoryConsumer], None],
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(prefetch)
        self._dead_letters = dead_letters
        self._on_stopped = on_stopped
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump = asyncio.create_task(self._take())
        self._stopped = False
        self._stop_lock = asyncio.Lock()

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109  (grace period)
        async with self._stop_lock:
            if self._stopped:
                return
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            pending = set(self._tasks)
            if pending:
                _, pending = await asyncio.wait(pending, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._stopped = True
            self._on_stopped(self)

    async def _take(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                entry = await self._queue.get()
            except BaseException:
                self._slots.release()
                raise
            # No await between taking the entry and owning it in a task: a cancellation of the
            # pump can never drop a message.
            task = asyncio.create_task(self._process(entry))
            self._tasks.add(task)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("in-memory delivery task failed", exc_info=exc)

    async def _process(self, entry: _Entry) -> None:
        _, sequence, incoming = entry
        try:
            outcome = await run_handler(self._handler, incoming)
        except asyncio.CancelledError:
            requeued = dataclasses.replace(incoming, redelivered=True)
            self._queue.put_nowait((-incoming.priority, sequence, requeued))
            raise
        finally:
            self._slots.release()
        if outcome is Outcome.DEAD_LETTER:
            self._dead_letters.append(incoming)


class MemorySubscription:
    """A `Subscription` to the in-memory progress fan-out."""

    def __init__(
        self,
        callback: Callable[[ProgressNote], None],
        on_closed: Callable[[MemorySubscription], None],
    ) -> None:
        self._callback = callback
        self._on_closed = on_closed
        self._closed = False

    def deliver(self, note: ProgressNote) -> None:
        if self._closed:
            return
        try:
            self._callback(note)
        except Exception:
            log.exception("progress callback failed for job %s", note.job_id)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_closed(self)


class MemoryBroker:
    """A `Broker` in this process's memory. Must be created inside a running event loop."""

    durable: bool = False

    def __init__(self, topology: Topology) -> None:
        self._topology = topology
        self._loop = asyncio.get_running_loop()
        self._queues: dict[str, asyncio.PriorityQueue[_Entry]] = {
            q: asyncio.PriorityQueue() for q in topology.queues
        }
        self._sequence = itertools.count()
        self._timers: set[asyncio.TimerHandle] = set()
        self._consumers: set[MemoryConsumer] = set()
        self._subscriptions: set[MemorySubscription] = set()
        self._closed = False
        self.dead_letters: list[Incoming] = []
        """Messages dead-lettered by a handler (Reject or crash), oldest first."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if self._closed:
            raise BrokerError("broker is closed")
        check_batch(messages, self._topology)
        unknown = {m.queue for m in messages} - set(self._queues)
        if unknown:  # RabbitMQ returns unroutable messages (and the publisher raises)
            raise BrokerError(f"no such queue: {', '.join(sorted(unknown))}")
        for outgoing in messages:
            incoming = Incoming(
                queue=outgoing.queue,
                body=outgoing.body,
                redelivered=False,
                priority=outgoing.priority,
                # Same as RabbitMQ: a message always carries an id (generated when not given).
                message_id=outgoing.message_id or uuid.uuid4().hex,
                headers=dict(outgoing.headers),
            )
            entry = (-outgoing.priority, next(self._sequence), incoming)
            if outgoing.delay > 0:
                self._schedule(outgoing.delay, entry)
            else:
                self._queues[outgoing.queue].put_nowait(entry)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Consumer:
        if self._closed:
            raise BrokerError("broker is closed")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if queue not in self._queues:
            raise BrokerError(f"cannot consume {queue}: not in the topology")
        consumer = MemoryConsumer(
            self._queues[queue], handler, prefetch, self.dead_letters, self._consumers.discard
        )
        self._consumers.add(consumer)
        return consumer

    async def notify(self, notes: Sequence[ProgressNote]) -> None:
        if self._closed:
            return
        # Delivered from the loop, not inline: like RabbitMQ, a subscriber's callback never runs
        # inside the notifier's call (which may hold a lock or a transaction).
        for note in notes:
            for subscription in self._subscriptions:
                self._loop.call_soon(subscription.deliver, note)

    async def subscribe(self, callback: Callable[[ProgressNote], None]) -> Subscription:
        if self._closed:
            raise BrokerError("broker is closed")
        subscription = MemorySubscription(callback, self._subscriptions.discard)
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        """Close subscriptions, stop consumers (no grace), cancel pending delays. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.close()
        for consumer in list(self._consumers):
            await consumer.stop(timeout=0)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _schedule(self, delay: float, entry: _Entry) -> None:
        queue = self._queues[entry[2].queue]

        def due() -> None:
            self._timers.discard(handle)
            queue.put_nowait(entry)

        handle = self._loop.call_later(delay, due)
        self._timers.add(handle)
