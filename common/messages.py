"""Task messages: what travels on the work queues, and how a task maps to its next message.

A message names a task and the attempt it was sent for; the handler compares both with the
task's row and drops a stale message, so redelivery and duplicates are harmless. Bodies are small
JSON: the state lives in the database, not in the message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum

from common.broker import Outgoing, WorkQueue
from common.domain.states import TaskKind


class MessageKind(StrEnum):
    RUN = "run"  # start (or resume) the task's current attempt
    POLL = "poll"  # check the provider request of a RUNNING task
    CANCEL = "cancel"  # cancel the provider request of a cancelled task


# AMQP priorities: work already under way (polls, granted slots) goes ahead of new work.
PRIORITY_BY_JOB = {0: 3, 1: 1, 2: 3, 3: 6}
IN_FLIGHT_BOOST = 2
CANCEL_PRIORITY = 9

QUEUE_BY_TASK_KIND = {
    TaskKind.VIDEO_SEGMENT: WorkQueue.VIDEO,
    TaskKind.STORY_PLAN: WorkQueue.STORY,
    TaskKind.STORY_SET: WorkQueue.STORY,
}


class BadMessage(ValueError):
    """A body that is not a task message: poison, dead-lettered."""


@dataclass(frozen=True)
class TaskMessage:
    task_id: int
    job_id: str
    kind: MessageKind
    attempt: int
    # Poll chain the message belongs to (POLL only).
    chain: int = 0
    # Re-issued by the sweeper after the task's deadline passed: a SUBMITTING task is then known
    # to have lost its request id.
    reissued: bool = False
    # A one-off poll (e.g. triggered by a webhook) that does not reschedule itself.
    once: bool = False
    # The provider state the previous poll saw ("queued:3", "in_progress"), so progress events
    # are written only when it changes, without a database write per poll.
    seen: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> TaskMessage:
        try:
            data = json.loads(body)
            return cls(
                task_id=int(data["task_id"]),
                job_id=str(data["job_id"]),
                kind=MessageKind(data["kind"]),
                attempt=int(data["attempt"]),
                chain=int(data.get("chain", 0)),
                reissued=bool(data.get("reissued", False)),
                once=bool(data.get("once", False)),
                seen=str(data.get("seen", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"not a task message: {exc}") from None


def outgoing(
    message: TaskMessage,
    task_kind: str,
    *,
    job_priority: int = 0,
    delay: float = 0.0,
    boost: bool = False,
) -> Outgoing:
    """The broker message for `message`, on its task kind's queue, at its priority.

    Polls, and runs of tasks that already hold a provider slot (`boost`), go ahead of new work.
    """
    if message.kind is MessageKind.CANCEL:
        priority = CANCEL_PRIORITY
    else:
        priority = PRIORITY_BY_JOB.get(job_priority, 3)
        if boost or message.kind is MessageKind.POLL:
            priority += IN_FLIGHT_BOOST
    return Outgoing(
        queue=QUEUE_BY_TASK_KIND[TaskKind(task_kind)],
        body=message.encode(),
        priority=priority,
        delay=max(0.0, delay),
        message_id=f"{message.task_id}.{message.attempt}.{message.kind}.{message.chain}",
    )
