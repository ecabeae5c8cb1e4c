"""Numbers computed from raw measurements: percentiles, slot hand-offs, CPU per unit of work."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Outcomes after which the provider freed the slot by itself (a cancel is the client's doing).
FINISHED = ("ok", "failed")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def slot_handoffs(timeline: Mapping[str, Sequence[Any]], limit: int) -> list[float]:
    """Seconds from each generation finishing to the next submit into the slot it freed.

    From the simulator's timeline (`GET /_sim/stats?timeline=true`; one clock for both ends):
    completion times (the due time of each generation that finished, ok or failed) sorted, and
    submit (accept) times after the first `limit` (the initial wave, which needs no freed slot)
    sorted; the k-th later submit fills the slot freed by the k-th completion, so hand-off k =
    submit_k - completion_k. In submit order, not per task: a slot is a slot. The last `limit`
    completions free slots nobody needs (no segment left), so there are N - limit hand-offs.
    """
    completions = sorted(
        done
        for done, outcome in zip(timeline["completed_at"], timeline["outcome"], strict=True)
        if done is not None and outcome in FINISHED
    )
    later_submits = sorted(timeline["submitted_at"])[limit:]
    return [submit - done for done, submit in zip(completions, later_submits, strict=False)]


def handoff_stats(timeline: Mapping[str, Sequence[Any]], limit: int) -> dict[str, Any]:
    """p50/p90/p99/max/mean of the slot hand-offs in milliseconds, and what they came from.

    Also where in the job they were slow: the first round's mean (the `limit` generations of
    the first wave all finish within its submit spread, so their hand-offs queue behind each
    other) and the p99 of the job's second half (after the rounds have spread out)."""
    in_order = [seconds * 1000 for seconds in slot_handoffs(timeline, limit)]
    handoffs = sorted(in_order)
    first_round = in_order[:limit]
    second_half = sorted(in_order[len(in_order) // 2 :])
    outcomes = list(timeline["outcome"])
    return {
        "count": len(handoffs),
        "p50_ms": percentile(handoffs, 50),
        "p90_ms": percentile(handoffs, 90),
        "p99_ms": percentile(handoffs, 99),
        "max_ms": handoffs[-1] if handoffs else math.nan,
        "min_ms": handoffs[0] if handoffs else math.nan,
        "mean_ms": sum(handoffs) / len(handoffs) if handoffs else math.nan,
        "first_round_mean_ms": sum(first_round) / len(first_round) if first_round else math.nan,
        "second_half_p99_ms": percentile(second_half, 99),
        # Slot time lost between generations, all hand-offs together.
        "idle_slot_seconds": sum(handoffs) / 1000,
        "accepted": len(outcomes),
        "finished": sum(1 for o in outcomes if o in FINISHED),
        "cancelled": outcomes.count("cancelled"),
        "handoffs_ms": [round(value, 2) for value in handoffs],
    }


def per_unit_ms(cpu_seconds: Mapping[str, float], units: int) -> dict[str, float]:
    """CPU milliseconds per unit of work (segment, message, task), per process."""
    return {name: seconds * 1000 / units for name, seconds in cpu_seconds.items()}


def video_worker_seconds(cpu_seconds: Mapping[str, float]) -> float:
    """CPU seconds of every video worker process together (`video_worker`, `video_worker_2`...)."""
    return sum(s for name, s in cpu_seconds.items() if name.startswith("video_worker"))
