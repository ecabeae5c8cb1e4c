"""Backoff: exponential ceilings, full jitter, validation."""

from __future__ import annotations

import random

import pytest

from common.resilience import Backoff

ALMOST_ONE = 1.0 - 2**-53  # the largest value random.random() can return


def test_video_seed_is_the_default() -> None:
    backoff = Backoff()
    assert (backoff.initial, backoff.multiplier, backoff.cap, backoff.max_retries) == (1, 2, 30, 3)
    assert [backoff.ceiling(n) for n in range(1, 4)] == [1.0, 2.0, 4.0]


def test_story_seed() -> None:
    backoff = Backoff(initial=2.0)
    assert [backoff.ceiling(n) for n in range(1, 4)] == [2.0, 4.0, 8.0]


def test_ceiling_is_capped() -> None:
    backoff = Backoff(initial=1.0, multiplier=3.0, cap=10.0)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [1.0, 3.0, 9.0, 10.0, 10.0]


def test_huge_retry_number_stays_at_cap() -> None:
    assert Backoff().ceiling(10_000) == 30.0


def test_constant_backoff() -> None:
    backoff = Backoff(initial=0.5, multiplier=1.0)
    assert {backoff.ceiling(n) for n in range(1, 20)} == {0.5}


@pytest.mark.parametrize("retry_number", [1, 2, 3, 8])
def test_full_jitter_bounds(retry_number: int) -> None:
    backoff = Backoff()
    ceiling = backoff.ceiling(retry_number)
    assert backoff.delay(retry_number, rng=lambda: 0.0) == 0.0
    assert backoff.delay(retry_number, rng=lambda: 0.5) == ceiling / 2
    top = backoff.delay(retry_number, rng=lambda: ALMOST_ONE)
    assert ceiling * 0.999 < top < ceiling


def test_jitter_stays_in_range_for_many_draws() -> None:
    rng = random.Random(1234)
    backoff = Backoff(initial=2.0, cap=20.0)
    for retry_number in range(1, 12):
        ceiling = backoff.ceiling(retry_number)
        delays = [backoff.delay(retry_number, rng=rng.random) for _ in range(200)]
        assert all(0.0 <= d < ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # the whole range is used, not just its bottom


def test_retry_number_is_one_based() -> None:
    with pytest.raises(ValueError, match="retry_number"):
        Backoff().ceiling(0)
    with pytest.raises(ValueError, match="retry_number"):
        Backoff().delay(-1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": -1.0}, "initial"),
        ({"initial": float("nan")}, "initial"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": float("inf")}, "multiplier"),
        ({"cap": 0.5}, "cap"),
        ({"cap": float("inf")}, "cap"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Backoff(**kwargs)  # type: ignore[arg-type]
