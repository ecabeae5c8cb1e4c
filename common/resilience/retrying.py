"""Retrying our own operations (a commit, a write batch) with the same backoff policy objects as
provider calls, and the sleep injected so tests need not wait."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from common.resilience.backoff import Backoff

T = TypeVar("T")
log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    retry_on: Callable[[Exception], bool],
    what: str,
    sleep: Sleep = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """`await fn()`, again after a backoff delay while it raises an exception `retry_on`
    accepts, at most `backoff.max_retries` more times; the last exception propagates."""
    retry = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            retry += 1
            if retry > backoff.max_retries or not retry_on(exc):
                raise
            delay = backoff.delay(retry, rng)
            log.info("%s failed (%s); again in %.2fs", what, type(exc).__name__, delay)
            await sleep(delay)
