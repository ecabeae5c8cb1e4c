"""Task messages: what travels on the work queues, and the messages a change set owes.

A message names a task and the attempt it was sent for; the handler compares both with the
task's row and drops a stale message, so redelivery and duplicates are harmless. Bodies are small
JSON: the state lives in the database, not in the message. Turning a `Send` into a broker
message (queue, AMQP priority) is common.routing's business, not the domain's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum


class MessageKind(StrEnum):
    RUN = "run"  # start (or resume) the task's current attempt
    POLL = "poll"  # check the provider request of a RUNNING task
    CANCEL = "cancel"  # cancel the provider request of a cancelled task


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
    # Re-issued by the sweeper after the task's deadline passed: a task caught mid-call is then
    # known to have lost its worker.
    reissued: bool = False
    # A one-off poll (e.g. triggered by a webhook) that does not reschedule itself.
    once: bool = False
    # Put off to look again whether the worker that was making the task's call is alive.
    recheck: bool = False
    # The provider state the previous poll saw ("queued:3", "in_progress"), so progress events
    # are written only when it changes, without a database write per poll.
    seen: str = ""
    # POLL: when this check was due (epoch seconds; 0: unknown). The next one is due a poll
    # interval after it, not after whenever this one was handled, so polls keep their rhythm.
    due: float = 0.0

    def encode(self) -> bytes:
        # The fields every message has, then only those that differ from their defaults: small
        # bodies, and no `asdict` (a deep copy) per message.
        body: dict[str, object] = {
            "task_id": self.task_id,
            "job_id": self.job_id,
            "kind": str(self.kind),
            "attempt": self.attempt,
        }
        if self.chain:
            body["chain"] = self.chain
        if self.reissued:
            body["reissued"] = True
        if self.once:
            body["once"] = True
        if self.recheck:
            body["recheck"] = True
        if self.seen:
            body["seen"] = self.seen
        if self.due:
            body["due"] = self.due
        return json.dumps(body, separators=(",", ":")).encode()

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
                recheck=bool(data.get("recheck", False)),
                seen=str(data.get("seen", "")),
                due=float(data.get("due", 0.0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"not a task message: {exc}") from None

    @property
    def message_id(self) -> str:
        return f"{self.task_id}.{self.attempt}.{self.kind}.{self.chain}"


@dataclass(frozen=True)
class Send:
    """A task message owed once the change that needs it is committed."""

    message: TaskMessage
    task_kind: str
    job_priority: int = 0
    delay: float = 0.0
    # The task already holds a provider slot (or is polled): it goes ahead of new work.
    boost: bool = False
    # W3C traceparent of the work that owed the message (tracing on), carried as a header.
    trace: str | None = None
    # How much later than `delay` it may come (see `Outgoing.slack`): a poll pulled in to keep
    # its rhythm may still come as late as a plain interval from its step would have made it.
    slack: float = 0.0
