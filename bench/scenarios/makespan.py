"""One job of N segments of `latency` seconds under a provider limit, timed to its end.

Makespan = time from just before `StartVideoJob` to the job's terminal JOB_STATUS event reaching
a watcher opened right after the RPC. Ideal = ceil(N / limit) x latency: the provider running
`limit` generations back to back with no gap. Efficiency = ideal / makespan.

Slot hand-off (see `bench.measures.slot_handoffs`): from a generation finishing at the provider
to the next segment's submit being accepted into the slot it freed, from the simulator's
timeline of the job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from bench.config import Sizes
from bench.jobs import get_job, require_completed, start_video_job, watch, watch_timeout
from bench.measures import handoff_stats
from bench.simulator import provider_calls
from bench.stack import RunContext, cpu_delta, orchestrator_stack


def ideal_makespan(segments: int, limit: int, latency: float) -> float:
    return math.ceil(segments / limit) * latency


async def timed_job(
    ctx: RunContext,
    name: str,
    sizes: Sizes,
    *,
    sim_config: Mapping[str, Any],
    env: Mapping[str, str],
    webhooks: bool = False,
) -> dict[str, Any]:
    """Run one job of `utilisation_segments` on a fresh stack; its raw numbers."""
    n, limit = sizes.utilisation_segments, sizes.utilisation_concurrency
    latency = sizes.utilisation_latency
    ideal = ideal_makespan(n, limit, latency)
    settings = {"FAL_CONCURRENCY": str(limit), **env}
    config = {"latency": latency, **sim_config}
    async with orchestrator_stack(
        ctx, name, sim_config=config, env=settings, webhooks=webhooks
    ) as stack:
        cpu_before = await stack.cpu_seconds()
        began = time.perf_counter()
        job_id, rpc_seconds = await start_video_job(stack.stub, n)
        seen = await watch(stack.stub, job_id, give_up_after=watch_timeout(ideal))
        assert seen.ended_at is not None
        makespan = seen.ended_at - began
        cpu = cpu_delta(cpu_before, await stack.cpu_seconds())
        require_completed(seen, job_id)
        job = await get_job(stack.stub, job_id)
        stats = await stack.sim.stats()
        timeline = await stack.sim.timeline()
    attempts = [task.attempts for task in job.tasks]
    return {
        "segments": n,
        "limit": limit,
        "latency": latency,
        "makespan": makespan,
        "ideal": ideal,
        "efficiency": ideal / makespan,
        "start_rpc_seconds": rpc_seconds,
        "succeeded": job.succeeded_tasks,
        "failed": job.failed_tasks,
        "retries": sum(a - 1 for a in attempts if a > 0),
        "max_attempts_used": max(attempts, default=0),
        "submits_per_segment": stats["accepted_requests"] / n,
        "provider_calls": provider_calls(stats),
        "max_in_progress": stats["max_in_progress"],
        "events": seen.events,
        "event_types": dict(seen.types),
        "settings": settings,
        "cpu_seconds": cpu,
        "handoff": handoff_stats(timeline, limit),
        "timeline": timeline,
        "simulator_config": config,
        "simulator": stats,
    }
