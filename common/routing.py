"""Where an owed task message goes: its kind's work queue, at an AMQP priority.

Work already under way (polls, tasks that hold a provider slot) goes ahead of new work, and a
cancel ahead of everything, so a provider slot is never left idle behind a queue of new jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.broker import Outgoing
from common.domain.kinds import KindRegistry
from common.domain.messages import MessageKind, Send

# AMQP priorities by job priority (0 unspecified, 1 low, 2 normal, 3 high).
PRIORITY_BY_JOB = {0: 3, 1: 1, 2: 3, 3: 6}
IN_FLIGHT_BOOST = 2
CANCEL_PRIORITY = 9
TRACE_HEADER = "traceparent"


def outgoing(send: Send, kinds: KindRegistry, now: float | None = None) -> Outgoing:
    """The broker message for `send`, on its task kind's queue, at its priority. A poll that
    says when it is due (epoch seconds) is delayed until then from `now`, the time of
    publishing: the time between deciding on the delay and publishing (e.g. a commit) is not
    added to it, but is slack: it may still come as late as the delay it was given."""
    message = send.message
    delay, slack = send.delay, send.slack
    if now is not None and message.due and message.kind is MessageKind.POLL:
        exact = max(0.0, min(delay, message.due - now))
        delay, slack = exact, slack + delay - exact
    if message.kind is MessageKind.CANCEL:
        priority = CANCEL_PRIORITY
    else:
        priority = PRIORITY_BY_JOB.get(send.job_priority, 3)
        if send.boost or message.kind is MessageKind.POLL:
            priority += IN_FLIGHT_BOOST
    return Outgoing(
        queue=kinds[send.task_kind].queue,
        body=message.encode(),
        priority=priority,
        delay=delay,
        slack=slack,
        message_id=message.message_id,
        headers={TRACE_HEADER: send.trace} if send.trace else {},
    )


def outgoing_all(
    sends: Sequence[Send], kinds: KindRegistry, now: float | None = None
) -> list[Outgoing]:
    return [outgoing(s, kinds, now) for s in sends]
