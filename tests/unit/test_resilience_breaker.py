"""CircuitBreaker and BreakerRegistry, driven by a fake clock."""

from __future__ import annotations

import logging
import random

import pytest

from common.resilience import (
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    CircuitOpenError,
    Permit,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transitions() -> list[BreakerTransition]:
    return []


def make(
    clock: FakeClock, transitions: list[BreakerTransition] | None = None, **config: float
) -> CircuitBreaker:
    return CircuitBreaker(
        "fal",
        BreakerConfig(**config),  # type: ignore[arg-type]
        clock=clock,
        on_transition=None if transitions is None else transitions.append,
    )


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_success(breaker.acquire())


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.acquire())


def open_breaker(breaker: CircuitBreaker) -> None:
    fail(breaker, breaker.config.consecutive_failures)
    assert breaker.state is OPEN


# --- CLOSED -> OPEN -----------------------------------------------------------------------------


def test_starts_closed_and_lets_calls_through(clock: FakeClock) -> None:
    breaker = make(clock)
    assert breaker.state is CLOSED and breaker.retry_in() == 0.0
    succeed(breaker, 100)
    assert breaker.state is CLOSED


def test_failure_rate_is_judged_only_after_min_calls(
    clock: FakeClock, transitions: list[BreakerTransition]
) -> None:
    breaker = make(clock, transitions, min_calls=10, failure_rate=0.5, consecutive_failures=0)
    for _ in range(4):
        fail(breaker)
        succeed(breaker)
    fail(breaker)  # 5 failures of 9 calls: rate 0.56, but fewer than min_calls
    assert breaker.state is CLOSED
    fail(breaker)  # 6 of 10
    assert breaker.state is OPEN
    assert transitions == [
        BreakerTransition("fal", CLOSED, OPEN, 1000.0, "failure rate 0.60 over 10 calls")
    ]


