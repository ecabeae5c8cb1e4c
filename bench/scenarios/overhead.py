"""1./2. Orchestration overhead, against the raw broker round trip and Celery.

- **orchestrator**: `StartVideoJob` of N segments with a zero-latency provider (simulator
  `latency=0`), the first status check right after the submit (`FAL_FIRST_POLL_DELAY=0`, as
  the Celery task does; later polls after the smallest delay tier, `FAL_POLL_INTERVAL=0.05`)
  and no effective limit (`FAL_CONCURRENCY=10000`), so what is measured is the orchestration
  itself. A `WatchJob` stream is opened right after the RPC returns; rate = N / (time from just
  before `StartVideoJob` to the job's terminal JOB_STATUS event reaching that watcher).
- **raw broker round trip** (`bench.broker_limit`): the physical limit on this machine.
- **Celery** (`bench.celery_peer`): the same workload as Celery tasks, and a no-op variant.
"""

from __future__ import annotations

import time
from typing import Any

from bench.broker_limit import raw_round_trip
from bench.celery_peer import celery_rates
from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target, cpu_figure
from bench.jobs import require_completed, start_video_job, watch, watch_timeout
from bench.simulator import provider_calls
from bench.stack import RunContext, cpu_delta, orchestrator_stack

# Targets: ahead of Celery on the same workload, and at least a quarter of the raw round trip.
VS_CELERY = Target(">", 1.0)
VS_RAW = Target(">=", 0.25)


async def orchestrator_rate(ctx: RunContext, sizes: Sizes) -> dict[str, Any]:
    """Segments per second end to end for one job of `overhead_segments` segments."""
    n = sizes.overhead_segments
    env = {
        "FAL_POLL_INTERVAL": str(sizes.overhead_poll_interval),
        # The provider answers at once: check the status right after the submit, in the same
        # step, as the Celery peer's task does (and as fal's own subscribe() does).
        "FAL_FIRST_POLL_DELAY": "0",
        "FAL_CONCURRENCY": str(sizes.overhead_concurrency),
    }
    async with orchestrator_stack(
        ctx, "overhead-orchestrator", sim_config={"latency": 0}, env=env
    ) as stack:
        cpu_before = await stack.cpu_seconds()
        began = time.perf_counter()
        job_id, rpc_seconds = await start_video_job(stack.stub, n)
        seen = await watch(stack.stub, job_id, give_up_after=watch_timeout(n / 20))
        require_completed(seen, job_id)
        assert seen.ended_at is not None
        seconds = seen.ended_at - began
        cpu = cpu_delta(cpu_before, await stack.cpu_seconds())
        stats = await stack.sim.stats()
    return {
        "segments": n,
        "seconds": seconds,
        "rate": n / seconds,
        "start_rpc_seconds": rpc_seconds,
        "events": seen.events,
        "event_types": dict(seen.types),
        "settings": env,
        "cpu_seconds": cpu,
        "provider_calls": provider_calls(stats),
        "simulator": stats,
    }


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    n = sizes.overhead_segments
    say(f"overhead: orchestrator, {n} segments, zero-latency provider")
    orch = await orchestrator_rate(ctx, sizes)
    say(f"overhead: orchestrator {orch['rate']:.0f} segments/s; raw broker round trip, {n} msgs")
    log_dir = ctx.workdir / "overhead-raw"
    log_dir.mkdir(parents=True, exist_ok=True)
    raw = await raw_round_trip(ctx.options.amqp_url, ctx.new_prefix(), n, log_dir)
    say(f"overhead: raw {raw['rate']:.0f} msgs/s; Celery peer, {n} tasks x 2 variants")
    celery = await celery_rates(ctx, sizes)
    result.raw.update(orchestrator=orch, raw_broker=raw, celery=celery)

    work, noop = celery["workload"]["rate"], celery["noop"]["rate"]
    result.add(
        Figure(
            "orchestrator end to end",
            orch["rate"],
            "seg/s",
            ".0f",
            note=f"N={n} in {orch['seconds']:.2f}s; poll {sizes.overhead_poll_interval}s, no"
            " provider limit",
        )
    )
    result.add(
        Figure(
            "raw broker round trip",
            raw["rate"],
            "msg/s",
            ".0f",
            note="aio-pika, confirms, echo process",
        )
    )
    result.add(
        Figure(
            "Celery, same workload",
            work,
            "task/s",
            ".0f",
            note=f"prefork x{sizes.celery_concurrency}, sync httpx",
        )
    )
    result.add(Figure("Celery, no-op task", noop, "task/s", ".0f", note="completion only"))
    result.add(Figure("orchestrator / raw", orch["rate"] / raw["rate"], "", ".2f", VS_RAW))
    result.add(
        Figure("orchestrator / Celery (same workload)", orch["rate"] / work, "", ".2f", VS_CELERY)
    )
    result.add(Figure("orchestrator / Celery (no-op)", orch["rate"] / noop, "", ".2f"))
    result.add(
        cpu_figure("orchestrator: CPU used by the job", orch["cpu_seconds"], orch["seconds"])
    )
