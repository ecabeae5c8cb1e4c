"""The one place a worker maps a handled message to ack, delayed redelivery or dead letter.

Handlers return normally when the task's state is recorded (ack), raise `StaleTask` when the
message no longer matches the task (ack: someone else moved it on), and raise anything else on
failure. An outage (database or broker unreachable) puts the message back with a growing delay
for as long as it lasts; any other failure (a bug) puts it back a few times and then dead-letters
it, so one poison message cannot spin a worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from sqlalchemy.exc import InterfaceError, OperationalError

from common import metrics, tracing
from common.broker import Broker, BrokerError, Consumer, Incoming, Outgoing, Reject
from common.domain.changes import StaleTask
from common.domain.messages import BadMessage, TaskMessage
from common.logs import bind_task
from common.resilience import Backoff
from common.routing import TRACE_HEADER

log = logging.getLogger(__name__)

CRASH_HEADER = "x-crashes"
OUTAGE_HEADER = "x-outages"
# Delays before handling a message again: after an outage (for as long as it lasts) and after a
# crash of the handler (MAX_CRASHES times, then the dead-letter queue).
OUTAGE_BACKOFF = Backoff(initial=2.0, multiplier=2.0, cap=30.0, max_retries=0)
CRASH_BACKOFF = Backoff(initial=2.0, multiplier=2.0, cap=30.0, max_retries=4)
MAX_CRASHES = CRASH_BACKOFF.max_retries + 1
# Infrastructure failures: a lost database or broker connection, a lock that never came.
OUTAGES = (OperationalError, InterfaceError, BrokerError, ConnectionError, TimeoutError)


def _counters(incoming: Incoming) -> dict[str, str | int]:
    return {
        k: int(str(v)) for k, v in incoming.headers.items() if k in (CRASH_HEADER, OUTAGE_HEADER)
    }


class TaskHandler(Protocol):
    async def handle(self, message: TaskMessage, *, redelivered: bool) -> None: ...


class Dispatcher:
    """Decodes task messages, runs the handler, and decides what becomes of the message."""

    def __init__(self, broker: Broker, queue: str, handler: TaskHandler) -> None:
        self.broker = broker
        self.queue = queue
        self.handler = handler

    async def __call__(self, incoming: Incoming) -> None:
        try:
            message = TaskMessage.decode(incoming.body)
        except BadMessage as exc:
            log.error("dead-lettering a message that is not a task message: %s", exc)  # noqa: TRY400
            metrics.messages_handled.labels(self.queue, "dead_letter").inc()
            raise Reject("not a task message") from None
        bind_task(message.job_id, None)
        try:
            with tracing.continued(
                incoming.headers.get(TRACE_HEADER),
                f"{self.queue} {message.kind}",
                job_id=message.job_id,
                task_id=message.task_id,
                attempt=message.attempt,
            ):
                await self.handler.handle(message, redelivered=incoming.redelivered)
            metrics.messages_handled.labels(self.queue, "done").inc()
        except StaleTask as exc:
            metrics.messages_handled.labels(self.queue, "stale").inc()
            log.debug("dropped stale message: %s", exc)
        except asyncio.CancelledError:
            raise
        except OUTAGES as exc:
            # The database or the broker is away: not this message's fault, so it is put back
            # for as long as the outage lasts instead of counting towards the dead-letter queue.
            metrics.messages_handled.labels(self.queue, "outage").inc()
            outages = int(str(incoming.headers.get(OUTAGE_HEADER, 0))) + 1
            delay = OUTAGE_BACKOFF.ceiling(outages)
            log.warning(
                "task %s waits out an outage (%s); again in %.0fs",
                message.task_id,
                type(exc).__name__,
                delay,
            )
            await self._publish_again(incoming, delay, {OUTAGE_HEADER: outages})
        except Exception:
            await self._put_back(incoming, message)

    async def _put_back(self, incoming: Incoming, message: TaskMessage) -> None:
        crashes = int(str(incoming.headers.get(CRASH_HEADER, 0))) + 1
        outcome = "dead_letter" if crashes >= MAX_CRASHES else "crash"
        metrics.messages_handled.labels(self.queue, outcome).inc()
        if crashes >= MAX_CRASHES:
            log.exception("task %s failed %d times; dead-lettering", message.task_id, crashes)
            raise Reject("handler kept failing") from None
        delay = CRASH_BACKOFF.ceiling(crashes)
        log.exception(
            "handling task %s failed (%d/%d); retrying in %.0fs",
            message.task_id,
            crashes,
            MAX_CRASHES,
            delay,
        )
        await self._publish_again(incoming, delay, {CRASH_HEADER: crashes})

    async def _publish_again(
        self, incoming: Incoming, delay: float, headers: dict[str, str | int]
    ) -> None:
        await self.broker.publish(
            [
                Outgoing(
                    queue=self.queue,
                    body=incoming.body,
                    priority=incoming.priority,
                    delay=delay,
                    message_id=incoming.message_id,
                    headers={**_counters(incoming), **headers},
                )
            ]
        )


@asynccontextmanager
async def start_consumer(
    broker: Broker,
    queue: str,
    handler: TaskHandler,
    *,
    prefetch: int,
    drain_seconds: float,
) -> AsyncIterator[Consumer]:
    """Consume `queue` inside the block; on exit stop taking messages and drain in-flight ones
    within `drain_seconds` (the rest go back to the queue)."""
    consumer = await broker.consume(queue, Dispatcher(broker, queue, handler), prefetch=prefetch)
    log.info("consuming %s (prefetch %d)", queue, prefetch)
    try:
        yield consumer
    finally:
        log.info("draining %s for up to %.0fs", queue, drain_seconds)
        await consumer.stop(timeout=drain_seconds)
