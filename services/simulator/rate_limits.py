"""OpenAI's per-model rate limits: request and token budgets per minute, and their headers.

Each model has two buckets (requests, tokens) that hold at most a minute's budget and refill
continuously at that budget per minute: the sliding one-minute window without a log. That is
what OpenAI's `x-ratelimit-reset-*` headers describe, "the time until the rate limit resets to
its initial state" (a full bucket), written as a Go duration such as `1s`, `6m0s` or `120ms`.

A call is admitted when a request and its tokens are both left; it then takes them. The tokens a
call costs are its answer's `usage.total_tokens` (prompt and completion), known before it is
answered. A refused call takes nothing and waits, in `retry-after`, until enough has refilled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from services.simulator.config import Clock, RateBudget

WINDOW = 60.0  # seconds: budgets are per minute
MAX_MODELS = 1024  # model names come from clients: the oldest buckets go past this many
Resource = Literal["requests", "tokens"]


def go_duration(seconds: float) -> str:
    """A wait as Go prints durations (OpenAI's format): `120ms`, `1s`, `1m26.4s`, `6m0s`.

    Rounded up to the millisecond, so a client that waits this long finds the budget back.
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    text = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


@dataclass
class Bucket:
    """Holds up to `limit`, refilling at `limit` per WINDOW; starts full."""

    limit: int
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(float(self.limit), self.level + (now - self.at) * self.limit / WINDOW)
        self.at = now

    @property
    def remaining(self) -> int:
        return math.floor(self.level)

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 if it is); until full for the reset header."""
        return max(0.0, (amount - self.level) * WINDOW / self.limit)


@dataclass(frozen=True)
class Refusal:
    """A call over budget: which budget, and how long until it would be admitted."""

    resource: Resource
    limit: int
    used: int
    requested: int
    wait: float


class RateLimiter:
    """Buckets per model, created full on first use, under the configured budgets."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._default = RateBudget()
        self._models: dict[str, RateBudget] = {}
        self._buckets: dict[str, dict[Resource, Bucket]] = {}

    def configure(self, default: RateBudget, models: dict[str, RateBudget]) -> None:
        """New budgets; every bucket starts full again."""
        self._default = default
        self._models = dict(models)
        self._buckets.clear()

    def admit(self, model: str, tokens: int) -> Refusal | None:
        """Take one request and `tokens` from `model`'s budget, or say why not (taking nothing)."""
        buckets = self._refilled(model)
        wanted: tuple[tuple[Resource, int], ...] = (("requests", 1), ("tokens", tokens))
        for resource, amount in wanted:
            bucket = buckets[resource]
            if bucket.level < amount:
                return Refusal(
                    resource,
                    bucket.limit,
                    bucket.limit - bucket.remaining,
                    amount,
                    bucket.wait_for(amount),
                )
        buckets["requests"].level -= 1
        buckets["tokens"].level -= tokens
        return None

    def headers(self, model: str, *, throttled_for: float | None = None) -> dict[str, str]:
        """The six `x-ratelimit-*` headers for `model` now.

        `throttled_for`: the call is refused by the provider as a whole (a storm, an outage), so
        no request is left for that long, whatever the model's own bucket holds.
        """
        buckets = self._refilled(model)
        headers: dict[str, str] = {}
        for resource, bucket in buckets.items():
            headers[f"x-ratelimit-limit-{resource}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{resource}"] = str(bucket.remaining)
            headers[f"x-ratelimit-reset-{resource}"] = go_duration(bucket.wait_for(bucket.limit))
        if throttled_for is not None:
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = go_duration(throttled_for)
        return headers

    def _refilled(self, model: str) -> dict[Resource, Bucket]:
        now = self._clock()
        buckets = self._buckets.get(model)
        if buckets is None:
            budget = self._models.get(model, self._default)
            buckets = {
                "requests": Bucket(budget.requests_per_minute, budget.requests_per_minute, now),
                "tokens": Bucket(budget.tokens_per_minute, budget.tokens_per_minute, now),
            }
            self._buckets[model] = buckets
            if len(self._buckets) > MAX_MODELS:
                del self._buckets[next(iter(self._buckets))]
        for bucket in buckets.values():
            bucket.refill(now)
        return buckets
