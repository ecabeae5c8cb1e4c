"""5. Progress latency: many watchers on one running job.

W concurrent `WatchJob` streams (one gRPC channel, as one client fleet behind one connection)
opened right after `StartVideoJob` of a job of S segments of `latency` s under a limit. A first
job on the same stack with a single watcher is the baseline. For every
event every watcher receives, latency = receive wall time - `event.created_at` (the wall clock
at which the orchestrator committed the event). Events committed before a watcher's stream was
opened are history replay, not progress, and are left out (counted separately). Reported: p50,
p99 and max over all (watcher, event) pairs, and the event count.

The watchers run in the benchmark process, on the same cores as the services, so the figure
includes the client's own cost of decoding W x events messages.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target, cpu_figure
from bench.jobs import Watch, require_completed, start_video_job, watch, watch_timeout
from bench.scenarios.makespan import ideal_makespan
from bench.stack import RunContext, Stack, cpu_delta, orchestrator_stack

P99 = Target("<=", 100.0, ".0f")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def watched_job(stack: Stack, sizes: Sizes, watchers: int) -> dict[str, Any]:
    """One job of `progress_segments` watched by `watchers` streams; latency statistics."""
    n, limit = sizes.progress_segments, sizes.progress_concurrency
    give_up = watch_timeout(ideal_makespan(n, limit, sizes.progress_latency))
    cpu_before = await stack.cpu_seconds()
    began = time.perf_counter()
    job_id, _ = await start_video_job(stack.stub, n)
    async with asyncio.TaskGroup() as tasks:
        running = [
            tasks.create_task(watch(stack.stub, job_id, give_up_after=give_up, latencies=True))
            for _ in range(watchers)
        ]
    seen: list[Watch] = [task.result() for task in running]
    for one in seen:
        require_completed(one, job_id)
    makespan = max(one.ended_at or 0.0 for one in seen) - began
    cpu = cpu_delta(cpu_before, await stack.cpu_seconds())
    latencies = sorted(seconds * 1000 for one in seen for seconds in one.live_latencies)
    return {
        "watchers": watchers,
        "job_events": seen[0].events,
        "events_received": sum(one.events for one in seen),
        "events_measured": len(latencies),
        "events_replayed": sum(one.replayed for one in seen),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else math.nan,
        "makespan": makespan,
        "cpu_seconds": cpu,
    }


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    w, n = sizes.progress_watchers, sizes.progress_segments
    latency, limit = sizes.progress_latency, sizes.progress_concurrency
    env = {"FAL_CONCURRENCY": str(limit), "FAL_POLL_INTERVAL": str(sizes.polling_interval)}
    result.raw.update(segments=n, latency=latency, limit=limit, settings=env)
    async with orchestrator_stack(
        ctx, "progress", sim_config={"latency": latency}, env=env
    ) as stack:
        say(f"progress: 1 watcher (baseline) on a job of {n} segments x {latency}s, limit {limit}")
        single = await watched_job(stack, sizes, 1)
        say(f"progress: {w} watchers on another job of {n} segments")
        many = await watched_job(stack, sizes, w)
    result.raw.update(single=single, many=many)
    p50, p99 = many["p50_ms"], many["p99_ms"]
    say(f"progress: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {many['events_measured']} events")
    result.add(Figure("p50 event latency", p50, "ms", ".1f", note=f"{w} watchers"))
    result.add(Figure("p99 event latency", p99, "ms", ".1f", P99, note=f"{w} watchers"))
    result.add(
        Figure(
            "events measured",
            many["events_measured"],
            "",
            ".0f",
            note=f"{many['job_events']}/job x {w}; {many['events_replayed']} replayed left out",
        )
    )
    result.add(cpu_figure("CPU used while watched", many["cpu_seconds"], many["makespan"]))
    result.add(
        Figure(
            "1 watcher: p50 / p99 event latency",
            single["p50_ms"],
            "ms",
            ".1f",
            note=f"p99 {single['p99_ms']:.1f} ms; baseline, same job size, same stack",
        )
    )
