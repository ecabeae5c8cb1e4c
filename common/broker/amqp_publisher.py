"""Confirmed, pipelined publishing of task messages and delay hops on one robust channel.

A batch is sent a window at a time: every message of the window is written before any confirm
is awaited, and aiormq settles each one's future as (usually multiple-)acks arrive, so 10 000
messages cost a few round trips, not 10 000. The window bounds buffered frames and aiormq's
per-ack bookkeeping (it scans outstanding confirms on every multiple-ack).

Messages go through aiormq's `basic_publish(wait=False)` rather than aio-pika's
`Exchange.publish`: the latter also waits, under the channel lock, for each frame to be flushed
to the socket, which serializes the batch through the writer task (~1.4x slower measured). The
confirm is still awaited, so nothing is reported published before RabbitMQ has it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import cast

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, HeadersType
from pamqp.commands import Basic

from common.broker.amqp_common import BROKER_FAILURES
from common.broker.base import BrokerError, Outgoing
from common.broker.delays import DELIVER_AT_HEADER, deliver_at_ms, public_headers
from common.broker.topology import Topology

# Messages whose confirms are awaited together; see the module docstring.
PUBLISH_WINDOW = 1_000
_PERSISTENT = 2


class ConfirmedPublisher:
    """Publishes on a robust channel opened with publisher confirms and `on_return_raises`."""

    def __init__(self, channel: AbstractRobustChannel, topology: Topology, timeout: float) -> None:
        self._channel = channel
        self._topology = topology
        self._timeout = timeout

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish all of `messages`; return when all are confirmed, else raise BrokerError.

        On failure no further window is sent; earlier windows are in RabbitMQ, and messages of
        the failed window may or may not be.
        """
        if not messages:
            return
        channel = await self._ready_channel()
        for start in range(0, len(messages), PUBLISH_WINDOW):
            window = messages[start : start + PUBLISH_WINDOW]
            results = await asyncio.gather(
                *(self._publish_one(channel, m) for m in window), return_exceptions=True
            )
            _raise_first_failure(results, len(messages))

    async def park(self, message: AbstractIncomingMessage, queue: str, tier: int) -> None:
        """Move a delayed message that arrived early on to delay `tier` (confirmed)."""
        headers = public_headers(message.headers)
        headers[DELIVER_AT_HEADER] = message.headers[DELIVER_AT_HEADER]
        channel = await self._ready_channel()
        try:
            await self._send(
                channel,
                self._topology.delay_exchange(tier),
                self._topology.work_queue(queue),
                message.body,
                _properties(headers, message.priority or 0, message.message_id),
            )
        except BROKER_FAILURES as exc:
            raise BrokerError(f"delay hop not confirmed: {exc!r}") from exc

    async def _ready_channel(self) -> aiormq.Channel:
        """The live aiormq channel, waiting (bounded) while the connection is being restored."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._channel.ready()
                underlay = await self._channel.get_underlay_channel()
        except BROKER_FAILURES as exc:
            raise BrokerError(f"RabbitMQ publish channel not ready: {exc!r}") from exc
        # aio-pika annotates the abstract channel; `wait` exists on aiormq's concrete class.
        return cast(aiormq.Channel, underlay)

    async def _publish_one(self, channel: aiormq.Channel, outgoing: Outgoing) -> None:
        headers: HeadersType = dict(outgoing.headers)
        exchange = ""  # the default exchange routes by queue name
        if outgoing.delay > 0:
            tier, delay = self._topology.first_tier(outgoing.delay, outgoing.slack)
            # Stamped even below the smallest tier: the consumer then waits out the few
            # remaining ms itself, so "no earlier than the delay" holds.
            headers[DELIVER_AT_HEADER] = deliver_at_ms(delay)
            if tier is not None:
                exchange = self._topology.delay_exchange(tier)
        await self._send(
            channel,
            exchange,
            self._topology.work_queue(outgoing.queue),
            outgoing.body,
            _properties(headers, outgoing.priority, outgoing.message_id or uuid.uuid4().hex),
        )

    async def _send(
        self,
        channel: aiormq.Channel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
    ) -> None:
        # mandatory + on_return_raises: an unroutable message raises PublishError instead of
        # being dropped; a broker nack raises DeliveryError.
        await channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            timeout=self._timeout,
            wait=False,
        )


def _properties(headers: HeadersType, priority: int, message_id: str | None) -> Basic.Properties:
    return Basic.Properties(
        delivery_mode=_PERSISTENT,
        priority=priority,
        message_id=message_id,
        headers=headers,
    )


def _raise_first_failure(results: Sequence[object], batch_size: int) -> None:
    """Turn the first failed publish of a window into BrokerError; programming errors pass."""
    failures = [r for r in results if isinstance(r, BaseException)]
    if not failures:
        return
    first = failures[0]
    # CancelledError here means aiormq cancelled the confirm because the channel closed.
    if isinstance(first, (*BROKER_FAILURES, asyncio.CancelledError)):
        raise BrokerError(
            f"{len(failures)} message(s) of a batch of {batch_size} not confirmed: {first!r}"
        ) from first
    raise first
