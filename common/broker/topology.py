"""Names and shape of the broker topology: work queues, delay tiers, dead letters, progress.

Everything is derived from one `prefix`, so several stacks (or parallel tests) can share one
RabbitMQ without seeing each other's messages. The work queues are whatever the application
registers (one per task kind's queue); the broker knows nothing of what travels on them.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")

# From 50 ms to 30 min, roughly x2-x5 apart: any delay up to 30 min takes a handful of hops, and
# a delay longer than the last tier simply repeats it.
DEFAULT_DELAY_TIERS_MS: tuple[int, ...] = (
    50,
    100,
    250,
    500,
    1000,
    2000,
    5000,
    10_000,
    30_000,
    60_000,
    300_000,
    1_800_000,
)


@dataclass(frozen=True)
class Topology:
    """Every queue and exchange name the brokers use, plus the delay-tier policy.

    `delay_tolerance_ms`: a delayed message whose remaining delay is at most this is delivered
    (after waiting out the rest in-process) instead of taking one more tier hop. None: the
    smallest tier, so a remainder is never rounded up to a whole tier: with a 15 ms tolerance a
    remainder of 15-50 ms (most last hops) was parked 50 ms, up to 35 ms late (`bench --only
    delays`: mean lateness 18.1 ms with a 15 ms tolerance, 1.9 ms with this one).

    `delay_hold_ms`: a consumer with room (see `AmqpConsumer`) waits out a remainder up to this
    itself too, instead of hopping through the smaller tiers. Each hop is a delivery, a
    confirmed publish and an ack for the consumer, and a dead-lettering for RabbitMQ: a poll
    due in 0.23 s was published into the 100 ms tier and parked there once more, one learned
    to be due in 1.9 s into the 1 s tier, then parked in the 500, 250 and 100 ms tiers;
    `bench --only delays`: 1.71 hops per message without the hold, 0.58 with it. A publisher
    does not count on the consumer's room: it still publishes into the largest tier within
    the delay (`first_tier`; a longer one only within a message's slack, where the tier below
    would leave more than the hold), so a consumer with no room left parks a message no more
    often than without a hold.
    """

    prefix: str = "orchestrator"
    # Work queues, by their name after the prefix.
    queues: tuple[str, ...] = ()
    delay_tiers_ms: tuple[int, ...] = DEFAULT_DELAY_TIERS_MS
    max_priority: int = 10
    delay_tolerance_ms: int | None = None
    delay_hold_ms: int = 250

    def __post_init__(self) -> None:
        if not self.prefix:
            raise ValueError("Topology.prefix must not be empty")
        if len(set(self.queues)) != len(self.queues) or not all(
            _QUEUE_NAME.fullmatch(q) for q in self.queues
        ):
            raise ValueError(f"Topology.queues must be unique plain names, got {self.queues}")
        tiers = self.delay_tiers_ms
        if not tiers or any(t <= 0 for t in tiers) or list(tiers) != sorted(set(tiers)):
            raise ValueError(
                f"Topology.delay_tiers_ms must be positive, unique and ascending, got {tiers}"
            )
        if not 1 <= self.max_priority <= 255:
            raise ValueError(f"Topology.max_priority must be 1..255, got {self.max_priority}")
        if self.delay_tolerance_ms is not None and self.delay_tolerance_ms < 0:
            raise ValueError("Topology.delay_tolerance_ms must not be negative")
        if self.delay_hold_ms < 0:
            raise ValueError("Topology.delay_hold_ms must not be negative")

    def work_queue(self, q: str) -> str:
        return f"{self.prefix}.{q}"

    def delay_queue(self, tier_ms: int) -> str:
        return f"{self.prefix}.delay.{tier_ms}ms"

    def delay_exchange(self, tier_ms: int) -> str:
        # Exchanges and queues live in separate namespaces: sharing the name makes the pair
        # obvious in the management UI.
        return self.delay_queue(tier_ms)

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def progress_exchange(self) -> str:
        return f"{self.prefix}.progress"

    @property
    def tolerance_ms(self) -> int:
        """`delay_tolerance_ms`, or the smallest tier when it is None."""
        if self.delay_tolerance_ms is None:
            return self.delay_tiers_ms[0]
        return self.delay_tolerance_ms

    def next_tier(self, remaining_seconds: float, *, hold: bool = False) -> int | None:
        """The delay tier (ms) to park a message in, or None to deliver it now (the rest,
        at most the tolerance, or the hold when `hold`, waited out in-process).

        The largest tier that does not overshoot the remaining delay, so a message is never
        parked past its due time; below the smallest tier (but above a tolerance set lower than
        it) the smallest tier, accepting that much lateness rather than early delivery.
        """
        remaining_ms = remaining_seconds * 1000.0
        if remaining_ms <= self._waited_out_ms(hold=hold):
            return None
        index = bisect.bisect_right(self.delay_tiers_ms, remaining_ms)
        return self.delay_tiers_ms[max(index - 1, 0)]

    def _waited_out_ms(self, *, hold: bool) -> int:
        """The longest remainder a consumer waits out itself: the tolerance, or the hold too."""
        return max(self.tolerance_ms, self.delay_hold_ms) if hold else self.tolerance_ms

    def first_tier(self, delay: float, slack: float = 0.0) -> tuple[int | None, float]:
        """Where to publish a message delayed `delay` s that may come up to `slack` s later:
        its tier (None: straight to its work queue) and the delay it then has.

        `next_tier`, unless what that tier leaves is more than a consumer's hold would wait
        out and a tier at most the slack, and at most the smallest tier, longer than the delay
        exists: then that tier, one hop instead of a chain. A slack taken is lateness, so it is
        taken only where it saves hops, and never more than the smallest tier: a poll pulled in
        to keep its rhythm (its slack: how late the check before it ran) then falls at most
        that far behind its rhythm before a late check's slack is too large and the exact path
        (the chain, then a hold) brings it back on time."""
        tier = self.next_tier(delay)
        if tier is None or slack <= 0 or delay * 1000.0 - tier <= self._waited_out_ms(hold=True):
            return tier, delay
        tiers = self.delay_tiers_ms
        whole = bisect.bisect_left(tiers, delay * 1000.0)  # the shortest tier not under it
        late = min(slack * 1000.0, tiers[0])
        if whole < len(tiers) and tiers[whole] <= delay * 1000.0 + late:
            return tiers[whole], tiers[whole] / 1000.0
        return tier, delay

    def queue_names(self) -> list[str]:
        """Every queue of this topology (progress queues are exclusive and delete themselves)."""
        return [
            *(self.work_queue(q) for q in self.queues),
            *(self.delay_queue(t) for t in self.delay_tiers_ms),
            self.dead_letter_queue,
        ]

    def exchange_names(self) -> list[str]:
        """Every exchange of this topology (the default exchange is not one of them)."""
        return [
            *(self.delay_exchange(t) for t in self.delay_tiers_ms),
            self.dead_letter_exchange,
            self.progress_exchange,
        ]
