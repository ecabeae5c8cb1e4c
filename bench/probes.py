"""Readiness probes for child processes: "answers HTTP 200" and "consumes from a queue"."""

from __future__ import annotations

import aio_pika
import httpx

from bench.procs import Probe

PROBE_TIMEOUT = 2.0


def http_ok(url: str) -> Probe:
    """Ready when GET `url` answers 200."""

    async def probe() -> bool:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
            return (await client.get(url)).status_code == 200

    return probe


async def consumer_count(amqp_url: str, queue: str) -> int:
    """Consumers on `queue` right now (0 when the queue does not exist yet)."""
    connection = await aio_pika.connect(amqp_url, timeout=PROBE_TIMEOUT)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        try:
            declared = await channel.declare_queue(queue, passive=True, timeout=PROBE_TIMEOUT)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        result = declared.declaration_result
        return int(result.consumer_count or 0)


def consuming(amqp_url: str, queue: str, *, at_least: int = 1) -> Probe:
    """Ready when at least `at_least` consumers are attached to `queue` (what "worker ready"
    means; the n-th worker of a kind is ready when there are n)."""

    async def probe() -> bool:
        return await consumer_count(amqp_url, queue) >= at_least

    return probe
