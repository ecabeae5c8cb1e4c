"""Hedged reads: a second copy of an idempotent read when the first is slow or fails at once.

A status check or result fetch that hangs costs its whole call timeout, then a poll interval,
while the generation it asks about may be long finished and its provider slot idle ("The Tail
at Scale", Dean and Barroso, CACM 2013). `Hedge.read` sends the read; when no answer came
within the hedge delay, or the first answer is a failure another copy may not meet (a 5xx, a
timeout, a lost connection), it sends it once more. With both in flight, a success or an answer
about the request itself (a 4xx, fal's 422) wins at once and the other copy is cancelled; a
transient failure, a 429 included, waits for the other copy. A 429 before any second copy is
sent is raised at once (the provider asked us to wait). A read is sent at most twice: the
step's retry, Retry-After and the circuit breaker stay with the caller.

The hedge delay follows the reads' own latency: twice the 95th percentile of the last
`WINDOW` successful reads, within [`floor`, `ceiling`]. Only reads may be hedged, never a call
that the provider could charge for twice (a submit).
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

    @property
    def delay(self) -> float:
        """Seconds to wait for the first copy before sending the second."""
        return self._delay

    def observe(self, seconds: float) -> None:
        """A successful read's latency."""
        self._latencies.append(seconds)
        self._fresh += 1
        if self._fresh >= REFRESH_EVERY or len(self._latencies) == self._fresh:
            self._fresh = 0
            ordered = sorted(self._latencies)
            p95 = ordered[min(len(ordered) - 1, int(PERCENTILE * len(ordered)))]
            self._delay = min(self.ceiling, max(self.floor, FACTOR * p95))

    async def read(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`await fn()`, hedged (see module doc)."""
        first = asyncio.ensure_future(self._timed(fn))
        try:
            done, _ = await asyncio.wait({first}, timeout=self._delay)
            if done:
                if not _worth_another(first):
                    return first.result()
                metrics.hedged_reads.labels(self.provider, "failed").inc()
                return await self._timed(fn)
            metrics.hedged_reads.labels(self.provider, "slow").inc()
            second = asyncio.ensure_future(self._timed(fn))
            return await _race(first, second)
        finally:
            first.cancel()

    async def _timed(self, fn: Callable[[], Awaitable[T]]) -> T:
        started = self.clock()
        result = await fn()
        self.observe(self.clock() - started)
        return result


# Failures a second copy may not meet: the provider's own error, a lost or hung exchange.
_CHANCY = frozenset({ErrorClass.SERVER_ERROR, ErrorClass.TIMEOUT, ErrorClass.CONNECTION})


def _error_class(copy: asyncio.Future[T]) -> ErrorClass | None:
    """The class of a copy's transient failure; None for a success or any other error (an
    answer about the request itself: a 4xx, fal's 422 on a failed generation)."""
    error = copy.exception()
    if isinstance(error, TransientError) and error.error_class is not ErrorClass.UNPROCESSABLE:
        return error.error_class
    return None


def _worth_another(copy: asyncio.Future[T]) -> bool:
    """A failure another copy may not meet (not a 429: the provider asked us to wait)."""
    return _error_class(copy) in _CHANCY


async def _race(*copies: asyncio.Future[T]) -> T:
    """Two copies in flight: a success, or an answer about the request, wins at once; a
    transient failure (a 429 included: the other copy may already be through) waits for the
    other copy. Both failed: the 429 if one was refused (its Retry-After is honoured), else the
    error of the copy that failed last."""
    pending = set(copies)
    failed: list[asyncio.Future[T]] = []
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for copy in done:
                if _error_class(copy) is None:
                    return copy.result()
                failed.append(copy)
        limited = [c for c in failed if _error_class(c) is ErrorClass.RATE_LIMITED]
        return (limited or failed)[-1].result()
    finally:
        for copy in copies:
            if not copy.done():
                copy.cancel()
            elif not copy.cancelled():
                copy.exception()  # retrieved: a loser's error is not logged as unhandled
