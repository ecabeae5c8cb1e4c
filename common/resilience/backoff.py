"""Exponential backoff with full jitter: a pure function from retry number to delay.

Full jitter (delay drawn uniformly from 0 to the exponential ceiling) spreads the retries of many
tasks that failed together, e.g. during a provider outage, instead of sending them back in waves.
Nothing here sleeps: callers schedule the delay (the workers put it on a RabbitMQ delay queue).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """How long to wait before each retry.

    The default is the video seed (1 s, x2, cap 30 s, 3 retries: ceilings 1, 2, 4 s);
    the story seed is `Backoff(initial=2.0)` (ceilings 2, 4, 8 s).
    """

    initial: float = 1.0
    """Ceiling of the first retry's delay, in seconds."""
    multiplier: float = 2.0
    """Growth of the ceiling from one retry to the next."""
    cap: float = 30.0
    """Largest ceiling, in seconds."""
    max_retries: int = 3
    """Retries after the first attempt."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and self.initial >= 0):
            raise ValueError(f"initial must be a finite number >= 0, got {self.initial!r}")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"multiplier must be a finite number >= 1, got {self.multiplier!r}")
        if not (math.isfinite(self.cap) and self.cap >= self.initial):
            raise ValueError(f"cap must be a finite number >= initial, got {self.cap!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries!r}")

    def ceiling(self, retry_number: int) -> float:
        """`min(cap, initial * multiplier ** (retry_number - 1))`; `retry_number` is 1-based."""
        if retry_number < 1:
            raise ValueError(f"retry_number is 1-based, got {retry_number!r}")
        try:
            return min(self.cap, self.initial * self.multiplier ** (retry_number - 1))
        except OverflowError:  # a huge retry number: the power left float range, far past cap
            return self.cap

    def delay(self, retry_number: int, rng: Callable[[], float] = random.random) -> float:
        """A delay drawn from U(0, ceiling); `rng` returns a float in [0, 1)."""
        return rng() * self.ceiling(retry_number)
