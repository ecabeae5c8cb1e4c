"""The process's circuit breakers, one per provider (or provider and model)."""

from __future__ import annotations

import time
from collections.abc import Callable

from common.resilience.breaker import BreakerConfig, BreakerTransition, CircuitBreaker

_DEFAULT_CONFIG = BreakerConfig()


class BreakerRegistry:
    """The process's breakers by name (a provider, or provider and model), created on first use
    with a shared config, clock and transition callback."""

    def __init__(
        self,
        config: BreakerConfig = _DEFAULT_CONFIG,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_transition = on_transition
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        """The breaker called `name`, created closed on first use."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                name, self._config, clock=self._clock, on_transition=self._on_transition
            )
            self._breakers[name] = breaker
        return breaker

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Every breaker's snapshot, by name."""
        return {name: breaker.snapshot() for name, breaker in self._breakers.items()}
