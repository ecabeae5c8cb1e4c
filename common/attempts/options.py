"""What a worker registers per kind: its handler, retry policy and attempt options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.attempts.kind import KindHandler
from common.resilience import RetryPolicy
from common.settings import Settings


@dataclass(frozen=True)
class AttemptOptions:
    call_timeout: float
    # Polled kinds: seconds between status checks, and from a submit to the first check (None:
    # the interval; 0: right away, in the same step, for providers that finish very fast).
    poll_interval: float = 2.0
    first_poll_delay: float | None = None
    # With `first_poll_delay` unset: the first check waits for the model's run time as the
    # provider reported it for earlier requests (common.attempts.estimates.RunTimes), the poll
    # interval until one is known. Off where a webhook says when a request ends (the interval
    # is then only a fallback).
    learn_first_poll: bool = False
    # How long a result may be reused by an identical task of a job that asks for reuse.
    reuse_ttl: float = 86_400.0
    # Cap on a provider's Retry-After when it pauses the provider for every worker.
    max_pause: float = 120.0
    # Polled kinds whose submits name a webhook: how long after an interrupted submit began a
    # worker waits for the provider's webhook to name the request (common.attempts.webhooks)
    # before it submits again. 0: submit again at once (no webhooks: nothing could tell).
    adopt_window: float = 0.0

    @classmethod
    def of(cls, settings: Settings, *, call_timeout: float, **kind: Any) -> AttemptOptions:
        """A kind's options (`kind`: its polling and webhook ones) with the fleet-wide settings
        every kind shares."""
        return cls(
            call_timeout=call_timeout,
            reuse_ttl=settings.reuse_ttl,
            max_pause=settings.max_retry_after,
            **kind,
        )


@dataclass(frozen=True)
class Registration:
    """A kind a worker runs: its handler, retry policy and options."""

    handler: KindHandler
    policy: RetryPolicy
    options: AttemptOptions
