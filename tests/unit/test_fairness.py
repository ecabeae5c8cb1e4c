"""Fair shares and shared provider budgets, as pure rules."""

from __future__ import annotations

import itertools

import pytest

from common.domain.scheduling import (
    WINDOW,
    Budget,
    BudgetPolicy,
    Candidate,
    Shares,
    accepted,
    budget_wait,
    grant_order,
    held_spread,
    learn,
    pause,
    release_spread,
    retry_allowed,
    retry_wait,
    spend,
    tally,
)


def _queue(
    job: str, first_id: int, n: int, *, priority: int = 2, owner: str = ""
) -> list[Candidate]:
    return [Candidate(first_id + i, job, priority, owner) for i in range(n)]


def test_a_small_job_behind_a_big_one_gets_the_next_slots() -> None:
    big = _queue("big", 1, 1000)  # older tasks: first come, first served would pick them all
    small = _queue("small", 5000, 5)
    shares = Shares({"big": 49}, {"": 49}, {})
    chosen = grant_order(big + small, 4, shares)
    assert [c.job_id for c in chosen] == ["small"] * 4


def test_free_slots_go_round_robin_across_jobs_holding_the_same() -> None:
    a, b, c = _queue("a", 1, 10), _queue("b", 100, 10), _queue("c", 200, 10)
    chosen = grant_order(a + b + c, 6, Shares({}, {}, {}))
    assert [x.job_id for x in chosen] == ["a", "b", "c", "a", "b", "c"]
    assert [x.task_id for x in chosen[:3]] == [1, 100, 200]  # each job's oldest task first


def test_owners_share_first_then_their_jobs() -> None:
    # Alice runs three jobs, Bob one: Bob's job gets as much as all of Alice's together.
    alice = _queue("a1", 1, 10, owner="alice") + _queue("a2", 50, 10, owner="alice")
    alice += _queue("a3", 80, 10, owner="alice")
    bob = _queue("b1", 200, 10, owner="bob")
    chosen = grant_order(alice + bob, 6, Shares({}, {}, {}))
    owners = [c.owner for c in chosen]
    assert owners.count("bob") == 3 and owners.count("alice") == 3
    assert {c.job_id for c in chosen if c.owner == "alice"} == {"a1", "a2", "a3"}


def test_slots_freed_one_at_a_time_go_round_robin() -> None:
    # One slot, handed out and given back again and again: each time the jobs hold as many
    # (none), so the one served longest ago gets it, not the oldest job over and over.
    waiting = {j: _queue(j, first, 3) for j, first in (("a", 1), ("b", 100), ("c", 200))}
    shares = Shares({}, {}, {}, now=1.0)
    served = []
    for turn in range(7):
        shares.now = 1.0 + turn
        (chosen,) = grant_order([c for q in waiting.values() for c in q], 1, shares)
        waiting[chosen.job_id].remove(chosen)
        shares.give_back(chosen.job_id, chosen.owner)
        served.append(chosen.job_id)
    assert served == ["a", "b", "c", "a", "b", "c", "a"]


def test_owners_take_turns_too_and_a_stored_turn_counts() -> None:
    alice = _queue("a1", 1, 5, owner="alice") + _queue("a2", 10, 5, owner="alice")
    bob = _queue("b1", 100, 5, owner="bob")
    shares = Shares({}, {}, {}, now=50.0)
    shares.seen("b1", "bob", 40.0)  # Bob was served last at 40, Alice's jobs never
    (first,) = grant_order(alice + bob, 1, shares)
    assert first.job_id == "a1"
    shares.give_back("a1", "alice")
    shares.now = 51.0
    (second,) = grant_order(alice + bob, 1, shares)
    assert second.job_id == "b1"  # Bob (40) before Alice (just now)
    shares.give_back("b1", "bob")
    (third,) = grant_order(alice + bob, 1, shares)
    assert third.job_id == "a2"  # Alice again, and her job not served yet


def test_priority_still_comes_first() -> None:
    low = _queue("low", 1, 5, priority=1)
    high = _queue("high", 100, 5, priority=3)
    chosen = grant_order(low + high, 5, Shares({"high": 40}, {"": 40}, {}))
    assert {c.job_id for c in chosen} == {"high"}


def test_a_job_at_its_cap_gets_no_more_slots() -> None:
    capped = _queue("capped", 1, 10)
    other = _queue("other", 100, 2)
    shares = Shares({"capped": 1}, {"": 1}, {"capped": 2})
    chosen = grant_order(capped + other, 6, shares)
    assert [c.job_id for c in chosen].count("capped") == 1  # 1 held + 1 = its cap of 2
    assert len(chosen) == 3  # the rest stay free: nobody else waits
    assert not shares.under_cap("capped")


