"""Retry decisions: given a failed attempt, retry after a delay or give up.

The policy decides and never sleeps; the caller schedules the retry (workers republish the task
to a delay queue, so the wait survives a crash). A `CircuitOpenError` is not decided here: no call
was made, so the task is deferred by `retry_in` without being charged an attempt.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from common.resilience.backoff import Backoff
from common.resilience.errors import ProviderError


@dataclass(frozen=True)
class Retry:
    """Try again after `delay` seconds."""

    delay: float
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """Stop retrying. `recoverable`: the cause was transient, so a later RetryFailed may succeed;
    False for permanent errors, which the same request will meet again."""

    recoverable: bool
    reason: str


Decision = Retry | GiveUp


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff with full jitter for transient errors, stretched to honour a capped Retry-After."""

    backoff: Backoff = field(default_factory=Backoff)
    max_retry_after: float = 120.0
    """Cap, in seconds, on the wait a provider may impose through Retry-After."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_retry_after) and self.max_retry_after >= 0):
            raise ValueError(
                f"max_retry_after must be a finite number >= 0, got {self.max_retry_after!r}"
            )

    def decide(
        self,
        error: ProviderError,
        attempt: int,
        *,
        max_attempts: int | None = None,
        rng: Callable[[], float] = random.random,
    ) -> Decision:
        """Decide after attempt number `attempt` (1-based) failed with `error`.

        `max_attempts` defaults to `backoff.max_retries + 1`; pass the task's own limit when a
        RetryFailed round changed it.
        """
        limit = self.backoff.max_retries + 1 if max_attempts is None else max_attempts
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt!r}")
        if limit < 1:
            raise ValueError(f"max_attempts must be >= 1, got {limit!r}")
        what = _describe(error)
        if not error.retryable:
            return GiveUp(recoverable=False, reason=f"permanent error: {what}")
        if attempt >= limit:
            return GiveUp(
                recoverable=True,
                reason=f"retries exhausted: {what} on attempt {attempt} of {limit}",
            )
        delay = self.backoff.delay(attempt, rng)
        reason = f"{what}; retry {attempt} of {limit - 1}"
        if error.retry_after is not None:
            asked = min(error.retry_after, self.max_retry_after)
            if asked > delay:
                delay = asked
                reason += f" after Retry-After {asked:.1f}s"
        return Retry(delay=delay, reason=reason)


def _describe(error: ProviderError) -> str:
    status = "" if error.status_code is None else f" {error.status_code}"
    return f"{error.provider} {error.error_class.value}{status}"
