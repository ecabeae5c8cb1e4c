"""Per-caller limits, shared by the gRPC and HTTP edges: a request rate (token bucket) and a
number of concurrent event streams.

A caller is its token's name, or its peer address when the service is anonymous. Buckets are
kept per gateway process and forgotten once full and idle, so memory follows the active callers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import ResourceExhausted

MAX_CALLERS = 100_000  # buckets kept before idle ones are dropped


@dataclass
class _Bucket:
    tokens: float
    at: float


class CallerLimits:
    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_streams: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_streams = max_streams
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, int] = {}

    def take(self, caller: str) -> None:
        """Spend one request of `caller`'s budget, or ResourceExhausted with the wait."""
        now = self.clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= MAX_CALLERS:
                self._forget_idle(now)
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise ResourceExhausted(
                f"too many requests: at most {self.rate:g} per second (burst {self.burst});"
                f" retry in {wait:.2f}s",
                retry_after=wait,
            )
        bucket.tokens -= 1

    def open_stream(self, caller: str) -> None:
        """Take one of `caller`'s concurrent streams (give it back with `close_stream`)."""
        open_streams = self._streams.get(caller, 0)
        if open_streams >= self.max_streams:
            raise ResourceExhausted(
                f"too many open event streams: at most {self.max_streams} per caller"
            )
        self._streams[caller] = open_streams + 1

    def close_stream(self, caller: str) -> None:
        self._streams[caller] -= 1
        if not self._streams[caller]:
            del self._streams[caller]

    def _forget_idle(self, now: float) -> None:
        full = [
            name
            for name, b in self._buckets.items()
            if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for name in full:
            del self._buckets[name]