def test_the_order_is_deterministic() -> None:
    pool = _queue("a", 1, 7) + _queue("b", 8, 7)
    assert grant_order(pool, 9) == grant_order(list(reversed(pool)), 9)


# Budgets ---------------------------------------------------------------------------------------

NOW = 10 * WINDOW + 12.0  # 12 s into a minute


def test_a_pause_holds_every_call_until_it_ends() -> None:
    budget = Budget("openai:m")
    pause(budget, NOW + 5, NOW)
    assert budget_wait(budget, NOW, 0) == 5
    assert budget_wait(budget, NOW + 5, 0) == 0
    pause(budget, NOW + 1, NOW)  # a shorter pause never shortens a longer one
    assert budget.paused_until == NOW + 5


def test_a_submit_accepted_after_the_pause_began_ends_it() -> None:
    budget = Budget("fal:m")
    pause(budget, NOW + 1, NOW)
    accepted(budget, NOW - 0.01, NOW + 0.02)  # answered before the 429: tells nothing
    assert budget_wait(budget, NOW + 0.02, 0) > 0
    pause(budget, NOW + 1.1, NOW + 0.1)  # a second 429 lengthens the pause, same start
    assert budget.paused_at == NOW
    accepted(budget, NOW + 0.03, NOW + 0.04)  # fal took a submit after refusing one
    assert budget_wait(budget, NOW + 0.04, 0) == 0
    accepted(budget, NOW + 0.05, NOW + 0.05)  # no pause: nothing to end
    assert budget.paused_until == NOW + 0.04
    pause(budget, NOW + 2, NOW + 1)  # the next pause starts afresh
    assert budget.paused_at == NOW + 1
    accepted(budget, NOW + 0.9, NOW + 1.2)
    assert budget_wait(budget, NOW + 1.2, 0) == pytest.approx(0.8)


def test_a_pause_begins_when_the_429_was_answered_not_when_it_was_committed() -> None:
    budget = Budget("fal:m")
    # The 429 came back at NOW; its commit waited 50 ms for the group commit's batch.
    pause(budget, NOW + 0.5, NOW + 0.05, refused_at=NOW)
    assert budget.paused_at == NOW and budget_wait(budget, NOW + 0.05, 0) == pytest.approx(0.45)
    accepted(budget, NOW + 0.02, NOW + 0.06)  # answered after the 429: fal takes work again
    assert budget_wait(budget, NOW + 0.06, 0) == 0 and budget.pause_streak == 0


def test_a_lone_429s_held_starts_go_together_a_storms_spread_out() -> None:
    budget = Budget("fal:m")
    pause(budget, NOW + 0.5, NOW)  # a 429 after calls were accepted: a lone one
    assert budget.pause_streak == 1
    assert held_spread(budget, NOW + 0.1, 0.4) == 0
    pause(budget, NOW + 0.7, NOW + 0.2)  # another while it runs: the same pause
    assert budget.pause_streak == 1
    pause(budget, NOW + 1.6, NOW + 0.8)  # refused again right after it, nothing accepted
    assert budget.pause_streak == 2
    assert held_spread(budget, NOW + 0.9, 0.7) == 0.7  # a storm: spread over the wait
    accepted(budget, NOW + 0.85, NOW + 0.95)  # fal takes a submit: the storm is over
    assert budget.pause_streak == 0 and budget_wait(budget, NOW + 0.95, 0) == 0
    pause(budget, NOW + 2.5, NOW + 2)
    assert budget.pause_streak == 1  # the next 429 is a lone one again
    accepted(budget, NOW + 1.9, NOW + 2.1)  # answered before it: tells nothing
    assert budget.pause_streak == 1
    assert held_spread(budget, NOW + 2.6, 5.0) == 5.0  # no pause: a spent minute spreads
    accepted(budget, NOW + 2.7, NOW + 2.8)  # accepted once the pause ran out
    assert budget.pause_streak == 0


def test_a_spent_minute_makes_calls_wait_for_the_next() -> None:
    budget = Budget("openai:m", rpm=2, tpm=1000)
    for _ in range(2):
        assert budget_wait(budget, NOW, 100) == 0
        spend(budget, 100)
    assert budget_wait(budget, NOW, 100) == WINDOW - 12
    assert budget_wait(budget, NOW + WINDOW, 100) == 0  # a new minute
    heavy = Budget("openai:m", tpm=1000)
    assert budget_wait(heavy, NOW, 900) == 0
    spend(heavy, 900)
    assert budget_wait(heavy, NOW, 200) > 0
    assert budget_wait(heavy, NOW, 100) == 0


