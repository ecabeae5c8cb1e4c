"""Fault decisions: one engine for every endpoint, decided before a call is processed.

Precedence: an active outage, then an active 429 storm, then the first matching rule, then the
random rates. Every
random draw comes from the simulator's seeded RNG, so a run with the same seed and the same
call sequence injects the same faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from services.simulator.config import (
    Clock,
    Endpoint,
    FaultGroup,
    Outage,
    Rule,
    Storm,
    applies_to,
)

FaultSource = Literal["outage", "storm", "rule", "rate"]


@dataclass(frozen=True)
class Fault:
    """What to do to one call instead of (or on top of) answering it normally."""

    kind: str
    source: FaultSource
    retry_after: float | None = None
    code: str | None = None
    ingress: bool = False

    @property
    def label(self) -> str:
        """How stats name it: the kind, or "outage" / "storm" for a call refused by a window."""
        return self.source if self.source in ("outage", "storm") else self.kind

    @property
    def status(self) -> int | None:
        """The HTTP status of an error fault; None for named kinds."""
        return int(self.kind) if self.kind.isdigit() else None


@dataclass(frozen=True)
class _Window:
    starts_at: float
    ends_at: float
    outage: Outage


class FaultEngine:
    """Holds the live fault configuration with its runtime state (outage anchors, rule counts)."""

    def __init__(self, rng: random.Random, clock: Clock) -> None:
        self._rng = rng
        self._clock = clock
        self._groups: list[FaultGroup] = []
        self._windows: list[_Window] = []
        self._storms: list[tuple[float, float, Storm]] = []
        self._rules: list[Rule] = []
        self._fired: list[int] = []

    def set_groups(self, groups: list[FaultGroup]) -> None:
        self._groups = list(groups)

    def set_outages(self, outages: list[Outage]) -> None:
        """Anchor outages now: their `start` is relative to the moment they are configured."""
        now = self._clock()
        self._windows = [_Window(now + o.start, now + o.start + o.duration, o) for o in outages]

    def set_storms(self, storms: list[Storm]) -> None:
        """Anchor 429 storms now, like outages."""
        now = self._clock()
        self._storms = [(now + s.start, now + s.start + s.duration, s) for s in storms]

    def set_rules(self, rules: list[Rule]) -> None:
        """Replace the rules; their `times` budgets start afresh."""
        self._rules = list(rules)
        self._fired = [0] * len(rules)

    def rule_fired(self) -> list[int]:
        """How often each configured rule has fired, in configuration order."""
        return list(self._fired)

    def decide(self, endpoint: Endpoint, match_text: str) -> Fault | None:
        """The fault for one call, or None to answer it normally."""
        return (
            self._outage(endpoint)
            or self._storm(endpoint)
            or self._rule(endpoint, match_text)
            or self._random(endpoint)
        )

    def _outage(self, endpoint: Endpoint) -> Fault | None:
        now = self._clock()
        for window in self._windows:
            outage = window.outage
            if window.starts_at <= now < window.ends_at and endpoint in outage.endpoints:
                return Fault(outage.kind, "outage", outage.retry_after, ingress=outage.ingress)
        return None

    def _storm(self, endpoint: Endpoint) -> Fault | None:
        now = self._clock()
        for starts_at, ends_at, storm in self._storms:
            if starts_at <= now < ends_at and endpoint in storm.covers:
                return Fault("429", "storm", storm.retry_after)
        return None

    def _rule(self, endpoint: Endpoint, match_text: str) -> Fault | None:
        for index, rule in enumerate(self._rules):
            if rule.endpoint != endpoint or rule.match not in match_text:
                continue
            if rule.times is not None and self._fired[index] >= rule.times:
                continue
            self._fired[index] += 1
            return Fault(rule.fault, "rule", rule.retry_after, rule.code, rule.ingress)
        return None

    def _random(self, endpoint: Endpoint) -> Fault | None:
        for group in self._groups:
            if endpoint not in group.endpoints:
                continue
            candidates = [
                (kind, rate)
                for kind, rate in group.rates.items()
                if rate > 0 and applies_to(kind, endpoint)
            ]
            # No draw when nothing can fire: zero rates leave the RNG sequence untouched.
            if not candidates:
                continue
            draw = self._rng.random()
            threshold = 0.0
            for kind, rate in candidates:
                threshold += rate
                if draw < threshold:
                    return Fault(kind, "rate", group.retry_after, ingress=group.ingress)
        return None
