"""Circuit breaker: stop calling a failing provider, probe it after a pause, resume when it answers.

    CLOSED ──(failure rate >= failure_rate over window_seconds, with >= min_calls calls,
      ▲        or consecutive_failures failures in a row)──────────▶ OPEN ◀──────────┐
      │                                                               │              │
      │                                              open_seconds elapsed     any probe fails
      │                                              (checked when read)      (new open period)
      │                                                               ▼              │
      └──────────(all half_open_probes probes succeed)──────────── HALF_OPEN ───────┘

Callers take a `Permit` with `acquire()` before each call and settle it exactly once:
`record_failure` for a transient provider failure (timeout, connection error, 429, 5xx);
`record_success` for an answer, including a permanent 4xx: the provider is up and answering, and
a bad request is ours to fix, not a sign of an outage; `release` when the outcome says nothing
about the provider (the call was cancelled, or our own code failed). `guard.call_with_breaker`
applies these rules.

Stale permits: every transition starts a new period, and a permit's outcome counts only in the
period it was acquired in. A call that started before the circuit opened and finishes later is
ignored: its success cannot close a half-open circuit, its failure cannot reopen a fresh one, and
neither lands in the window of a circuit that closed since.

Not thread-safe, by design: a breaker belongs to one event loop and none of its methods awaits,
so no lock is needed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from common.resilience.errors import CircuitOpenError

logger = logging.getLogger(__name__)


class BreakerState(StrEnum):
    """State of a circuit breaker; the allowed moves are in `_ALLOWED`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_ALLOWED: Mapping[BreakerState, frozenset[BreakerState]] = MappingProxyType(
    {
        BreakerState.CLOSED: frozenset({BreakerState.OPEN}),
        BreakerState.OPEN: frozenset({BreakerState.HALF_OPEN}),
        BreakerState.HALF_OPEN: frozenset({BreakerState.CLOSED, BreakerState.OPEN}),
    }
)

_PROBE_WAIT = 1.0
"""Longest wait suggested while half-open probes are out: they settle within one call timeout."""


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds of a breaker. Times are in seconds of the breaker's clock."""

    window_seconds: float = 30.0
    """Length of the sliding window the failure rate is computed over."""
    min_calls: int = 10
    """Calls needed in the window before the failure rate is judged."""
    failure_rate: float = 0.5
    """Open when failures / calls in the window reaches this (with at least min_calls calls)."""
    consecutive_failures: int = 5
    """Open after this many failures in a row, whatever the rate; 0 disables the rule."""
    open_seconds: float = 10.0
    """How long the circuit stays open before letting probes through."""
    half_open_probes: int = 2
    """Calls let through while half-open; all must succeed to close the circuit."""

    def __post_init__(self) -> None:
        for name in ("window_seconds", "open_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.min_calls < 1:
            raise ValueError(f"min_calls must be >= 1, got {self.min_calls!r}")
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], got {self.failure_rate!r}")
        if self.consecutive_failures < 0:
            raise ValueError(
                f"consecutive_failures must be >= 0, got {self.consecutive_failures!r}"
            )
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be >= 1, got {self.half_open_probes!r}")


@dataclass(frozen=True)
class BreakerTransition:
    """A state change, reported to `on_transition`; `at` is a reading of the breaker's clock
    (monotonic by default, so not a wall-clock time)."""

    name: str
    old: BreakerState
    new: BreakerState
    at: float
    reason: str


class Permit:
    """Permission for one call; settle it exactly once, on the breaker that issued it."""

    __slots__ = ("_period", "_settled", "state")

    def __init__(self, state: BreakerState, period: int) -> None:
        self.state = state  # the state it was acquired in: HALF_OPEN means the call is a probe
        self._period = period
        self._settled = False


