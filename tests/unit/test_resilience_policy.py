"""RetryPolicy: retry transient errors until the attempt limit, honour a capped Retry-After."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.resilience import (
    Backoff,
    ErrorClass,
    GiveUp,
    PermanentError,
    Retry,
    RetryPolicy,
    TransientError,
    error_from_status,
)


def constant(value: float) -> Callable[[], float]:
    return lambda: value


half = constant(0.5)


def transient(retry_after: float | None = None) -> TransientError:
    return TransientError(
        "slow down",
        provider="fal",
        error_class=ErrorClass.RATE_LIMITED,
        status_code=429,
        retry_after=retry_after,
    )


def test_retries_until_max_then_gives_up_recoverable() -> None:
    policy = RetryPolicy()  # video seed: 3 retries, 4 attempts
    decisions = [policy.decide(transient(), attempt, rng=half) for attempt in range(1, 5)]
    assert decisions[:3] == [
        Retry(delay=0.5, reason="fal rate_limited 429; retry 1 of 3"),
        Retry(delay=1.0, reason="fal rate_limited 429; retry 2 of 3"),
        Retry(delay=2.0, reason="fal rate_limited 429; retry 3 of 3"),
    ]
    assert decisions[3] == GiveUp(
        recoverable=True, reason="retries exhausted: fal rate_limited 429 on attempt 4 of 4"
    )


def test_permanent_error_gives_up_at_once_not_recoverable() -> None:
    error = PermanentError("no", provider="openai", error_class=ErrorClass.AUTH, status_code=401)
    decision = RetryPolicy().decide(error, 1)
    assert decision == GiveUp(recoverable=False, reason="permanent error: openai auth 401")


def test_insufficient_quota_is_not_retried() -> None:
    error = error_from_status("openai", 429, "quota", code="insufficient_quota")
    decision = RetryPolicy().decide(error, 1)
    assert isinstance(decision, GiveUp) and not decision.recoverable


def test_max_attempts_overrides_the_backoff_limit() -> None:
    policy = RetryPolicy()
    assert isinstance(policy.decide(transient(), 4, max_attempts=10, rng=half), Retry)
    assert isinstance(policy.decide(transient(), 9, max_attempts=10, rng=half), Retry)
    assert isinstance(policy.decide(transient(), 10, max_attempts=10, rng=half), GiveUp)
    assert isinstance(policy.decide(transient(), 1, max_attempts=1), GiveUp)


def test_later_retries_stay_under_the_cap() -> None:
    decision = RetryPolicy().decide(transient(), 9, max_attempts=10, rng=constant(0.999))
    assert isinstance(decision, Retry)
    assert decision.delay == pytest.approx(30 * 0.999)


def test_retry_after_longer_than_backoff_wins() -> None:
    decision = RetryPolicy().decide(transient(retry_after=7.0), 1, rng=half)
    assert decision == Retry(
        delay=7.0, reason="fal rate_limited 429; retry 1 of 3 after Retry-After 7.0s"
    )


def test_backoff_longer_than_retry_after_wins() -> None:
    policy = RetryPolicy(backoff=Backoff(initial=20.0))
    decision = policy.decide(transient(retry_after=1.0), 1, rng=half)
    assert decision == Retry(delay=10.0, reason="fal rate_limited 429; retry 1 of 3")


def test_retry_after_is_capped() -> None:
    decision = RetryPolicy(max_retry_after=60.0).decide(transient(retry_after=3600.0), 1, rng=half)
    assert isinstance(decision, Retry) and decision.delay == 60.0


def test_retry_after_does_not_make_a_permanent_error_retryable() -> None:
    error = error_from_status("openai", 400, "bad", {"retry-after": "1"})
    assert RetryPolicy().decide(error, 1) == GiveUp(
        recoverable=False, reason="permanent error: openai bad_request 400"
    )


def test_error_without_status_is_described_without_one() -> None:
    error = TransientError("t", provider="fal", error_class=ErrorClass.TIMEOUT)
    decision = RetryPolicy().decide(error, 1, rng=half)
    assert decision == Retry(delay=0.5, reason="fal timeout; retry 1 of 3")


def test_delays_are_within_bounds_for_every_attempt() -> None:
    # Property-style sweep: for any attempt, jitter draw and Retry-After, the delay is bounded by
    # max(backoff ceiling, capped Retry-After) and never negative.
    policy = RetryPolicy(max_retry_after=50.0)
    for attempt in range(1, 10):
        for draw in (0.0, 0.25, 0.5, 0.999):
            for retry_after in (None, 0.0, 3.0, 45.0, 500.0):
                decision = policy.decide(
                    transient(retry_after), attempt, max_attempts=10, rng=constant(draw)
                )
                assert isinstance(decision, Retry)
                ceiling = policy.backoff.ceiling(attempt)
                floor = 0.0 if retry_after is None else min(retry_after, 50.0)
                assert floor <= decision.delay <= max(ceiling, floor)


@pytest.mark.parametrize(("attempt", "max_attempts"), [(0, None), (1, 0)])
def test_invalid_arguments(attempt: int, max_attempts: int | None) -> None:
    with pytest.raises(ValueError):
        RetryPolicy().decide(transient(), attempt, max_attempts=max_attempts)


def test_max_retry_after_is_validated() -> None:
    with pytest.raises(ValueError, match="max_retry_after"):
        RetryPolicy(max_retry_after=-1.0)
