"""3. Provider utilisation: how close to the provider's capacity the orchestrator keeps it.

N segments of `latency` s with `FAL_CONCURRENCY=limit`, the simulator itself unlimited (so
`max_in_progress` shows whether the orchestrator's limit holds). Run twice on fresh stacks:

- **polling**: `FAL_POLL_INTERVAL=0.25`, no webhooks;
- **webhooks**: `PUBLIC_HTTP_URL` set to the gateway's HTTP port, so the simulator calls back
  when a generation finishes; a 30 s poll interval is only the fallback.

Figures per run: makespan, efficiency = ideal / makespan (see `makespan.py`), the simulator's
`max_in_progress` (must stay within the limit) and submits per segment (`accepted_requests / N`,
exactly 1.00 without faults: nothing paid twice), the slot hand-off latency (p50 and p99: from a
generation finishing at the provider to the next segment's submit accepted into the slot it
freed; see `bench.measures.slot_handoffs`; its note also gives the first round's mean and the
second half's p99, since the first wave's generations all finish together and queue), and CPU
per segment for each process.
"""

from __future__ import annotations

import math

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target, cpu_per_unit_figure
from bench.measures import video_worker_seconds
from bench.scenarios.makespan import timed_job
from bench.stack import RunContext

EFFICIENCY = {"polling": Target(">=", 0.95), "webhooks": Target(">=", 0.98)}
ONE_SUBMIT = Target("==", 1.0)
# Slot hand-off p99, milliseconds; polling has no target (it waits for the next poll).
HANDOFF_P99 = {"webhooks": Target("<=", 50.0, ".0f")}


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    limit = sizes.utilisation_concurrency
    modes = {
        "polling": ({"FAL_POLL_INTERVAL": str(sizes.polling_interval)}, False),
        "webhooks": ({"FAL_POLL_INTERVAL": str(sizes.webhook_fallback_poll)}, True),
    }
    for mode, (env, webhooks) in modes.items():
        say(
            f"utilisation ({mode}): {sizes.utilisation_segments} segments x"
            f" {sizes.utilisation_latency}s, limit {limit}"
        )
        raw = await timed_job(
            ctx, f"utilisation-{mode}", sizes, sim_config={}, env=env, webhooks=webhooks
        )
        result.raw[mode] = raw
        say(f"utilisation ({mode}): makespan {raw['makespan']:.1f}s, ideal {raw['ideal']:.1f}s")
        result.add(
            Figure(
                f"{mode}: makespan",
                raw["makespan"],
                "s",
                ".1f",
                note=f"ideal {raw['ideal']:.1f}s = ceil({raw['segments']}/{limit}) x"
                f" {raw['latency']}s",
            )
        )
        result.add(Figure(f"{mode}: efficiency", raw["efficiency"], "", ".3f", EFFICIENCY[mode]))
        result.add(
            Figure(
                f"{mode}: simulator max_in_progress",
                raw["max_in_progress"],
                "",
                ".0f",
                Target("<=", limit, ".0f"),
            )
        )
        result.add(
            Figure(
                f"{mode}: submits per segment",
                raw["submits_per_segment"],
                "",
                ".2f",
                ONE_SUBMIT,
                note=f"{raw['simulator']['accepted_requests']} accepted;"
                f" {raw['provider_calls'] / raw['segments']:.2f} provider calls per segment",
            )
        )
        handoff = raw["handoff"]
        result.add(
            Figure(
                f"{mode}: slot hand-off p50",
                handoff["p50_ms"] if handoff["count"] else None,
                "ms",
                ".1f",
                note=f"{handoff['count']} hand-offs (N - limit); p90 {handoff['p90_ms']:.1f} ms,"
                f" mean {handoff['mean_ms']:.1f} ms",
            )
        )
        result.add(
            Figure(
                f"{mode}: slot hand-off p99",
                handoff["p99_ms"] if handoff["count"] else None,
                "ms",
                ".1f",
                HANDOFF_P99.get(mode),
                note=f"max {handoff['max_ms']:.1f} ms; first round mean"
                f" {handoff['first_round_mean_ms']:.1f} ms, second half p99"
                f" {handoff['second_half_p99_ms']:.1f} ms; {handoff['idle_slot_seconds']:.1f}"
                " slot-seconds idle between generations",
            )
        )
        n = raw["segments"]
        result.add(
            cpu_per_unit_figure(f"{mode}: CPU per segment", raw["cpu_seconds"], n, raw["makespan"])
        )
        result.add(
            Figure(
                f"{mode}: video worker CPU/segment",
                video_worker_seconds(raw["cpu_seconds"]) * 1000 / n,
                "ms",
                ".2f",
                note=f"gateway {raw['cpu_seconds'].get('gateway', math.nan) * 1000 / n:.2f} ms",
            )
        )
        if webhooks:
            result.add(
                Figure(
                    "webhooks: webhooks sent",
                    raw["simulator"]["webhooks_sent"],
                    "",
                    ".0f",
                    note=f"{raw['simulator']['webhook_failures']} failed",
                )
            )