class CircuitBreaker:
    """A circuit breaker for one provider (or one provider's model); see the module docstring."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig = BreakerConfig(),
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._period = 0
        self._window: deque[tuple[float, bool]] = deque()  # (time, failed), oldest first
        self._window_failures = 0
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0

    @property
    def state(self) -> BreakerState:
        """The current state; OPEN turns HALF_OPEN here once open_seconds have passed."""
        self._refresh(self._clock())
        return self._state

    def acquire(self) -> Permit:
        """A permit for one call, or CircuitOpenError when the breaker refuses it."""
        wait = self._retry_in(self._clock())
        if wait > 0:
            raise CircuitOpenError(self.name, wait)
        if self._state is BreakerState.HALF_OPEN:
            self._probes_in_flight += 1
        return Permit(self._state, self._period)

    def retry_in(self) -> float:
        """Seconds until a call may be let through; 0 when `acquire` would succeed now."""
        return self._retry_in(self._clock())

    def record_success(self, permit: Permit) -> None:
        """The call got an answer: the provider is healthy."""
        if not self._settle(permit):
            return
        if self._state is BreakerState.CLOSED:
            self._add_to_window(self._clock(), failed=False)
            self._consecutive_failures = 0
            return
        # HALF_OPEN: no permit is issued while OPEN, and a transition makes older permits stale.
        self._probes_in_flight -= 1
        self._probe_successes += 1
        if self._probe_successes >= self.config.half_open_probes:
            self._transition(BreakerState.CLOSED, "probe succeeded", self._clock())

    def record_failure(self, permit: Permit) -> None:
        """The call failed in a way that says the provider is unwell (transient errors only)."""
        if not self._settle(permit):
            return
        now = self._clock()
        if self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.OPEN, "probe failed", now)
            return
        self._add_to_window(now, failed=True)
        self._consecutive_failures += 1
        reason = self._trip_reason()
        if reason is not None:
            self._transition(BreakerState.OPEN, reason, now)

    def release(self, permit: Permit) -> None:
        """Give the permit back unjudged (cancelled call, our own bug): frees a probe slot."""
        if self._settle(permit) and self._state is BreakerState.HALF_OPEN:
            self._probes_in_flight -= 1

    def snapshot(self) -> dict[str, object]:
        """Plain values for metrics and logs."""
        now = self._clock()
        retry_in = self._retry_in(now)
        self._prune(now)
        return {
            "name": self.name,
            "state": self._state.value,
            "calls": len(self._window),
            "failures": self._window_failures,
            "consecutive_failures": self._consecutive_failures,
            "retry_in": retry_in,
        }

    def _retry_in(self, now: float) -> float:
        self._refresh(now)
        if self._state is BreakerState.OPEN:
            return self._opened_at + self.config.open_seconds - now
        probes_taken = self._probes_in_flight + self._probe_successes
        if self._state is BreakerState.HALF_OPEN and probes_taken >= self.config.half_open_probes:
            return min(self.config.open_seconds, _PROBE_WAIT)
        return 0.0

    def _refresh(self, now: float) -> None:
        open_for = self.config.open_seconds
        if self._state is BreakerState.OPEN and now >= self._opened_at + open_for:
            self._transition(BreakerState.HALF_OPEN, f"open for {open_for:.1f}s", now)

    def _settle(self, permit: Permit) -> bool:
        """Mark the permit used; True when its outcome counts (acquired in this period)."""
        if permit._settled:
            raise RuntimeError(f"permit of breaker {self.name!r} settled twice")
        permit._settled = True
        return permit._period == self._period

    def _add_to_window(self, now: float, *, failed: bool) -> None:
        self._prune(now)
        self._window.append((now, failed))
        self._window_failures += failed

    def _prune(self, now: float) -> None:
        horizon = now - self.config.window_seconds
        while self._window and self._window[0][0] <= horizon:
            _, failed = self._window.popleft()
            self._window_failures -= failed

    def _trip_reason(self) -> str | None:
        config = self.config
        if 0 < config.consecutive_failures <= self._consecutive_failures:
            return f"{self._consecutive_failures} consecutive failures"
        calls = len(self._window)
        if calls >= config.min_calls:
            rate = self._window_failures / calls
            if rate >= config.failure_rate:
                return f"failure rate {rate:.2f} over {calls} calls"
        return None

    def _transition(self, new: BreakerState, reason: str, now: float) -> None:
        old = self._state
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"illegal breaker transition {old} -> {new}")
        self._state = new
        self._period += 1
        if new is BreakerState.OPEN:
            self._opened_at = now
        elif new is BreakerState.HALF_OPEN:
            self._probes_in_flight = self._probe_successes = 0
        else:
            self._window.clear()
            self._window_failures = self._consecutive_failures = 0
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        logger.log(level, "circuit %s: %s -> %s (%s)", self.name, old, new, reason)
        if self._on_transition is not None:
            try:
                self._on_transition(BreakerTransition(self.name, old, new, now, reason))
            except Exception:
                # A failing metrics or event hook must not leave the breaker half-updated.
                logger.exception("on_transition callback failed for circuit %s", self.name)
