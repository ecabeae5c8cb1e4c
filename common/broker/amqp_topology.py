"""Declaring (idempotently) and deleting the RabbitMQ side of a `Topology`.

- work queues: durable classic queues with `x-max-priority`, dead-lettering to a fanout DLX;
- the DLX feeds one durable dead-letter queue, kept for inspection and manual replay;
- per delay tier: a durable fanout exchange feeding a durable queue whose `x-message-ttl` is the
  tier and whose `x-dead-letter-exchange` is the default exchange with no dead-letter routing
  key, so an expired message keeps its routing key (its work queue's name) and lands back there;
- a durable topic exchange for progress notes (each subscriber binds its own exclusive queue).

No broker plugin is needed.
"""

from __future__ import annotations

import logging

import aio_pika
from aio_pika.abc import AbstractChannel, ExchangeType
from pamqp.common import FieldTable

from common.broker.amqp_common import RPC_TIMEOUT
from common.broker.topology import Topology

log = logging.getLogger(__name__)


def work_queue_arguments(topology: Topology) -> FieldTable:
    """Arguments of every work queue; consumers re-declare with exactly these."""
    return {
        "x-max-priority": topology.max_priority,
        "x-dead-letter-exchange": topology.dead_letter_exchange,
    }


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare everything (idempotent: same names and arguments every time).

    Declared on a robust channel, these are declared again after every reconnection, so a
    broker that lost its definitions gets them back before anything is published.
    """
    t = RPC_TIMEOUT
    dlx = await channel.declare_exchange(
        topology.dead_letter_exchange, ExchangeType.FANOUT, durable=True, timeout=t
    )
    dlq = await channel.declare_queue(topology.dead_letter_queue, durable=True, timeout=t)
    await dlq.bind(dlx, routing_key="", timeout=t)

    for q in topology.queues:
        await channel.declare_queue(
            topology.work_queue(q),
            durable=True,
            arguments=work_queue_arguments(topology),
            timeout=t,
        )

    for tier in topology.delay_tiers_ms:
        exchange = await channel.declare_exchange(
            topology.delay_exchange(tier), ExchangeType.FANOUT, durable=True, timeout=t
        )
        queue = await channel.declare_queue(
            topology.delay_queue(tier),
            durable=True,
            # No x-dead-letter-routing-key on purpose: the original routing key is kept.
            arguments={"x-message-ttl": tier, "x-dead-letter-exchange": ""},
            timeout=t,
        )
        await queue.bind(exchange, routing_key="", timeout=t)

    await channel.declare_exchange(
        topology.progress_exchange, ExchangeType.TOPIC, durable=True, timeout=t
    )
    log.info("declared broker topology %r", topology.prefix)


async def delete_topology(url: str, topology: Topology) -> None:
    """Delete every queue and exchange of `topology` (missing ones are fine). For tests/bench."""
    connection = await aio_pika.connect(url, timeout=RPC_TIMEOUT)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        # RabbitMQ answers delete-ok for a missing queue or exchange, so no error handling.
        for name in topology.queue_names():
            await channel.queue_delete(name, timeout=RPC_TIMEOUT)
        for name in topology.exchange_names():
            await channel.exchange_delete(name, timeout=RPC_TIMEOUT)
