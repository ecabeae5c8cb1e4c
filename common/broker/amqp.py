"""The RabbitMQ `Broker`, on aio-pika's robust connection.

Channels (one connection per broker):
- one publish channel with publisher confirms and `on_return_raises`: every task message and
  every delay hop goes through it; the topology is declared on it, so it is declared again after
  each reconnection;
- one channel without confirms for progress notes, so a notification never queues behind task
  confirms;
- one channel per consumer (its prefetch is the channel's QoS) and per subscription.

A batch is pipelined: all messages of a window are written before any confirm is awaited, and
aiormq settles each one's future as (usually multiple-)acks arrive, so 10 000 messages cost a few
round trips, not 10 000. The window bounds memory and aiormq's per-ack bookkeeping.

Reconnection: `connect_robust` restores channels, QoS, declarations, bindings and consumers after
a drop (tune with URL query `reconnect_interval`, in seconds). A publish waits for the publish
channel to be ready (up to `publish_timeout`); a drop while a batch is in flight raises
`BrokerError` with no replay, because a lost confirm does not mean a lost message, and callers
rely on the application's sweeper (duplicates are absorbed by idempotent handlers).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
    HeadersType,
)

from common.broker.amqp_common import BROKER_FAILURES, RPC_TIMEOUT, quietly, redact
from common.broker.amqp_consumer import AmqpConsumer
from common.broker.amqp_progress import AmqpSubscription, encode_note, routing_key
from common.broker.amqp_topology import declare_topology, work_queue_arguments
from common.broker.base import (
    BrokerError,
    Consumer,
    Handler,
    Outgoing,
    ProgressNote,
    Subscription,
    check_batch,
)
from common.broker.delays import DELIVER_AT_HEADER, deliver_at_ms, public_headers
from common.broker.topology import Topology, WorkQueue

log = logging.getLogger(__name__)

# Messages whose confirms are awaited together; see the module docstring.
PUBLISH_WINDOW = 2_000


class AmqpBroker:
    """A `Broker` on RabbitMQ. Create with `await AmqpBroker.connect(url, topology)`."""

    durable: bool = True

    def __init__(
        self,
        *,
        connection: AbstractRobustConnection,
        topology: Topology,
        publish_channel: AbstractRobustChannel,
        delay_exchanges: dict[int, AbstractExchange],
        notify_channel: AbstractRobustChannel,
        progress_exchange: AbstractExchange,
        publish_timeout: float,
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._publish_channel = publish_channel
        self._delay_exchanges = delay_exchanges
        self._notify_channel = notify_channel
        self._progress_exchange = progress_exchange
        self._publish_timeout = publish_timeout
        self._consumers: set[AmqpConsumer] = set()
        self._subscriptions: set[AmqpSubscription] = set()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        topology: Topology,
        *,
        connect_timeout: float = 15.0,
        publish_timeout: float = 30.0,
    ) -> AmqpBroker:
        """Connect, open the shared channels and declare the topology (idempotent)."""
        try:
            # aio-pika's own timeout, not asyncio.timeout: cancelling connect_robust from outside
            # would leave its reconnection task running.
            connection = await aio_pika.connect_robust(url, timeout=connect_timeout)
        except BROKER_FAILURES as exc:
            raise BrokerError(f"cannot connect to RabbitMQ at {redact(url)}: {exc!r}") from exc
        try:
            async with asyncio.timeout(connect_timeout):
                publish_channel = await _open_channel(connection, confirms=True)
                delay_exchanges = await declare_topology(publish_channel, topology)
                notify_channel = await _open_channel(connection, confirms=False)
                progress_exchange = await notify_channel.declare_exchange(
                    topology.progress_exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
        except BaseException as exc:
            await connection.close()
            if isinstance(exc, BROKER_FAILURES):
                raise BrokerError(f"cannot set up RabbitMQ at {redact(url)}: {exc!r}") from exc
            raise
        log.info("connected to RabbitMQ at %s (prefix %r)", redact(url), topology.prefix)
        return cls(
            connection=connection,
            topology=topology,
            publish_channel=publish_channel,
            delay_exchanges=delay_exchanges,
            notify_channel=notify_channel,
            progress_exchange=progress_exchange,
            publish_timeout=publish_timeout,
        )

    @property
    def connection(self) -> AbstractRobustConnection:
        """The underlying connection, for health checks and failure-injection tests."""
        return self._connection

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
        self._check_open()
        check_batch(messages, self._topology)
        if not messages:
            return
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._publish_channel.ready()
        except TimeoutError as exc:
            raise BrokerError("RabbitMQ publish channel not ready (reconnecting?)") from exc
        for start in range(0, len(messages), PUBLISH_WINDOW):
            window = messages[start : start + PUBLISH_WINDOW]
            results = await asyncio.gather(
                *(self._publish_one(m) for m in window), return_exceptions=True
            )
            _raise_first_failure(results, len(messages))

    async def consume(self, queue: WorkQueue, handler: Handler, *, prefetch: int) -> Consumer:
        self._check_open()
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        channel: AbstractRobustChannel | None = None
        try:
            async with asyncio.timeout(RPC_TIMEOUT):
                channel = await _open_channel(self._connection, confirms=False)
                await channel.set_qos(prefetch_count=prefetch)
                # Declared, not looked up: the robust channel then re-declares it on restore.
                amqp_queue = await channel.declare_queue(
                    self._topology.work_queue(queue),
                    durable=True,
                    arguments=work_queue_arguments(self._topology),
                )
                consumer = AmqpConsumer(
                    queue=queue,
                    handler=handler,
                    channel=channel,
                    amqp_queue=amqp_queue,
                    prefetch=prefetch,
                    topology=self._topology,
                    park=self._park,
                    on_stopped=self._consumers.discard,
                )
                await consumer.start()
        except BaseException as exc:
            if channel is not None:
                await quietly("closing consumer channel", channel.close())
            if isinstance(exc, BROKER_FAILURES):
                raise BrokerError(f"cannot consume {queue}: {exc!r}") from exc
            raise
        self._consumers.add(consumer)
        return consumer

    async def notify(self, notes: Sequence[ProgressNote]) -> None:
        if self._closed or not notes:
            return
        try:
            for note in notes:
                await self._progress_exchange.publish(
                    aio_pika.Message(
                        encode_note(note),
                        content_type="application/json",
                        delivery_mode=DeliveryMode.NOT_PERSISTENT,
                    ),
                    routing_key=routing_key(note),
                    mandatory=False,  # no subscriber is not an error
                    timeout=RPC_TIMEOUT,
                )
        except BROKER_FAILURES as exc:
            log.warning("progress notes not sent (%r); watchers catch up on their next read", exc)

    async def subscribe(self, callback: Callable[[ProgressNote], None]) -> Subscription:
        self._check_open()
        channel: AbstractRobustChannel | None = None
        try:
            async with asyncio.timeout(RPC_TIMEOUT):
                channel = await _open_channel(self._connection, confirms=False)
                subscription = AmqpSubscription(channel, callback, self._subscriptions.discard)
                await subscription.start(self._topology)
        except BaseException as exc:
            if channel is not None:
                await quietly("closing subscription channel", channel.close())
            if isinstance(exc, BROKER_FAILURES):
                raise BrokerError(f"cannot subscribe to progress: {exc!r}") from exc
            raise
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        """Close subscriptions, stop consumers (no grace: call `Consumer.stop` first for one),
        then the channels and the connection, in reverse order of opening. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.close()
        for consumer in list(self._consumers):
            await consumer.stop(timeout=0)
        await quietly("closing progress channel", self._notify_channel.close())
        await quietly("closing publish channel", self._publish_channel.close())
        await quietly("closing connection", self._connection.close())
        log.info("RabbitMQ connection closed (prefix %r)", self._topology.prefix)

    async def _publish_one(self, outgoing: Outgoing) -> None:
        headers: HeadersType = dict(outgoing.headers)
        exchange = self._publish_channel.default_exchange
        if outgoing.delay > 0:
            # Always stamped, even below the smallest tier: the consumer then waits out the
            # few remaining ms, so "no earlier than the delay" holds.
            headers[DELIVER_AT_HEADER] = deliver_at_ms(outgoing.delay)
            tier = self._topology.next_tier(outgoing.delay)
            if tier is not None:
                exchange = self._delay_exchanges[tier]
        message = _persistent(
            outgoing.body, headers, outgoing.priority, outgoing.message_id or uuid.uuid4().hex
        )
        await exchange.publish(
            message,
            routing_key=self._topology.work_queue(outgoing.queue),
            mandatory=True,
            timeout=self._publish_timeout,
        )

    async def _park(self, message: AbstractIncomingMessage, queue: WorkQueue, tier: int) -> None:
        """Move a delayed message that arrived early on to delay `tier` (confirmed)."""
        headers = public_headers(message.headers)
        headers[DELIVER_AT_HEADER] = message.headers[DELIVER_AT_HEADER]
        republished = _persistent(message.body, headers, message.priority or 0, message.message_id)
        try:
            await self._delay_exchanges[tier].publish(
                republished,
                routing_key=self._topology.work_queue(queue),
                mandatory=True,
                timeout=self._publish_timeout,
            )
        except BROKER_FAILURES as exc:
            raise BrokerError(f"delay hop not confirmed: {exc!r}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("broker is closed")


async def _open_channel(
    connection: AbstractRobustConnection, *, confirms: bool
) -> AbstractRobustChannel:
    # on_return_raises turns an unroutable mandatory publish into PublishError instead of a
    # silently "successful" returned message.
    channel = connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    await channel.initialize(timeout=RPC_TIMEOUT)
    return channel


def _persistent(
    body: bytes, headers: HeadersType, priority: int, message_id: str | None
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        headers=headers,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=priority,
        message_id=message_id,
    )


def _raise_first_failure(results: Sequence[object], batch_size: int) -> None:
    """Turn the first failed publish of a window into BrokerError (programming errors pass)."""
    failures = [r for r in results if isinstance(r, BaseException)]
    if not failures:
        return
    first = failures[0]
    if isinstance(first, (*BROKER_FAILURES, asyncio.CancelledError)):
        raise BrokerError(
            f"{len(failures)} message(s) of a batch of {batch_size} not confirmed: {first!r}"
        ) from first
    raise first
