"""4. Under faults: the utilisation workload (polling) with 20% transient provider faults.

Every fal call (submit, status, result) draws a fault with probability `fault_rate`: 429 with a
small Retry-After (a quarter of it), 502, 503, 504 and `timeout` (the simulator holds the call
for `hang_seconds`; `FAL_TIMEOUT` is shorter, so the client times out) sharing the rest.
`VIDEO_MAX_RETRIES=10` so segments do not fail for good. Circuit breaker settings are the
defaults (10 s open) in the full run: a breaker that opens under 20% faults is part of what is
measured; the smoke run shortens it to 1 s.

Figures: makespan and its ratio to the ideal; provider calls per succeeded segment (every call
the simulator counted on submit/status/result/cancel, faulted ones included, divided by
succeeded segments); retries per segment (sum over tasks of attempts - 1, from GetJob, divided
by N); submits per segment for information (a submit that timed out may have been paid).
"""

from __future__ import annotations

from typing import Any

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target, cpu_figure
from bench.scenarios.makespan import timed_job
from bench.stack import RunContext

MAKESPAN_RATIO = Target("<=", 1.3)
ENDPOINTS = ["submit", "status", "result"]
RETRY_AFTER = 0.5


def fault_groups(rate: float) -> list[dict[str, Any]]:
    """Simulator fault groups adding up to `rate` per call.

    Groups draw in turn (the second only when the first drew nothing), so the second group's
    rates are scaled by 1 / (1 - first) to make the totals exact.
    """
    throttled = rate / 4
    each = (rate - throttled) / (1 - throttled) / 4
    return [
        {"endpoints": ENDPOINTS, "rates": {"429": throttled}, "retry_after": RETRY_AFTER},
        {
            "endpoints": ENDPOINTS,
            "rates": {"502": each, "503": each, "504": each, "timeout": each},
        },
    ]


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    say(
        f"faults: {sizes.utilisation_segments} segments x {sizes.utilisation_latency}s, limit"
        f" {sizes.utilisation_concurrency}, {sizes.fault_rate:.0%} faults"
    )
    sim_config = {
        "faults": fault_groups(sizes.fault_rate),
        "hang_seconds": sizes.fault_hang_seconds,
    }
    env = {
        "FAL_POLL_INTERVAL": str(sizes.polling_interval),
        "FAL_TIMEOUT": str(sizes.fault_call_timeout),
        "VIDEO_MAX_RETRIES": str(sizes.fault_max_retries),
    }
    if sizes.fault_breaker_open_seconds is not None:
        env["BREAKER_OPEN_SECONDS"] = str(sizes.fault_breaker_open_seconds)
    raw = await timed_job(ctx, "faults", sizes, sim_config=sim_config, env=env)
    result.raw.update(raw)
    stats = raw["simulator"]
    faults = sum(sum(by_kind.values()) for by_kind in stats["faults_injected"].values())
    raw["faults_injected_total"] = faults
    say(f"faults: makespan {raw['makespan']:.1f}s, ideal {raw['ideal']:.1f}s")
    n = raw["segments"]
    result.add(Figure("makespan", raw["makespan"], "s", ".1f", note=f"ideal {raw['ideal']:.1f}s"))
    result.add(
        Figure("makespan / ideal", raw["makespan"] / raw["ideal"], "", ".2f", MAKESPAN_RATIO)
    )
    result.add(
        Figure(
            "provider calls per succeeded segment",
            raw["provider_calls"] / max(raw["succeeded"], 1),
            "",
            ".2f",
            note=f"{raw['provider_calls']} calls, {raw['succeeded']}/{n} succeeded",
        )
    )
    result.add(
        Figure(
            "retries per segment",
            raw["retries"] / n,
            "",
            ".3f",
            note=f"max attempts used {raw['max_attempts_used']}",
        )
    )
    result.add(
        Figure(
            "faults injected / provider calls",
            faults / max(raw["provider_calls"], 1),
            "",
            ".3f",
            note=f"{faults} faults",
        )
    )
    result.add(
        Figure(
            "submits per segment",
            raw["submits_per_segment"],
            "",
            ".2f",
            note=f"{stats['accepted_requests']} accepted, {stats['submits_total']} sent",
        )
    )
    breaker = raw["event_types"].get("EVENT_TYPE_BREAKER", 0)
    deferred = raw["event_types"].get("EVENT_TYPE_TASK_DEFERRED", 0)
    result.add(
        Figure("breaker events", breaker, "", ".0f", note=f"{deferred} tasks deferred by it")
    )
    result.add(cpu_figure("CPU used by the job", raw["cpu_seconds"], raw["makespan"]))
