"""call_with_breaker: how each outcome of a provider call is reported to the breaker."""

from __future__ import annotations

import asyncio

import pytest

from common.resilience import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    ErrorClass,
    PermanentError,
    TransientError,
    call_with_breaker,
    error_from_status,
)

TIMEOUT = 0.02  # seconds; only the timeout test waits this long


def breaker(**config: int) -> CircuitBreaker:
    # The clock stands still: these tests are about outcomes, not time.
    return CircuitBreaker("fal", BreakerConfig(**config), clock=lambda: 0.0)


def calls(b: CircuitBreaker) -> tuple[object, object]:
    snapshot = b.snapshot()
    return snapshot["calls"], snapshot["failures"]


async def test_success_returns_the_result_and_counts_a_success() -> None:
    b = breaker()

    async def call() -> str:
        return "video.mp4"

    assert await call_with_breaker(b, call, timeout=TIMEOUT, provider="fal") == "video.mp4"
    assert calls(b) == (1, 0)


async def test_transient_error_counts_a_failure_and_propagates() -> None:
    b = breaker(consecutive_failures=1)
    error = error_from_status("fal", 503, "unavailable")

    async def call() -> None:
        raise error

    with pytest.raises(TransientError) as info:
        await call_with_breaker(b, call, timeout=TIMEOUT, provider="fal")
    assert info.value is error
    assert b.state is BreakerState.OPEN


async def test_permanent_error_counts_a_success_and_propagates() -> None:
    b = breaker(consecutive_failures=1)

    async def call() -> None:
        raise error_from_status("fal", 400, "bad prompt")

    with pytest.raises(PermanentError):
        await call_with_breaker(b, call, timeout=TIMEOUT, provider="fal")
    assert b.state is BreakerState.CLOSED
    assert calls(b) == (1, 0)


async def test_timeout_becomes_a_transient_timeout_error() -> None:
    b = breaker(consecutive_failures=1)
    never = asyncio.Event()

    async def call() -> None:
        await never.wait()

    with pytest.raises(TransientError) as info:
        await call_with_breaker(b, call, timeout=TIMEOUT, provider="fal")
    assert info.value.error_class is ErrorClass.TIMEOUT
    assert info.value.provider == "fal"
    assert "0.02s" in info.value.message
    assert isinstance(info.value.__cause__, TimeoutError)
    assert b.state is BreakerState.OPEN


async def test_cancellation_releases_the_probe_and_propagates() -> None:
    clock = [0.0]
    b = CircuitBreaker(
        "fal", BreakerConfig(consecutive_failures=1, half_open_probes=1), clock=lambda: clock[0]
    )
    b.record_failure(b.acquire())
    clock[0] = 10.0
    assert b.state is BreakerState.HALF_OPEN
    started, never = asyncio.Event(), asyncio.Event()

    async def call() -> None:
        started.set()
        await never.wait()

    task = asyncio.create_task(call_with_breaker(b, call, timeout=60, provider="fal"))
    await started.wait()
    assert b.retry_in() > 0  # the only probe is out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is BreakerState.HALF_OPEN
    assert b.retry_in() == 0.0  # released, not judged


async def test_unexpected_exception_releases_without_judging() -> None:
    b = breaker(consecutive_failures=1)

    async def call() -> None:
        raise KeyError("bug in our adapter")

    with pytest.raises(KeyError):
        await call_with_breaker(b, call, timeout=TIMEOUT, provider="fal")
    assert b.state is BreakerState.CLOSED
    assert calls(b) == (0, 0)


async def test_open_breaker_refuses_without_calling() -> None:
    b = breaker(consecutive_failures=1)
    b.record_failure(b.acquire())
    called = False

    async def call() -> None:
        nonlocal called
        called = True

    with pytest.raises(CircuitOpenError) as info:
        await call_with_breaker(b, call, timeout=TIMEOUT, provider="fal")
    assert info.value.retry_in == 10.0
    assert not called


@pytest.mark.parametrize("timeout", [0, -1.0])
async def test_timeout_must_be_positive(timeout: float) -> None:
    async def call() -> None:
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="timeout"):
        await call_with_breaker(breaker(), call, timeout=timeout, provider="fal")
