"""A broker harness parametrized over every implementation, for the broker contract tests.

The RabbitMQ variant runs on a unique prefix and deletes its topology at teardown; dead letters
are watched on the real dead-letter queue, not read from the broker object.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from common.broker import Broker, MemoryBroker, Topology, delete_topology, open_broker

WAIT = 5.0  # upper bound for anything the tests wait for
QUEUES = ("video.segment", "story.set")  # the work queues the contract tests use


async def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until `predicate()` holds (checked every 10 ms) or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


@dataclass
class Harness:
    kind: str
    url: str
    topology: Topology
    broker: Broker
    dead_bodies: list[bytes]
    """Bodies that reached the dead-letter queue (RabbitMQ) or `dead_letters` (memory)."""

    def open_another(self) -> contextlib.AbstractAsyncContextManager[Broker]:
        """A second broker on the same topology (another process, as far as RabbitMQ knows)."""
        return open_broker(self.url, self.topology)

    async def dead_letters(self, count: int) -> list[bytes]:
        if isinstance(self.broker, MemoryBroker):
            memory = self.broker
            await eventually(lambda: len(memory.dead_letters) >= count)
            return [m.body for m in memory.dead_letters]
        await eventually(lambda: len(self.dead_bodies) >= count)
        return list(self.dead_bodies)


@contextlib.asynccontextmanager
async def watch_dead_letters(url: str, topology: Topology) -> AsyncIterator[list[bytes]]:
    bodies: list[bytes] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        bodies.append(message.body)

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.dead_letter_queue)
        await queue.consume(on_message, no_ack=True)
        yield bodies


@contextlib.asynccontextmanager
async def open_harness(kind: str, url: str, queue_prefix: str) -> AsyncIterator[Harness]:
    topology = Topology(prefix=queue_prefix, queues=QUEUES)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "amqp":
            stack.push_async_callback(delete_topology, url, topology)
        broker = await stack.enter_async_context(open_broker(url, topology))
        bodies: list[bytes] = []
        if kind == "amqp":
            bodies = await stack.enter_async_context(watch_dead_letters(url, topology))
        yield Harness(kind, url, topology, broker, bodies)


@pytest.fixture(params=["memory", "amqp"])
async def harness(request: pytest.FixtureRequest, queue_prefix: str) -> AsyncIterator[Harness]:
    """Each contract test runs against both brokers."""
    url = "memory://" if request.param == "memory" else request.getfixturevalue("amqp_url")
    async with open_harness(request.param, url, queue_prefix) as h:
        yield h


@pytest.fixture
async def amqp_harness(amqp_url: str, queue_prefix: str) -> AsyncIterator[Harness]:
    """RabbitMQ only: what durability and connection loss mean."""
    async with open_harness("amqp", amqp_url, queue_prefix) as h:
        yield h
