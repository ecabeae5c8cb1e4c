"""One provider call under a circuit breaker and a timeout.

The call's outcome is reported to the breaker by the rules in `breaker`'s docstring: transient
failures count against the provider, permanent errors show it is answering, anything else (a
cancellation, a bug in our code) releases the permit unjudged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from common.resilience.breaker import CircuitBreaker, Permit
from common.resilience.classify import timeout_error
from common.resilience.errors import PermanentError, TransientError

T = TypeVar("T")


async def call_with_breaker(
    breaker: CircuitBreaker,
    fn: Callable[[], Awaitable[T]],
    *,
    # An outer asyncio.timeout would cancel the call, which the breaker must not count; this
    # timeout's expiry is a provider failure, so it belongs inside.
    timeout: float,  # noqa: ASYNC109
    provider: str,
) -> T:
    """Await `fn()` if `breaker` allows it, within `timeout` seconds, and report the outcome.

    Raises CircuitOpenError (before calling `fn`) when the breaker refuses, TransientError from
    `timeout_error` when `fn` overruns, and whatever `fn` raised otherwise. `fn` is expected to
    raise this layer's errors: its adapter translates the provider's own exceptions.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0, got {timeout!r}")
    permit = breaker.acquire()
    return await call_with_permit(breaker, permit, fn, timeout=timeout, provider=provider)


async def call_with_permit(
    breaker: CircuitBreaker,
    permit: Permit,
    fn: Callable[[], Awaitable[T]],
    *,
    timeout: float,  # noqa: ASYNC109
    provider: str,
) -> T:
    """Like `call_with_breaker`, with a permit the caller took earlier.

    For callers that must hold the permit across other awaits before the call (e.g. while they
    reserve a provider slot), so that no other coroutine takes the last half-open probe meanwhile.
    The permit is settled on every path.
    """
    try:
        async with asyncio.timeout(timeout):
            result = await fn()
    except TimeoutError as exc:  # ours, or one `fn` let through: the provider did not answer
        breaker.record_failure(permit)
        raise timeout_error(provider, f"{provider} gave no answer within {timeout:g}s") from exc
    except TransientError:
        breaker.record_failure(permit)
        raise
    except PermanentError:
        breaker.record_success(permit)
        raise
    except BaseException:
        # Cancelled, or failed in our own code: says nothing about the provider's health.
        breaker.release(permit)
        raise
    breaker.record_success(permit)
    return result
