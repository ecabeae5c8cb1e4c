"""Delayed delivery over tiered TTL queues: the `x-deliver-at` header and what it means.

A delayed message is parked in the delay queue of `Topology.first_tier(delay, slack)`; when its
TTL expires RabbitMQ dead-letters it, with its original routing key, back onto its work queue.
The consumer then reads `x-deliver-at`: still in the future beyond the tolerance (or the hold,
while the consumer has room), it is parked again in the next tier; otherwise the rest is waited
out and the handler runs. Delays therefore live in RabbitMQ and survive a
crash of every process, and a short delay is never stuck behind a long one (each tier has a
single TTL, so expiry order is arrival order).

The due time is wall-clock epoch milliseconds because it is compared across processes and hosts;
clock skew between hosts shifts delivery by the skew, which NTP keeps well below the tiers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import TypeVar

DELIVER_AT_HEADER = "x-deliver-at"

# Headers RabbitMQ adds on every dead-lettering (each delay hop). They are stripped from
# `Incoming.headers` and from re-parked messages, so they neither leak into handlers nor grow.
_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")

log = logging.getLogger(__name__)

V = TypeVar("V")


def deliver_at_ms(delay_seconds: float, now: float | None = None) -> int:
    """Epoch ms at which a message published now with `delay_seconds` is due (rounded up)."""
    wall = time.time() if now is None else now
    return math.ceil((wall + delay_seconds) * 1000.0)


def remaining_seconds(headers: Mapping[str, object], now: float | None = None) -> float:
    """Seconds until the message is due; 0 when it has no (valid) `x-deliver-at` header."""
    due = headers.get(DELIVER_AT_HEADER)
    if due is None:
        return 0.0
    if not isinstance(due, int) or isinstance(due, bool):
        log.warning("ignoring malformed %s header of type %s", DELIVER_AT_HEADER, type(due))
        return 0.0
    wall = time.time() if now is None else now
    return max(due / 1000.0 - wall, 0.0)


def is_internal(name: str) -> bool:
    """True for headers the broker layer owns (delay bookkeeping, RabbitMQ dead-letter trail)."""
    return name == DELIVER_AT_HEADER or name.startswith(_DEATH_HEADERS)


def public_headers(headers: Mapping[str, V]) -> dict[str, V]:
    """The headers a handler should see."""
    return {k: v for k, v in headers.items() if not is_internal(k)}
