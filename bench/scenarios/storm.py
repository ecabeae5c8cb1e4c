"""8. A 429 storm: how many provider calls the fleet makes while fal answers only 429.

One job of N segments of `latency` s under `FAL_CONCURRENCY=limit`, run by `storm_workers`
video worker processes (polling every `polling_interval` s, `VIDEO_MAX_RETRIES=10`). When the
job has run `storm_after` s (every slot busy), the simulator is told to answer calls with 429
and `Retry-After: retry_after` for `storm_seconds` (a `Storm`, anchored when configured). The
job then runs to its end. Three variants, each on a fresh stack:

- **queue**: every call of fal's queue API (submit, status, result, cancel) is refused;
- **submit**: only submits are refused (generations already running finish, their slots go to
  waiting tasks, which must submit);
- **pause only**: as submit, with circuit breakers that never open
  (`BREAKER_CONSECUTIVE_FAILURES=0`, `BREAKER_MIN_CALLS=1000000`), so only the shared pause
  holds calls back: a 429 with Retry-After pauses the provider's budget for every worker
  (`provider_budgets`), and a start finding it paused is deferred without a call.

Figures per variant:

- **calls in the storm**: the simulator's count of calls it refused because of the storm
  (`faults_injected[endpoint]["storm"]`), every worker together;
- **/ naive**: against what per-task retrying without a shared pause would send: each of the
  `limit` tasks holding a provider slot calls once per Retry-After for the whole storm,
  limit x storm_seconds / retry_after (computed, not measured: the service has no switch to
  turn the shared pause off);
- **time lost after it**: makespan - storm_seconds - ideal (ideal = ceil(N/limit) x latency):
  how long the fleet took to get going again once fal answered.

The smoke run shortens the storm to a few seconds, the circuit's open time to
`fault_breaker_open_seconds` and raises `RETRY_BUDGET_FLOOR` (`retry_budget_floor`): retries
past the fleet-wide retry budget wait for the end of the minute, which would dominate it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target
from bench.jobs import (
    STALL_AFTER,
    get_job,
    require_completed,
    start_video_job,
    watch,
    watch_timeout,
)
from bench.scenarios.makespan import ideal_makespan
from bench.simulator import provider_calls
from bench.stack import RunContext, cpu_delta, orchestrator_stack
from common.domain.scheduling import WINDOW

QUEUE_API = ["submit", "status", "result", "cancel"]
# Circuit breakers that never open: only the shared pause holds calls back.
NO_BREAKER = {"BREAKER_CONSECUTIVE_FAILURES": "0", "BREAKER_MIN_CALLS": "1000000"}
# Name -> the endpoints the storm covers, and settings of the stack.
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "queue": (QUEUE_API, {}),
    "submit": (["submit"], {}),
    "pause only": (["submit"], NO_BREAKER),
}
# A shared pause needs about one call per Retry-After for the whole fleet (1/limit of the naive
# count); at least ten times fewer calls than naive leaves room for races between workers.
VS_NAIVE = Target("<=", 0.10)


def storm_calls(stats: dict[str, Any]) -> dict[str, int]:
    """Calls the simulator refused because of a storm, by endpoint."""
    return {
        endpoint: int(by_kind.get("storm", 0))
        for endpoint, by_kind in stats["faults_injected"].items()
        if by_kind.get("storm")
    }


async def storm_run(
    ctx: RunContext, sizes: Sizes, variant: str, endpoints: list[str], overrides: dict[str, str]
) -> dict[str, Any]:
    """One job on a fresh stack with `storm_workers` video workers, a storm on `endpoints`."""
    n, limit, latency = sizes.storm_segments, sizes.utilisation_concurrency, sizes.storm_latency
    seconds, retry_after = sizes.storm_seconds, sizes.storm_retry_after
    workers = sizes.storm_workers
    env = {
        "FAL_CONCURRENCY": str(limit),
        "FAL_POLL_INTERVAL": str(sizes.polling_interval),
        "VIDEO_MAX_RETRIES": "10",
        **overrides,
    }
    if sizes.fault_breaker_open_seconds is not None:
        env["BREAKER_OPEN_SECONDS"] = str(sizes.fault_breaker_open_seconds)
    if sizes.retry_budget_floor is not None:
        env["RETRY_BUDGET_FLOOR"] = str(sizes.retry_budget_floor)
    ideal = ideal_makespan(n, limit, latency)
    storm = {"endpoints": endpoints, "duration": seconds, "retry_after": retry_after}
    say(
        f"storm ({variant}): {n} segments x {latency}s, limit {limit}, {workers} video workers;"
        f" {seconds:.0f}s of 429 (Retry-After {retry_after:g}s) on {', '.join(endpoints)}"
        f" after {sizes.storm_after:g}s"
    )
    async with orchestrator_stack(
        ctx,
        f"storm-{variant.replace(' ', '-')}",
        sim_config={"latency": latency},
        env=env,
        video_workers=workers,
    ) as stack:
        cpu_before = await stack.cpu_seconds()
        began = time.perf_counter()
        job_id, _ = await start_video_job(stack.stub, n)
        watching = asyncio.create_task(
            watch(
                stack.stub,
                job_id,
                give_up_after=watch_timeout(ideal + seconds) + WINDOW,
                # The storm, then retries past the retry budget wait for the minute's end.
                stall_after=STALL_AFTER + seconds + WINDOW,
            )
        )
        try:
            await asyncio.sleep(sizes.storm_after)
            if watching.done():
                watching.result()
                raise RuntimeError("the job ended before the storm began")
            before = await stack.sim.stats()
            await stack.sim.configure(storms=[storm])
            storm_began = time.perf_counter() - began
            await asyncio.sleep(seconds)
            after = await stack.sim.stats()
            say(f"storm ({variant}): over; calls refused {storm_calls(after)}")
            seen = await watching
        finally:
            watching.cancel()  # when the storm could not be set up
        assert seen.ended_at is not None
        makespan = seen.ended_at - began
        cpu = cpu_delta(cpu_before, await stack.cpu_seconds())
        job = await get_job(stack.stub, job_id)
        stats = await stack.sim.stats()
    require_completed(seen, job_id)
    during = storm_calls(stats)
    attempts = [task.attempts for task in job.tasks]
    return {
        "segments": n,
        "limit": limit,
        "latency": latency,
        "workers": workers,
        "storm": storm,
        "storm_began": storm_began,
        "calls_during_storm": during,
        "calls_during_storm_total": sum(during.values()),
        # Every fal queue call from configuring the storm to its end (a cross-check).
        "calls_in_window": provider_calls(after) - provider_calls(before),
        "naive": limit * seconds / retry_after,
        "makespan": makespan,
        "ideal": ideal,
        "lost_after_storm": makespan - seconds - ideal,
        "retries": sum(a - 1 for a in attempts if a > 0),
        "max_attempts_used": max(attempts, default=0),
        "event_types": dict(seen.types),
        "settings": env,
        "cpu_seconds": cpu,
        "simulator": stats,
    }


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    seconds, retry_after = sizes.storm_seconds, sizes.storm_retry_after
    for variant, (endpoints, overrides) in VARIANTS.items():
        raw = await storm_run(ctx, sizes, variant, endpoints, overrides)
        result.raw[variant] = raw
        total, naive = raw["calls_during_storm_total"], raw["naive"]
        by_endpoint = ", ".join(f"{e} {c}" for e, c in sorted(raw["calls_during_storm"].items()))
        types = raw["event_types"]
        result.add(
            Figure(
                f"{variant}: calls in the storm",
                total,
                "",
                ".0f",
                note=f"{by_endpoint or 'none'}; {raw['workers']} video workers,"
                f" {seconds:.0f}s storm, Retry-After {retry_after:g}s"
                + ("; circuit breakers off" if overrides else ""),
            )
        )
        result.add(
            Figure(
                f"{variant}: calls in the storm / naive",
                total / naive,
                "",
                ".3f",
                VS_NAIVE,
                note=f"naive = {raw['limit']} slots x {seconds:.0f}s / {retry_after:g}s"
                f" = {naive:.0f}",
            )
        )
        result.add(
            Figure(
                f"{variant}: time lost after it",
                raw["lost_after_storm"],
                "s",
                ".1f",
                note=f"makespan {raw['makespan']:.1f}s - storm {seconds:.0f}s - ideal"
                f" {raw['ideal']:.1f}s; {types.get('EVENT_TYPE_TASK_DEFERRED', 0)} deferral"
                f" events, {types.get('EVENT_TYPE_BREAKER', 0)} breaker events,"
                f" {raw['retries']} retries (max attempts {raw['max_attempts_used']})",
            )
        )
