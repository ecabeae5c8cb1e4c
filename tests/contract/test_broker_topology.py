"""Pure checks of the topology policy: names, and how delays are split into tier hops."""

from __future__ import annotations

import pytest

from common.broker import DEFAULT_DELAY_TIERS_MS, Outgoing, Topology
from common.broker.delays import DELIVER_AT_HEADER, deliver_at_ms, public_headers, remaining_seconds


def test_names_derive_from_the_prefix() -> None:
    t = Topology(prefix="p", queues=("video.segment", "story.set"))
    assert t.work_queue("video.segment") == "p.video.segment"
    assert t.work_queue("story.set") == "p.story.set"
    assert t.delay_queue(250) == "p.delay.250ms"
    assert all(name.startswith("p.") for name in t.queue_names() + t.exchange_names())
    assert len(t.queue_names()) == len(t.queues) + len(DEFAULT_DELAY_TIERS_MS) + 1
    assert t.progress_exchange in t.exchange_names()


@pytest.mark.parametrize(
    ("remaining", "tier"),
    [
        (0.0, None),
        (0.015, None),  # within the tolerance (the smallest tier): deliver now, after
        (0.05, None),  # waiting out the rest in-process, never rounded up to a tier
        (0.051, 50),
        (0.3, 250),  # the largest tier that does not overshoot
        (1.3, 1000),
        (1.0, 1000),
        (7200.0, 1_800_000),  # beyond the last tier: repeat it
    ],
)
def test_next_tier_never_overshoots(remaining: float, tier: int | None) -> None:
    assert Topology().next_tier(remaining) == tier


def test_a_tolerance_below_the_smallest_tier_parks_the_rest_there() -> None:
    t = Topology(delay_tolerance_ms=15)
    assert (t.next_tier(0.015), t.next_tier(0.02)) == (None, 50)


@pytest.mark.parametrize(
    ("remaining", "tier"),
    [
        (0.13, None),  # a consumer with room waits out a remainder within the hold itself
        (0.25, None),
        (0.26, 250),  # beyond it: the largest tier that does not overshoot, as without
        (1.9, 1000),
    ],
)
def test_a_hold_waits_out_what_is_left_within_it(remaining: float, tier: int | None) -> None:
    assert Topology(delay_hold_ms=250).next_tier(remaining, hold=True) == tier


def test_no_hold_without_room_or_when_publishing() -> None:
    assert Topology(delay_hold_ms=250).next_tier(0.13) == 100
    assert Topology(delay_hold_ms=0).next_tier(0.03, hold=True) is None  # the tolerance stays


@pytest.mark.parametrize(
    ("delay", "slack", "first"),
    [
        (29.99, 0.01, (30_000, 30.0)),  # a poll's 10 ms commit: one tier, not seven hops
        (29.99, 0.0, (10_000, 29.99)),
        (4.97, 0.05, (5000, 5.0)),
        (4.9, 0.5, (2000, 4.9)),  # at most the smallest tier late, whatever the slack
        (4.9, 0.05, (2000, 4.9)),  # no tier within the slack
        (0.23, 0.02, (100, 0.23)),  # the 130 ms left a consumer waits out: no lateness
        (0.6, 0.5, (500, 0.6)),  # likewise the 100 ms after 500
        (0.04, 0.01, (None, 0.04)),  # within the tolerance: straight to the work queue
    ],
)
def test_a_tier_within_the_slack_is_taken_where_it_saves_hops(
    delay: float, slack: float, first: tuple[int | None, float]
) -> None:
    assert Topology(delay_hold_ms=250).first_tier(delay, slack) == first


def test_a_slack_must_be_a_finite_non_negative_number() -> None:
    with pytest.raises(ValueError, match="slack"):
        Outgoing("q", b"x", delay=1.0, slack=-0.1)


def test_a_long_delay_takes_few_hops() -> None:
    t, remaining, hops = Topology(), 1799.9, 0
    while (tier := t.next_tier(remaining)) is not None:
        remaining -= tier / 1000
        hops += 1
    assert hops <= 20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": ""},
        {"delay_tiers_ms": ()},
        {"delay_tiers_ms": (100, 50)},
        {"delay_tiers_ms": (0, 50)},
        {"max_priority": 0},
        {"delay_hold_ms": -1},
    ],
)
def test_invalid_topologies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Topology(**kwargs)  # type: ignore[arg-type]


def test_deliver_at_round_trip_and_internal_headers_are_hidden() -> None:
    due = deliver_at_ms(2.0, now=1000.0)
    assert due == 1_002_000
    headers = {DELIVER_AT_HEADER: due, "x-death": [], "x-first-death-queue": "q", "job": "j"}
    assert remaining_seconds(headers, now=1000.5) == pytest.approx(1.5)
    assert remaining_seconds(headers, now=1003.0) == 0.0
    assert remaining_seconds({DELIVER_AT_HEADER: "soon"}) == 0.0
    assert public_headers(headers) == {"job": "j"}
