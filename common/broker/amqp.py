"""The RabbitMQ `Broker`, on aio-pika's robust connection.

Channels (one connection per broker):
- one publish channel with publisher confirms and `on_return_raises` (see `amqp_publisher`):
  every task message and every delay hop goes through it; the topology is declared on it, so it
  is declared again after each reconnection;
- one channel without confirms for progress notes, so a notification never queues behind task
  confirms;
- one channel per consumer (its prefetch is the channel's QoS) and per subscription.

Reconnection: `connect_robust` restores channels, QoS, declarations, bindings and consumers after
a drop (tune with URL query `reconnect_interval`, in seconds). A publish waits for the publish
channel to be ready (up to `publish_timeout`); a drop while a batch is in flight raises
`BrokerError` with no replay, because a lost confirm does not mean a lost message, and callers
rely on the application's sweeper (duplicates are absorbed by idempotent handlers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

from common.broker.amqp_common import BROKER_FAILURES, RPC_TIMEOUT, quietly, redact
from common.broker.amqp_consumer import AmqpConsumer
from common.broker.amqp_progress import AmqpSubscription, encode_note, routing_key
from common.broker.amqp_publisher import ConfirmedPublisher
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
from common.broker.topology import Topology

log = logging.getLogger(__name__)


class AmqpBroker:
    """A `Broker` on RabbitMQ. Create with `await AmqpBroker.connect(url, topology)`."""

    durable: bool = True

    def __init__(
        self,
        *,
        connection: AbstractRobustConnection,
        topology: Topology,
        publish_channel: AbstractRobustChannel,
        notify_channel: AbstractRobustChannel,
        progress_exchange: AbstractExchange,
        publish_timeout: float,
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._publish_channel = publish_channel
        self._publisher = ConfirmedPublisher(publish_channel, topology, publish_timeout)
        self._notify_channel = notify_channel
        self._progress_exchange = progress_exchange
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
                await declare_topology(publish_channel, topology)
                notify_channel = await _open_channel(connection, confirms=False)
                progress_exchange = await notify_channel.declare_exchange(
                    topology.progress_exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
        except BaseException as exc:
            await quietly("closing connection", connection.close())
            if isinstance(exc, BROKER_FAILURES):
                raise BrokerError(f"cannot set up RabbitMQ at {redact(url)}: {exc!r}") from exc
            raise
        log.info("connected to RabbitMQ at %s (prefix %r)", redact(url), topology.prefix)
        return cls(
            connection=connection,
            topology=topology,
            publish_channel=publish_channel,
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
        await self._publisher.publish(messages)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Consumer:
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
                    park=self._publisher.park,
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
            # Bounded as a whole: while reconnecting, the robust channel waits for the connection.
            async with asyncio.timeout(RPC_TIMEOUT):
                for note in notes:
                    await self._progress_exchange.publish(
                        aio_pika.Message(
                            encode_note(note),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                        ),
                        routing_key=routing_key(note),
                        mandatory=False,  # no subscriber is not an error
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