def test_learned_limits_count() -> None:
    budget = Budget("openai:m")
    learn(budget, rpm=10, tpm=None, used_requests=10)
    assert budget.rpm == 10 and budget_wait(budget, NOW, 0) == 0  # `used` is of an older window
    budget.roll(NOW)
    learn(budget, rpm=None, tpm=None, used_requests=10)
    assert budget_wait(budget, NOW, 0) > 0


def test_retries_may_add_a_tenth_of_the_calls_of_the_last_minute() -> None:
    policy = BudgetPolicy(retry_ratio=0.1, retry_floor=2)
    budget = Budget("fal:m")
    budget.roll(NOW)
    budget.requests = 100
    allowed = 0
    while retry_allowed(budget, NOW, policy):
        budget.retries += 1
        allowed += 1
    assert allowed == 10
    quiet = Budget("fal:m")
    assert retry_allowed(quiet, NOW, policy)  # a few retries are always fine
    quiet.retries = 2
    assert not retry_allowed(quiet, NOW, policy)


def test_the_retry_window_slides() -> None:
    policy = BudgetPolicy(retry_ratio=0.1, retry_floor=0)
    budget = Budget("fal:m")
    budget.roll(NOW)
    budget.requests, budget.retries = 100, 10
    later = NOW + WINDOW  # the next minute, 12 s in: 80 % of the last one still counts
    assert not retry_allowed(budget, later, policy)  # 80 calls and 8 retries: the budget is used
    assert (budget.prev_requests, budget.prev_retries, budget.requests) == (100, 10, 0)
    budget.requests = 20  # fresh calls this minute make room: 100 calls, 8 retries
    assert retry_allowed(budget, later, policy)
    gap = NOW + 3 * WINDOW  # a minute with no calls in between forgets the old one
    assert not retry_allowed(budget, gap, policy)
    assert (budget.prev_requests, budget.prev_retries) == (0, 0)


def test_an_over_budget_retry_waits_until_calls_at_the_minutes_rate_make_room() -> None:
    policy = BudgetPolicy(retry_ratio=0.1, retry_floor=0)
    budget = Budget("fal:m")
    budget.roll(NOW)
    budget.requests, budget.retries = 600, 60  # 12 s in: 50 calls a second, budget used
    wait = retry_wait(budget, NOW, policy)
    # One more retry needs 10 more calls: 0.2 s at this rate, not the rest of the minute.
    assert 0.1 <= wait <= 0.5
    later = NOW + wait
    budget.requests += round(50 * wait)
    assert retry_wait(budget, later, policy) == 0
    idle = Budget("fal:m")  # nothing is calling: only the minute's end brings room
    idle.roll(NOW)
    idle.retries = 5
    assert retry_wait(idle, NOW, policy) == WINDOW - 12


def test_status_checks_count_as_calls_of_the_minute() -> None:
    policy = BudgetPolicy(retry_ratio=0.1, retry_floor=0)
    budget = Budget("fal:m")
    budget.roll(NOW)
    budget.requests, budget.retries = 10, 1  # ten submits, one of them a retry
    assert not retry_allowed(budget, NOW, policy)
    tally(budget, NOW, 90)  # and the ninety status checks of their polling
    assert retry_allowed(budget, NOW, policy)


def test_starts_held_back_together_are_released_spread_out() -> None:
    offsets = sorted(release_spread(task_id, 1.0) for task_id in range(1, 51))
    assert offsets[0] >= 0 and offsets[-1] < 1.0
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert max(gaps) < 0.1  # fifty starts over a second, none bunched behind a long gap
    assert release_spread(7, 1.0) == release_spread(7, 1.0)  # the same task, the same offset
    assert max(release_spread(t, 600.0) for t in range(100)) <= 10.0
    assert max(release_spread(t, 0.5) for t in range(100)) <= 0.5  # short pauses stay short


def test_the_first_released_after_a_pause_is_not_always_the_same_task() -> None:
    # Under a long 429 storm each pause's first start meets the next 429 (an attempt spent):
    # the lead must rotate, or the same task spends all its attempts.
    tasks = range(1, 601)
    leads = [
        min(tasks, key=lambda task: release_spread(task, 1.0, NOW + pause * 1.37))
        for pause in range(60)
    ]
    assert max(leads.count(task) for task in set(leads)) <= 2
    assert release_spread(7, 1.0, NOW) == release_spread(7, 1.0, NOW)  # pure