def test_low_failure_rate_keeps_it_closed(clock: FakeClock) -> None:
    breaker = make(clock, min_calls=10, failure_rate=0.5, consecutive_failures=0)
    for _ in range(50):
        fail(breaker)
        succeed(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["failures"] == 50


def test_opens_on_consecutive_failures(
    clock: FakeClock, transitions: list[BreakerTransition]
) -> None:
    breaker = make(clock, transitions, consecutive_failures=3, min_calls=100)
    fail(breaker, 2)
    succeed(breaker)  # a success resets the run
    fail(breaker, 2)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN
    assert [t.reason for t in transitions] == ["3 consecutive failures"]


def test_zero_disables_the_consecutive_rule(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=0, min_calls=1000)
    fail(breaker, 500)
    assert breaker.state is CLOSED


def test_window_slides_and_old_failures_expire(clock: FakeClock) -> None:
    breaker = make(clock, window_seconds=30, min_calls=10, failure_rate=0.5, consecutive_failures=0)
    fail(breaker, 9)
    clock.advance(30)  # those nine are now exactly one window old: expired
    assert breaker.snapshot()["calls"] == 0
    fail(breaker)  # would be 10 failures of 10 calls if they had not expired
    succeed(breaker, 9)
    assert breaker.state is CLOSED
    clock.advance(29.9)  # the last ten are still inside the window
    fail(breaker, 7)  # 8 failures of 17 calls
    assert breaker.state is CLOSED
    fail(breaker)  # 9 of 18
    assert breaker.state is OPEN


def test_snapshot_reports_plain_values(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=5)
    succeed(breaker, 3)
    fail(breaker, 2)
    assert breaker.snapshot() == {
        "name": "fal",
        "state": "closed",
        "calls": 5,
        "failures": 2,
        "consecutive_failures": 2,
        "retry_in": 0.0,
    }


# --- OPEN ---------------------------------------------------------------------------------------


def test_open_rejects_with_retry_in_counting_down(clock: FakeClock) -> None:
    breaker = make(clock, open_seconds=10)
    open_breaker(breaker)
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert (info.value.name, info.value.retry_in) == ("fal", 10.0)
    clock.advance(4)
    assert breaker.retry_in() == 6.0
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_in == 6.0
    assert breaker.snapshot()["retry_in"] == 6.0
    clock.advance(6)
    assert breaker.retry_in() == 0.0
    assert breaker.state is HALF_OPEN


def test_half_open_is_reached_lazily_on_read(
    clock: FakeClock, transitions: list[BreakerTransition]
) -> None:
    breaker = make(clock, transitions, open_seconds=10)
    open_breaker(breaker)
    clock.advance(25)
    assert len(transitions) == 1  # nothing happens until someone looks
    assert breaker.state is HALF_OPEN
    assert transitions[-1] == BreakerTransition("fal", OPEN, HALF_OPEN, 1025.0, "open for 10.0s")


# --- HALF_OPEN ----------------------------------------------------------------------------------


def half_open(
    clock: FakeClock, transitions: list[BreakerTransition] | None = None
) -> CircuitBreaker:
    breaker = make(clock, transitions, open_seconds=10, half_open_probes=2)
    open_breaker(breaker)
    clock.advance(10)
    assert breaker.state is HALF_OPEN
    return breaker


def test_half_open_lets_exactly_the_probes_through(clock: FakeClock) -> None:
    breaker = half_open(clock)
    probes = [breaker.acquire(), breaker.acquire()]
    assert all(p.state is HALF_OPEN for p in probes)
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_in == 1.0
    assert breaker.retry_in() == 1.0


def test_probe_wait_never_exceeds_open_seconds(clock: FakeClock) -> None:
    breaker = make(clock, open_seconds=0.25, half_open_probes=1)
    open_breaker(breaker)
    clock.advance(0.25)
    breaker.acquire()
    assert breaker.retry_in() == 0.25


def test_closes_when_all_probes_succeed(
    clock: FakeClock, transitions: list[BreakerTransition]
) -> None:
    breaker = half_open(clock, transitions)
    first, second = breaker.acquire(), breaker.acquire()
    breaker.record_success(first)
    assert breaker.state is HALF_OPEN  # one success is not enough
    breaker.record_success(second)
    assert breaker.state is CLOSED
    assert transitions[-1].reason == "probe succeeded"
    snapshot = breaker.snapshot()
    assert (snapshot["calls"], snapshot["failures"], snapshot["consecutive_failures"]) == (0, 0, 0)


def test_probe_failure_reopens_for_a_new_period(
    clock: FakeClock, transitions: list[BreakerTransition]
) -> None:
    breaker = half_open(clock, transitions)
    first, second = breaker.acquire(), breaker.acquire()
    breaker.record_success(first)
    clock.advance(3)
    breaker.record_failure(second)
    assert breaker.state is OPEN
    assert transitions[-1] == BreakerTransition("fal", HALF_OPEN, OPEN, 1013.0, "probe failed")
    assert breaker.retry_in() == 10.0


def test_release_frees_a_probe_slot_without_judging(clock: FakeClock) -> None:
    breaker = half_open(clock)
    first, second = breaker.acquire(), breaker.acquire()
    breaker.release(first)
    assert breaker.state is HALF_OPEN
    third = breaker.acquire()  # the freed slot
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    breaker.record_success(second)
    breaker.record_success(third)
    assert breaker.state is CLOSED


def test_release_while_closed_changes_nothing(clock: FakeClock) -> None:
    breaker = make(clock)
    breaker.release(breaker.acquire())
    assert breaker.snapshot()["calls"] == 0


# --- stale permits ------------------------------------------------------------------------------


def test_closed_era_success_does_not_count_as_a_probe(clock: FakeClock) -> None:
    breaker = make(clock, open_seconds=10, half_open_probes=1)
    old = breaker.acquire()
    open_breaker(breaker)
    clock.advance(10)
    assert breaker.state is HALF_OPEN
    breaker.record_success(old)
    assert breaker.state is HALF_OPEN
    assert breaker.retry_in() == 0.0  # and it took no probe slot


def test_stale_failure_does_not_reopen_a_fresh_half_open(clock: FakeClock) -> None:
    breaker = make(clock, open_seconds=10)
    old = breaker.acquire()
    open_breaker(breaker)
    clock.advance(10)
    breaker.record_failure(old)
    assert breaker.state is HALF_OPEN


def test_stale_failure_does_not_land_in_a_closed_again_window(clock: FakeClock) -> None:
    breaker = make(clock, open_seconds=10, half_open_probes=1)
    old = breaker.acquire()
    open_breaker(breaker)
    clock.advance(10)
    succeed(breaker)
    assert breaker.state is CLOSED
    breaker.record_failure(old)
    assert breaker.snapshot()["failures"] == 0


def test_stale_probe_from_an_earlier_half_open_is_ignored(clock: FakeClock) -> None:
    breaker = half_open(clock)
    stale_probe = breaker.acquire()
    breaker.record_failure(breaker.acquire())  # reopens
    clock.advance(10)
    assert breaker.state is HALF_OPEN
    breaker.record_success(stale_probe)
    assert breaker.state is HALF_OPEN
    assert breaker.retry_in() == 0.0


def test_a_permit_settles_once(clock: FakeClock) -> None:
    breaker = make(clock)
    permit = breaker.acquire()
    breaker.record_success(permit)
    with pytest.raises(RuntimeError, match="twice"):
        breaker.record_failure(permit)
    with pytest.raises(RuntimeError, match="twice"):
        breaker.release(permit)


# --- transitions and callbacks ------------------------------------------------------------------


def test_full_cycle_reports_every_transition_in_order(
    clock: FakeClock, transitions: list[BreakerTransition]
) -> None:
    breaker = half_open(clock, transitions)
    breaker.record_failure(breaker.acquire())
    clock.advance(10)
    succeed(breaker, 2)
    assert [(t.old, t.new, t.reason) for t in transitions] == [
        (CLOSED, OPEN, "5 consecutive failures"),
        (OPEN, HALF_OPEN, "open for 10.0s"),
        (HALF_OPEN, OPEN, "probe failed"),
        (OPEN, HALF_OPEN, "open for 10.0s"),
        (HALF_OPEN, CLOSED, "probe succeeded"),
    ]
    assert all(t.name == "fal" for t in transitions)


def test_callback_exceptions_are_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(transition: BreakerTransition) -> None:
        raise RuntimeError("metrics down")

    breaker = CircuitBreaker(
        "fal", BreakerConfig(consecutive_failures=1), clock=clock, on_transition=explode
    )
    with caplog.at_level(logging.ERROR, logger="common.resilience.breaker"):
        fail(breaker)
    assert breaker.state is OPEN
    assert "on_transition callback failed" in caplog.text


def test_transitions_are_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    breaker = make(clock, consecutive_failures=1)
    with caplog.at_level(logging.INFO, logger="common.resilience.breaker"):
        fail(breaker)
    assert "circuit fal: closed -> open (1 consecutive failures)" in caplog.text


# --- invariants under random traffic ------------------------------------------------------------


def test_random_traffic_keeps_the_invariants(clock: FakeClock) -> None:
    # Property-style: random outcomes, releases and clock steps. Probes out never exceed the
    # limit, OPEN always refuses with a positive wait, and every transition is a legal one.
    legal = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)}
    rng = random.Random(7)
    transitions: list[BreakerTransition] = []
    breaker = make(clock, transitions, min_calls=5, consecutive_failures=4, half_open_probes=3)
    outstanding: list[tuple[Permit, int]] = []  # with the number of transitions seen when taken
    for _ in range(5000):
        clock.advance(rng.choice([0.0, 0.1, 1.0, 5.0]))
        if outstanding and rng.random() < 0.5:
            permit, _ = outstanding.pop(rng.randrange(len(outstanding)))
            settle = rng.choice([breaker.record_success, breaker.record_failure, breaker.release])
            settle(permit)
            continue
        state = breaker.state
        try:
            outstanding.append((breaker.acquire(), len(transitions)))
        except CircuitOpenError as error:
            assert state is not CLOSED and error.retry_in > 0
        if breaker.state is HALF_OPEN:
            current = [p for p, seen in outstanding if seen == len(transitions)]
            assert len(current) <= 3 and all(p.state is HALF_OPEN for p in current)
    assert {(t.old, t.new) for t in transitions} == legal  # every edge was exercised
    assert all((t.old, t.new) in legal for t in transitions)


# --- validation and registry --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window_seconds": 0}, "window_seconds"),
        ({"window_seconds": float("inf")}, "window_seconds"),
        ({"min_calls": 0}, "min_calls"),
        ({"failure_rate": 0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"consecutive_failures": -1}, "consecutive_failures"),
        ({"open_seconds": 0}, "open_seconds"),
        ({"half_open_probes": 0}, "half_open_probes"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_registry_shares_config_clock_and_callback(clock: FakeClock) -> None:
    seen: list[BreakerTransition] = []
    registry = BreakerRegistry(
        BreakerConfig(consecutive_failures=1), clock=clock, on_transition=seen.append
    )
    video = registry.get("fal:kling")
    assert registry.get("fal:kling") is video
    story = registry.get("openai:gpt-4o")
    assert story is not video and story.config is video.config
    fail(video)
    assert [t.name for t in seen] == ["fal:kling"]
    assert registry.get("openai:gpt-4o").state is CLOSED
    snapshot = registry.snapshot()
    assert set(snapshot) == {"fal:kling", "openai:gpt-4o"}
    assert snapshot["fal:kling"]["state"] == "open"
