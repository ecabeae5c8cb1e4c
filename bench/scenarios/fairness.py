"""7. Fair shares: a small job started while a big one holds every provider slot.

One stack (`FAL_CONCURRENCY=limit`, polling every `polling_interval` s, the simulator's
generations `latency` s ± `latency_jitter`, so the big job's slots free up one by one as they
would at fal), three measurements in this order:

1. **small alone**: a job of S segments on the idle stack, `fairness_small_alone_runs` times;
   its makespan is the median;
2. **big alone**: a job of B segments (B >> limit, so it holds every slot until its end);
3. **big with small**: the same big job, and `fairness_small_after` s after its start (when it
   holds every slot and has ~B - limit tasks WAITING) the small job;
4. **big alone** again: the big job alone is the mean of 2. and 4., so a drift of the machine's
   load (other work on these cores) or of the stack (a fuller database) between them cancels
   out instead of showing up as the small job's cost.

Makespan = just before `StartVideoJob` to the job's terminal JOB_STATUS event reaching a
watcher opened right after the RPC (as everywhere). Figures: small job's makespan with the big
one / alone (target <= 1.5: free slots go round-robin across jobs, so the small job gets the
next S free slots instead of waiting behind B - limit tasks); big job's makespan with the small
one / alone (target <= 1.05: the small job's S x latency slot-seconds spread over `limit` slots
cost the big job about S x latency / limit seconds).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target
from bench.jobs import require_completed, start_video_job, watch, watch_timeout
from bench.scenarios.makespan import ideal_makespan
from bench.stack import RunContext, Stack, orchestrator_stack

SMALL_RATIO = Target("<=", 1.5)
BIG_RATIO = Target("<=", 1.05)


async def timed(stack: Stack, segments: int, expected: float) -> dict[str, Any]:
    """One job of `segments`, from just before the RPC to its terminal event."""
    began = time.perf_counter()
    job_id, _ = await start_video_job(stack.stub, segments)
    seen = await watch(stack.stub, job_id, give_up_after=watch_timeout(expected))
    require_completed(seen, job_id)
    assert seen.ended_at is not None
    return {
        "job_id": job_id,
        "segments": segments,
        "makespan": seen.ended_at - began,
        "started_at": began,
        "deferred_events": seen.types.get("EVENT_TYPE_TASK_DEFERRED", 0),
    }


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    big, small = sizes.fairness_big_segments, sizes.fairness_small_segments
    limit, latency = sizes.utilisation_concurrency, sizes.fairness_latency
    env = {"FAL_CONCURRENCY": str(limit), "FAL_POLL_INTERVAL": str(sizes.polling_interval)}
    sim_config = {"latency": latency, "latency_jitter": sizes.fairness_latency_jitter}
    big_ideal = ideal_makespan(big, limit, latency)
    small_ideal = ideal_makespan(small, limit, latency)
    raw: dict[str, Any] = result.raw
    raw.update(
        big_segments=big,
        small_segments=small,
        limit=limit,
        latency=latency,
        latency_jitter=sizes.fairness_latency_jitter,
        small_after=sizes.fairness_small_after,
        settings=env,
        simulator_config=sim_config,
    )
    async with orchestrator_stack(ctx, "fairness", sim_config=sim_config, env=env) as stack:
        alone = []
        for i in range(sizes.fairness_small_alone_runs):
            alone.append(await timed(stack, small, small_ideal))
            say(f"fairness: small job ({small}) alone #{i + 1}: {alone[-1]['makespan']:.2f}s")
        say(f"fairness: big job ({big} segments x {latency}s, limit {limit}) alone")
        big_before = await timed(stack, big, big_ideal)
        say(f"fairness: big job alone {big_before['makespan']:.1f}s; again with a small job")
        big_run = asyncio.create_task(timed(stack, big, big_ideal))
        try:
            await asyncio.sleep(sizes.fairness_small_after)
            if big_run.done():  # it failed (or the sizes are wrong): report why
                big_run.result()
                raise RuntimeError("the big job ended before the small job was started")
            small_with = await timed(stack, small, big_ideal)
            big_with = await big_run
        finally:
            big_run.cancel()  # when the small job failed
        say(f"fairness: big job with the small one {big_with['makespan']:.1f}s; alone again")
        big_after = await timed(stack, big, big_ideal)
        stats = await stack.sim.stats()
    small_alone = statistics.median(one["makespan"] for one in alone)
    big_alone = (big_before["makespan"] + big_after["makespan"]) / 2
    raw.update(
        small_alone_runs=alone,
        small_alone=small_alone,
        big_alone_before=big_before,
        big_alone_after=big_after,
        big_alone=big_alone,
        small_with_big=small_with,
        big_with_small=big_with,
        small_started_after=small_with["started_at"] - big_with["started_at"],
        max_in_progress=stats["max_in_progress"],
        accepted_requests=stats["accepted_requests"],
    )
    say(
        f"fairness: small job {small_with['makespan']:.2f}s with the big job"
        f" ({small_alone:.2f}s alone); big job {big_with['makespan']:.1f}s"
        f" ({big_after['makespan']:.1f}s alone after it)"
    )
    runs = ", ".join(f"{one['makespan']:.2f}" for one in alone)
    result.add(
        Figure(
            "small job with big / alone",
            small_with["makespan"] / small_alone,
            "x",
            ".2f",
            SMALL_RATIO,
            note=f"{small} segments: {small_with['makespan']:.2f}s started"
            f" {raw['small_started_after']:.1f}s into a {big}-segment job;"
            f" alone {small_alone:.2f}s (median of {runs})",
        )
    )
    result.add(
        Figure(
            "big job with small / alone",
            big_with["makespan"] / big_alone,
            "x",
            ".3f",
            BIG_RATIO,
            note=f"{big} segments: {big_with['makespan']:.1f}s with the small job; alone"
            f" {big_alone:.1f}s = mean of {big_before['makespan']:.1f}s before and"
            f" {big_after['makespan']:.1f}s after it; ideal {big_ideal:.1f}s"
            f" (+{small * latency / limit:.1f}s of slot time for the small job)",
        )
    )
    result.add(
        Figure(
            "simulator max_in_progress",
            stats["max_in_progress"],
            "",
            ".0f",
            Target("<=", limit, ".0f"),
        )
    )
