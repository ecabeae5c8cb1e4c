"""The physical limit: a raw RabbitMQ round trip per message, through aio-pika.

The driver publishes N persistent messages with publisher confirms (pipelined, a window at a
time, as the orchestrator's own publisher does); an echo worker in a separate process
(`bench.echo_worker`) consumes each one, publishes a persistent confirmed completion and acks;
the driver consumes the completions. Rate = N / (time from just before the first publish to the
N-th completion received). CPU over the same span: the echo process (`/proc/<pid>/stat`) and the
driver (this benchmark process, `time.process_time()`). No database, no HTTP, no state: what
RabbitMQ and aio-pika allow on this machine, against which the orchestrator's segments per
second are compared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from bench.console import best_effort
from bench.probes import consuming
from bench.procs import ChildProcess

PUBLISH_WINDOW = 1_000
PREFETCH = 64  # the video worker's default prefetch
BODY = b'{"task_id": "00000000-0000-0000-0000-000000000000", "kind": "run", "attempt": 1}'


async def _publish_all(channel: aio_pika.abc.AbstractChannel, queue: str, n: int) -> None:
    """Publish n persistent messages, awaiting confirms a window at a time."""
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    properties = Basic.Properties(delivery_mode=2)
    for start in range(0, n, PUBLISH_WINDOW):
        count = min(PUBLISH_WINDOW, n - start)
        await asyncio.gather(
            *(
                underlay.basic_publish(
                    BODY, exchange="", routing_key=queue, properties=properties, wait=False
                )
                for _ in range(count)
            )
        )


async def collect(queue: aio_pika.abc.AbstractQueue, n: int) -> float:
    """Consume (and ack) n completions; perf_counter when the n-th arrived."""
    received = 0
    finished = asyncio.get_running_loop().create_future()

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal received
        await message.ack()
        received += 1
        if received == n and not finished.done():
            finished.set_result(time.perf_counter())

    tag = await queue.consume(on_message)
    try:
        return cast(float, await finished)
    finally:
        await queue.cancel(tag)


async def delete_amqp(amqp_url: str, queues: Sequence[str], exchanges: Sequence[str] = ()) -> None:
    """Delete queues and exchanges (missing ones are fine: RabbitMQ answers delete-ok)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


async def raw_round_trip(amqp_url: str, prefix: str, n: int, log_dir: Path) -> dict[str, Any]:
    """Run the round trip of n messages; raw numbers (rate in messages per second)."""
    work, done = f"{prefix}-raw-work", f"{prefix}-raw-done"
    env = {
        "BENCH_AMQP_URL": amqp_url,
        "BENCH_WORK_QUEUE": work,
        "BENCH_DONE_QUEUE": done,
        "BENCH_PREFETCH": str(PREFETCH),
    }
    echo = ChildProcess.module(
        "echo_worker", "bench.echo_worker", env, log_dir, consuming(amqp_url, work)
    )
    async with AsyncExitStack() as exits:
        exits.push_async_callback(
            best_effort, "delete the round-trip queues", lambda: delete_amqp(amqp_url, [work, done])
        )
        exits.push_async_callback(echo.stop)
        connection = await exits.enter_async_context(await aio_pika.connect(amqp_url))
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=PREFETCH)
        await channel.declare_queue(work, durable=True)
        done_queue = await channel.declare_queue(done, durable=True)
        await echo.start()
        echo_before, driver_before = await echo.cpu_seconds(), time.process_time()
        async with asyncio.TaskGroup() as tasks:
            began = time.perf_counter()
            collector = tasks.create_task(collect(done_queue, n))
            await _publish_all(channel, work, n)
            published = time.perf_counter()
        ended = collector.result()
        driver_cpu = time.process_time() - driver_before
        echo_after = await echo.cpu_seconds()
    if echo_before is None or echo_after is None:
        raise RuntimeError("the echo worker exited during the round trip")
    seconds = ended - began
    return {
        "messages": n,
        "seconds": seconds,
        "publish_seconds": published - began,
        "rate": n / seconds,
        "prefetch": PREFETCH,
        "cpu_seconds": {"echo_worker": echo_after - echo_before, "driver": driver_cpu},
    }
