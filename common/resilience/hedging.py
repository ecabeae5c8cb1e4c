"""Hedged reads: a second copy of an idempotent read when the first is slow or fails at once.

A status check or result fetch that hangs costs its whole call timeout, then a poll interval,
while the generation it asks about may be long finished and its provider slot idle ("The Tail
at Scale", Dean and Barroso, CACM 2013). `Hedge.read` sends the read; when no answer came
within the hedge delay, or the first answer is a failure another copy may not meet (a 5xx
without Retry-After, a timeout, a lost connection), it sends it once more. With both in
flight, a success or an answer about the request itself (a 4xx, fal's 422) wins at once and
the other copy is cancelled; a transient failure waits for the other copy, a 429 for at most
one more hedge delay (then the 429 is raised: its Retry-After is honoured). A 429, or any
failure with a Retry-After, before a second copy is sent is raised at once. A read is sent at
most twice, and second copies are at most one in `BUDGET_RATIO` of the reads (plus a burst of
`BUDGET_BURST`), so a provider answering every read with a 5xx gets no more than ~1.25 times
the reads; the step's retry, Retry-After and the circuit breaker stay with the caller.

The hedge delay follows the reads' own latency: twice the 95th percentile of the last
`WINDOW` successful reads, within [`floor`, `ceiling`]; the ceiling until `MIN_SAMPLES` reads
are known. Only reads may be hedged, never a call the provider could charge for twice (a
submit).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from common import metrics
from common.resilience.errors import ErrorClass, TransientError

T = TypeVar("T")

WINDOW = 256
MIN_SAMPLES = 16
# Second copies allowed: BUDGET_RATIO per read sent, up to BUDGET_BURST saved up.
BUDGET_RATIO = 0.25
BUDGET_BURST = 10.0
# Recompute the percentile after this many new samples (sorting every read costs more than
# the read's latency moves).
REFRESH_EVERY = 32
PERCENTILE = 0.95
FACTOR = 2.0


class Hedge:
    """Hedged reads of one provider, with the hedge delay learned from their latency."""

    def __init__(
        self,
        provider: str,
        *,
        floor: float,
        ceiling: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError(f"need 0 < floor <= ceiling, got {floor!r}, {ceiling!r}")
        self.provider = provider
        self.floor = floor
        self.ceiling = ceiling
        self.clock = clock
        self._latencies: deque[float] = deque(maxlen=WINDOW)
        self._fresh = 0
        self._delay = ceiling
        self._budget = BUDGET_BURST

    @property
    def delay(self) -> float:
        """Seconds to wait for the first copy before sending the second."""
        return self._delay

    def observe(self, seconds: float) -> None:
        """A successful read's latency."""
        self._latencies.append(seconds)
        self._fresh += 1
        if len(self._latencies) < MIN_SAMPLES:
            return
        if self._fresh >= REFRESH_EVERY or len(self._latencies) == MIN_SAMPLES:
            self._fresh = 0
            ordered = sorted(self._latencies)
            p95 = ordered[min(len(ordered) - 1, int(PERCENTILE * len(ordered)))]
            self._delay = min(self.ceiling, max(self.floor, FACTOR * p95))

    async def read(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`await fn()`, hedged (see module doc)."""
        self._budget = min(BUDGET_BURST, self._budget + BUDGET_RATIO)
        first = _copy(self._timed(fn))
        try:
            done, _ = await asyncio.wait({first}, timeout=self._delay)
            if done:
                if not _worth_another(first) or not self._spend("failed"):
                    return first.result()
                return await self._timed(fn)
            if not self._spend("slow"):
                return await first
            second = _copy(self._timed(fn))
            return await _race(first, second, grace=self._delay)
        finally:
            first.cancel()

    def _spend(self, reason: str) -> bool:
        """Take one second copy from the budget (False: none left)."""
        if self._budget < 1:
            return False
        self._budget -= 1
        metrics.hedged_reads.labels(self.provider, reason).inc()
        return True

    async def _timed(self, fn: Callable[[], Awaitable[T]]) -> T:
        started = self.clock()
        result = await fn()
        self.observe(self.clock() - started)
        return result


# Failures a second copy may not meet: the provider's own error, a lost or hung exchange.
_CHANCY = frozenset({ErrorClass.SERVER_ERROR, ErrorClass.TIMEOUT, ErrorClass.CONNECTION})


def _copy(read: Awaitable[T]) -> asyncio.Future[T]:
    """A copy in flight whose error, if nobody asks for it (a loser's), is not reported as
    never retrieved."""
    copy = asyncio.ensure_future(read)
    copy.add_done_callback(lambda c: c.cancelled() or c.exception())
    return copy


def _error_class(copy: asyncio.Future[T]) -> ErrorClass | None:
    """The class of a copy's transient failure; None for a success or any other error (an
    answer about the request itself: a 4xx, fal's 422 on a failed generation)."""
    error = copy.exception()
    if isinstance(error, TransientError) and error.error_class is not ErrorClass.UNPROCESSABLE:
        return error.error_class
    return None


def _worth_another(copy: asyncio.Future[T]) -> bool:
    """A failure another copy may not meet, and that did not ask us to wait (Retry-After)."""
    error = copy.exception()
    return _error_class(copy) in _CHANCY and getattr(error, "retry_after", None) is None


async def _race(first: asyncio.Future[T], second: asyncio.Future[T], *, grace: float) -> T:
    """Two copies in flight: a success, or an answer about the request, wins at once; a
    transient failure waits for the other copy, a 429 for at most `grace` seconds more. Both
    failed: the 429 if one was refused (its Retry-After is honoured), else the error of the
    copy that failed last."""
    pending = {first, second}
    failed: list[asyncio.Future[T]] = []
    try:
        while pending:
            limited = any(_error_class(c) is ErrorClass.RATE_LIMITED for c in failed)
            done, pending = await asyncio.wait(
                pending, timeout=grace if limited else None, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # the other copy is still out after the grace: the 429 stands
                break
            for copy in done:
                if _error_class(copy) is None:
                    return copy.result()
                failed.append(copy)
        limited_copies = [c for c in failed if _error_class(c) is ErrorClass.RATE_LIMITED]
        return (limited_copies or failed)[-1].result()
    finally:
        first.cancel()
        second.cancel()
