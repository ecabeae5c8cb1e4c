"""The broker contract: message types, errors and the protocols both implementations keep.

Semantics (checked by tests/contract/test_broker_contract.py against every implementation):

- `publish` returns only when every message of the batch is confirmed (persistent on a durable
  broker); otherwise it raises `BrokerError` and some messages may or may not have been taken
  (callers rely on the application's sweeper, and handlers are idempotent).
- A message with `delay` is delivered no earlier than that many seconds after `publish`.
- Among waiting messages, the higher `priority` is delivered first.
- A handler that returns acks its message. A handler that raises `Reject` (poison) or any other
  exception dead-letters it: it is never redelivered, because the sweeper re-issues unfinished work
  and a poison message must not loop. A handler cancelled by `Consumer.stop` requeues its message.
- At most `prefetch` handlers of one consumer run at once.
- A message whose consumer died before acking is redelivered with `redelivered=True`.
- Progress notes are best-effort fan-out: every live subscriber gets every note, or nothing is
  promised (a lost note only delays a watcher until its next periodic read).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from common.broker.topology import Topology


class BrokerError(Exception):
    """A publish was not confirmed, or the broker connection failed while publishing."""


class Reject(Exception):
    """Raised by a handler: the message is poison and goes to the dead-letter queue."""


@dataclass(frozen=True)
class Outgoing:
    """A message to publish. `delay` is in seconds; `headers` values are str or int.

    `slack`: how much later than `delay` the message may be delivered, where a delay tier that
    long saves hops through smaller ones (`Topology.first_tier`: a poll due in 29.99 s, 10 ms
    of it spent on a commit, takes the 30 s tier instead of seven hops from 10 s down)."""

    queue: str
    body: bytes
    priority: int = 0
    delay: float = 0.0
    message_id: str | None = None
    headers: Mapping[str, str | int] = field(default_factory=dict)
    slack: float = 0.0

    def __post_init__(self) -> None:
        if self.priority < 0:
            raise ValueError(f"Outgoing.priority must not be negative, got {self.priority}")
        if not math.isfinite(self.delay) or self.delay < 0:
            raise ValueError(f"Outgoing.delay must be a finite number >= 0, got {self.delay}")
        if not math.isfinite(self.slack) or self.slack < 0:
            raise ValueError(f"Outgoing.slack must be a finite number >= 0, got {self.slack}")


@dataclass(frozen=True)
class Incoming:
    """A delivered message as handlers see it (broker-internal headers removed)."""

    queue: str
    body: bytes
    redelivered: bool
    priority: int
    message_id: str | None
    headers: Mapping[str, object]


@dataclass(frozen=True)
class ProgressNote:
    """Job `job_id` has new events up to `cursor`; watchers then read them from the store."""

    job_id: str
    cursor: int


Handler = Callable[[Incoming], Awaitable[None]]


class Consumer(Protocol):
    # `timeout` is a grace period for handlers, not a bound on the call (hence the noqa).
    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109
        """Stop taking messages; wait up to `timeout` s for running handlers, then cancel the
        rest and requeue their messages. Idempotent."""
        ...


class Subscription(Protocol):
    async def close(self) -> None:
        """Stop receiving progress notes. Idempotent."""
        ...


class Broker(Protocol):
    durable: bool
    """True: accepted messages survive a crash of every process (RabbitMQ). False: in-process."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish a batch; return when all are confirmed, else raise `BrokerError`."""
        ...

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Consumer:
        """Run `handler` for each message of `queue`, at most `prefetch` at once."""
        ...

    async def notify(self, notes: Sequence[ProgressNote]) -> None:
        """Announce progress to every subscriber. Best effort: never raises on broker trouble."""
        ...

    async def subscribe(self, callback: Callable[[ProgressNote], None]) -> Subscription:
        """Call `callback` (synchronous, cheap) for every note published by anyone."""
        ...

    async def close(self) -> None:
        """Stop consumers (cancelling their handlers), subscriptions, then the connection."""
        ...


def check_batch(messages: Sequence[Outgoing], topology: Topology) -> None:
    """Refuse a batch up front (nothing sent) when a priority exceeds the queues' maximum.

    RabbitMQ would silently cap it; an explicit error points at the caller's bug instead.
    """
    for message in messages:
        if message.priority > topology.max_priority:
            raise ValueError(
                f"Outgoing.priority {message.priority} exceeds Topology.max_priority "
                f"{topology.max_priority}"
            )
