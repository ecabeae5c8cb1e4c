"""The one place that maps a handler's outcome to what the broker does with its message.

Both implementations call `run_handler`, then ack or dead-letter; cancellation propagates so the
caller can requeue.
"""

from __future__ import annotations

import enum
import logging

from common.broker.base import Handler, Incoming, Reject

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What happens to a delivered message."""

    ACK = "ack"
    DEAD_LETTER = "dead-letter"
    # Never returned by run_handler: the broker requeues on cancellation (Consumer.stop) and
    # when it cannot move a delayed message on to its next tier.
    REQUEUE = "requeue"


async def run_handler(handler: Handler, incoming: Incoming) -> Outcome:
    """Run `handler`; ACK when it returns, DEAD_LETTER when it raises.

    Any exception dead-letters, not only `Reject`: the application's sweeper re-issues work for
    unfinished tasks, so requeueing a message that crashes its handler would only make it loop.
    `asyncio.CancelledError` is not caught (it is a BaseException): the caller requeues.
    """
    try:
        await handler(incoming)
    except Reject as exc:
        log.warning(
            "message %s on %s rejected by its handler, dead-lettered: %s",
            incoming.message_id,
            incoming.queue,
            exc,
        )
        return Outcome.DEAD_LETTER
    except Exception:
        log.exception(
            "handler crashed on message %s from %s; dead-lettered",
            incoming.message_id,
            incoming.queue,
        )
        return Outcome.DEAD_LETTER
    return Outcome.ACK
