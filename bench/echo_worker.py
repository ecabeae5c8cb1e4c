"""`python -m bench.echo_worker`: the worker side of the raw broker round trip.

Consumes BENCH_WORK_QUEUE with prefetch BENCH_PREFETCH; for each message publishes a persistent
completion to BENCH_DONE_QUEUE, waits for its publisher confirm, then acks the message — the
least a worker can do per message. Messages are handled concurrently (up to the prefetch), and
published through aiormq directly, as the orchestrator's publisher does. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import cast

import aio_pika
import aiormq
import uvloop
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

_PERSISTENT = Basic.Properties(delivery_mode=2)


async def _echo(channel: aiormq.Channel, done_queue: str, message: AbstractIncomingMessage) -> None:
    # wait=False: do not wait for the frame to be flushed; the confirm is still awaited.
    await channel.basic_publish(
        message.body, exchange="", routing_key=done_queue, properties=_PERSISTENT, wait=False
    )
    await message.ack()


async def serve(url: str, work_queue: str, done_queue: str, prefetch: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(work_queue, durable=True)
        await channel.declare_queue(done_queue, durable=True)
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        async with asyncio.TaskGroup() as tasks:

            async def on_message(message: AbstractIncomingMessage) -> None:
                tasks.create_task(_echo(underlay, done_queue, message))

            tag = await queue.consume(on_message)
            await stop.wait()
            await queue.cancel(tag)


def main() -> None:
    # The same event loop as the services, so the limit is measured at its best too.
    uvloop.run(
        serve(
            os.environ["BENCH_AMQP_URL"],
            os.environ["BENCH_WORK_QUEUE"],
            os.environ["BENCH_DONE_QUEUE"],
            int(os.environ.get("BENCH_PREFETCH", "64")),
        )
    )


if __name__ == "__main__":
    main()
