"""Progress fan-out over RabbitMQ: the note wire format and one subscriber's queue.

Notes are transient and unconfirmed: a lost note only delays a watcher until its next periodic
read of the store, so they are not worth a confirm round trip.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from common.broker.amqp_common import RPC_TIMEOUT, quietly
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
        self._closed = False

    async def start(self, topology: Topology) -> None:
        queue = await self._channel.declare_queue(
            f"{topology.progress_exchange}.{uuid.uuid4().hex}",
            exclusive=True,
            auto_delete=True,
            arguments={"x-max-length": SUBSCRIBER_QUEUE_MAX_LENGTH},
            timeout=RPC_TIMEOUT,
        )
        await queue.bind(topology.progress_exchange, routing_key="job.#", timeout=RPC_TIMEOUT)
        await queue.consume(self._on_message, no_ack=True, timeout=RPC_TIMEOUT)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Closing the channel cancels the consumer, which drops the auto-delete queue, and keeps
        # the robust channel from restoring either.
        await quietly("closing progress subscription", self._channel.close())
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
