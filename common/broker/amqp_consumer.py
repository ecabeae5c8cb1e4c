"""One RabbitMQ consumer: its own robust channel, the delay hop, and the ack policy.

Each delivery is handed to a task this consumer owns instead of running inside aio-pika's
per-delivery task, because aio-pika cancels those when the channel drops: a handler cut between
"provider accepted the submit" and "request id committed" would pay for the work twice. After a
drop the handler finishes, its ack fails (logged), and RabbitMQ redelivers the message, which
idempotent handlers absorb. The semaphore keeps "at most `prefetch` handlers" true even then,
when the restored channel receives a fresh prefetch window while old handlers still run.

A delayed message that arrives early is parked in the next delay tier, or, when what is left
is within the topology's hold and fewer than half the prefetch window is already held so,
waited out here (unacked: a crash still redelivers it). The cap keeps held messages from
taking the window from work that is due. A held message whose channel dropped meanwhile is
not handled: RabbitMQ requeued it with the channel, and its redelivery is handled instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from common import metrics
from common.broker.amqp_common import BROKER_FAILURES, RPC_TIMEOUT, quietly
from common.broker.base import BrokerError, Handler, Incoming
from common.broker.delays import public_headers, remaining_seconds
from common.broker.handling import Outcome, run_handler
from common.broker.topology import Topology

log = logging.getLogger(__name__)

# Parks an early message in the given delay tier (ms); raises BrokerError when not confirmed.
Parker = Callable[[AbstractIncomingMessage, str, int], Awaitable[None]]

# After a failed re-park the message is requeued; this pause keeps a broken publish path from
# turning that into a hot loop.
PARK_RETRY_PAUSE = 1.0


class AmqpConsumer:
    """A `Consumer` of one work queue. Built and started by `AmqpBroker.consume`."""

    def __init__(
        self,
        *,
        queue: str,
        handler: Handler,
        channel: AbstractRobustChannel,
        amqp_queue: AbstractQueue,
        prefetch: int,
        topology: Topology,
        park: Parker,
        on_stopped: Callable[[AmqpConsumer], None],
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._channel = channel
        self._amqp_queue = amqp_queue
        self._topology = topology
        self._park = park
        self._on_stopped = on_stopped
        self._slots = asyncio.Semaphore(prefetch)
        # Early messages waited out here rather than parked again (see the module doc).
        self._holding = 0
        self._max_holding = prefetch // 2
        self._hops = metrics.delay_hops.labels(queue)
        self._tasks: set[asyncio.Task[None]] = set()
        self._tag: str | None = None
        self._stopping = False
        self._stopped = False
        self._stop_lock = asyncio.Lock()

    async def start(self) -> None:
        self._tag = await self._amqp_queue.consume(self._on_delivery, timeout=RPC_TIMEOUT)
        log.info("consuming %s", self._amqp_queue.name)

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109  (grace period)
        """Cancel the consumer, drain handlers for up to `timeout` s, requeue the rest."""
        async with self._stop_lock:
            if self._stopped:
                return
            self._stopping = True
            # With the channel down there is nothing to cancel on the broker, and closing the
            # robust channel below keeps it (and this consumer) from being restored.
            if self._tag is not None and not self._channel.is_closed:
                await quietly(
                    f"cancelling consumer of {self._queue}",
                    self._amqp_queue.cancel(self._tag, timeout=RPC_TIMEOUT),
                )
            pending = set(self._tasks)
            if pending:
                _, pending = await asyncio.wait(pending, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%d handler(s) on %s still running after %.1f s: cancelled and requeued",
                    len(pending),
                    self._queue,
                    timeout,
                )
                await asyncio.gather(*pending, return_exceptions=True)
            await quietly(f"closing consumer channel of {self._queue}", self._channel.close())
            self._stopped = True
            self._on_stopped(self)
            log.info("stopped consuming %s", self._amqp_queue.name)

    async def _on_delivery(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            # Delivered between basic.cancel and its ok: hand it straight back.
            await self._settle(message, Outcome.REQUEUE)
            return
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery task on %s failed", self._queue, exc_info=exc)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            async with self._slots:
                outcome = await self._handle(message)
        except asyncio.CancelledError:
            await self._settle(message, Outcome.REQUEUE)
            raise
        await self._settle(message, outcome)

    async def _handle(self, message: AbstractIncomingMessage) -> Outcome:
        remaining = remaining_seconds(message.headers)
        room = self._holding < self._max_holding
        tier = self._topology.next_tier(remaining, hold=room)
        if tier is not None:
            return await self._repark(message, tier)
        if remaining > 0:
            # Within the tolerance or the hold: waiting here beats more hops, and keeps
            # "delivered no earlier than the delay" exact.
            self._holding += 1
            try:
                await asyncio.sleep(remaining)
            finally:
                self._holding -= 1
            if _channel_gone(message):
                return Outcome.REQUEUE
        incoming = Incoming(
            queue=self._queue,
            body=message.body,
            redelivered=bool(message.redelivered),
            priority=message.priority or 0,
            message_id=message.message_id,
            headers=public_headers(message.headers),
        )
        return await run_handler(self._handler, incoming)

    async def _repark(self, message: AbstractIncomingMessage, tier: int) -> Outcome:
        try:
            await self._park(message, self._queue, tier)
        except BrokerError as exc:
            log.warning(
                "re-parking delayed message %s on %s failed (%s); requeued",
                message.message_id,
                self._queue,
                exc,
            )
            await asyncio.sleep(PARK_RETRY_PAUSE)
            return Outcome.REQUEUE
        # Confirmed in the delay tier: acking now cannot lose it.
        self._hops.inc()
        return Outcome.ACK

    async def _settle(self, message: AbstractIncomingMessage, outcome: Outcome) -> None:
        try:
            if outcome is Outcome.ACK:
                await message.ack()
            elif outcome is Outcome.DEAD_LETTER:
                await message.reject(requeue=False)
            else:
                await message.nack(requeue=True)
        except BROKER_FAILURES as exc:
            # The channel is gone: RabbitMQ already requeued the message and will redeliver it
            # (with redelivered=True), which idempotent handlers absorb.
            log.warning(
                "could not %s message %s on %s (%r); the broker will redeliver it",
                outcome.value,
                message.message_id,
                self._queue,
                exc,
            )


def _channel_gone(message: AbstractIncomingMessage) -> bool:
    """The channel that delivered `message` is closed (RabbitMQ requeued the message)."""
    try:
        return message.channel.is_closed
    except BROKER_FAILURES:  # aio-pika raises rather than hand out a closed channel
        return True
