"""5. Progress latency: many watchers on one running job.

W concurrent `WatchJob` streams (one gRPC channel, as one client fleet behind one connection)
opened right after `StartVideoJob` of a job of S segments of `latency` s under a limit. For every
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

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target
from bench.jobs import Watch, require_completed, start_video_job, watch, watch_timeout
from bench.scenarios.makespan import ideal_makespan
from bench.stack import RunContext, orchestrator_stack

P99 = Target("<=", 100.0, ".0f")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    w, n = sizes.progress_watchers, sizes.progress_segments
    latency, limit = sizes.progress_latency, sizes.progress_concurrency
    say(f"progress: {w} watchers on a job of {n} segments x {latency}s, limit {limit}")
    env = {"FAL_CONCURRENCY": str(limit), "FAL_POLL_INTERVAL": str(sizes.polling_interval)}
    give_up = watch_timeout(ideal_makespan(n, limit, latency))
    async with orchestrator_stack(
        ctx, "progress", sim_config={"latency": latency}, env=env
    ) as stack:
        began = time.perf_counter()
        job_id, _ = await start_video_job(stack.stub, n)
        async with asyncio.TaskGroup() as tasks:
            watchers = [
                tasks.create_task(watch(stack.stub, job_id, give_up_after=give_up, latencies=True))
                for _ in range(w)
            ]
        seen: list[Watch] = [task.result() for task in watchers]
        for one in seen:
            require_completed(one, job_id)
        makespan = max(one.ended_at or 0.0 for one in seen) - began
    latencies = sorted(ms * 1000 for one in seen for ms in one.live_latencies)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    received = sum(one.events for one in seen)
    replayed = sum(one.replayed for one in seen)
    result.raw.update(
        watchers=w,
        segments=n,
        latency=latency,
        limit=limit,
        job_events=seen[0].events,
        events_received=received,
        events_measured=len(latencies),
        events_replayed=replayed,
        p50_ms=p50,
        p90_ms=percentile(latencies, 90),
        p99_ms=p99,
        max_ms=latencies[-1] if latencies else math.nan,
        makespan=makespan,
        settings=env,
    )
    say(f"progress: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(latencies)} events")
    result.add(Figure("p50 event latency", p50, "ms", ".1f", note=f"{w} watchers"))
    result.add(Figure("p99 event latency", p99, "ms", ".1f", P99))
    result.add(
        Figure(
            "events measured",
            len(latencies),
            "",
            ".0f",
            note=f"{seen[0].events}/job x {w}; {replayed} replayed left out",
        )
    )
