"""`open_broker`: pick the implementation from the URL and own its lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from common.broker.amqp import AmqpBroker
from common.broker.base import Broker
from common.broker.memory import MemoryBroker
from common.broker.topology import Topology


@asynccontextmanager
async def open_broker(url: str, topology: Topology) -> AsyncIterator[Broker]:
    """Open a broker for `url` and close it on exit.

    "memory://" is the in-process broker; "amqp://" / "amqps://" is RabbitMQ (aio-pika URL query
    options such as `heartbeat` or `reconnect_interval` pass through).
    """
    scheme = urlsplit(url).scheme
    broker: MemoryBroker | AmqpBroker
    if scheme == "memory":
        broker = MemoryBroker(topology)
    elif scheme in {"amqp", "amqps"}:
        broker = await AmqpBroker.connect(url, topology)
    else:
        raise ValueError(f"unsupported broker URL scheme {scheme!r} (memory, amqp or amqps)")
    async with broker:
        yield broker
