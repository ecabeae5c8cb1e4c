"""How long a task whose submit was cut off waits for the provider's webhook (guards)."""

from __future__ import annotations

from common.attempts.guards import adopt_window


def test_an_unknown_model_waits_the_whole_configured_window() -> None:
    assert adopt_window(300.0, 0.0) == 300.0


def test_a_fast_model_waits_a_few_of_its_attempts_not_five_minutes() -> None:
    # A 2 s model: a webhook for a request fal did accept comes within seconds; one fal never
    # received never comes, and the task is submitted again after 16 s, not 300 s.
    assert adopt_window(300.0, 2.0) == 16.0


def test_a_slow_model_never_waits_past_the_configured_window() -> None:
    assert adopt_window(300.0, 240.0) == 300.0
    assert adopt_window(5.0, 2.0) == 5.0
