"""Progress fan-out over RabbitMQ: the note wire format and one subscriber's queue.

Notes are transient and unconfirmed: a lost note only delays a watcher until its next periodic
read of the store, so they are not worth a confirm round trip.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from common.broker.amqp_errors import BROKER_FAILURES
from common.broker.amqp_topology import RPC_TIMEOUT
from common.broker.base import ProgressNote
from common.broker.topology import Topology

log = logging.getLogger(__name__)

# A subscriber that stops reading (a stuck gateway) must not grow its queue without bound; its
# watchers recover through their periodic reads, so dropping the oldest notes is harmless.
SUBSCRIBER_QUEUE_MAX_LENGTH = 10_000


def routing_key(note: ProgressNote) -> str:
    return f"job.{note.job_id}"


def encode_note(note: ProgressNote) -> bytes:
    return json.dumps({"job_id": note.job_id, "cursor": note.cursor}).encode()


def decode_note(body: bytes) -> ProgressNote:
    """Parse a note; raises ValueError, KeyError or TypeError on anything malformed."""
    data = json.loads(body)
    job_id, cursor = data["job_id"], data["cursor"]
    if not isinstance(job_id, str) or not isinstance(cursor, int):
        raise TypeError("progress note has wrong field types")
    return ProgressNote(job_id=job_id, cursor=cursor)


class AmqpSubscription:
    """One subscriber: an exclusive, auto-delete queue bound to the progress exchange.

    The queue is client-named (unique) rather than server-named, so the robust channel can
    declare, bind and consume it again after a reconnection.
    """

    def __init__(
        self,
        channel: AbstractRobustChannel,
        callback: Callable[[ProgressNote], None],
        on_closed: Callable[[AmqpSubscription], None],
    ) -> None:
        self._channel = channel
        self._callback = callback
        self._on_closed = on_closed
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._closed = False

    async def start(self, topology: Topology) -> None:
        self._queue = await self._channel.declare_queue(
            f"{topology.progress_exchange}.{uuid.uuid4().hex}",
            exclusive=True,
            auto_delete=True,
            arguments={"x-max-length": SUBSCRIBER_QUEUE_MAX_LENGTH},
            timeout=RPC_TIMEOUT,
        )
        await self._queue.bind(topology.progress_exchange, routing_key="job.#", timeout=RPC_TIMEOUT)
        self._tag = await self._queue.consume(self._on_message, no_ack=True, timeout=RPC_TIMEOUT)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._queue is not None and self._tag is not None:
                await self._queue.cancel(self._tag, timeout=RPC_TIMEOUT)
            # Closing the channel is enough to drop the exclusive queue.
            await self._channel.close()
        except BROKER_FAILURES as exc:
            log.warning("closing progress subscription failed: %r", exc)
        self._on_closed(self)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._closed:
            return
        try:
            note = decode_note(message.body)
        except (ValueError, KeyError, TypeError):
            log.warning("dropping malformed progress note (%d bytes)", len(message.body))
            return
        try:
            self._callback(note)
        except Exception:
            log.exception("progress callback failed for job %s", note.job_id)
