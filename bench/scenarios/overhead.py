"""1./2. Orchestration overhead, against the raw broker round trip and Celery.

- **orchestrator**: `StartVideoJob` of N segments with a zero-latency provider (simulator
  `latency=0`), the first status check right after the submit (`FAL_FIRST_POLL_DELAY=0`, as
  the Celery task does; later polls after the smallest delay tier, `FAL_POLL_INTERVAL=0.05`)
  and no effective limit (`FAL_CONCURRENCY=10000`), so what is measured is the orchestration
  itself. A `WatchJob` stream is opened right after the RPC returns; rate = N / (time from just
  before `StartVideoJob` to the job's terminal JOB_STATUS event reaching that watcher).
- **raw broker round trip** (`bench.broker_limit`): the physical limit on this machine.
- **Celery** (`bench.celery_peer`): the same workload as Celery tasks, and a no-op variant.

CPU per unit of work, each measured over its own run above (same N, same run of the bench):
per segment for each orchestrator process (gateway, video worker, simulator, this client); per
message for the raw round trip's echo process alone and with the driver (this benchmark
process); per task for the Celery worker's whole process tree (main process and prefork
children). The video worker's CPU per segment is then compared with Celery's per task (target
at most half) and with the echo process's per message (target at most 4x).
"""

from __future__ import annotations

import math
import time
from typing import Any

from bench.broker_limit import raw_round_trip
from bench.celery_peer import celery_rates
from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target, cpu_per_unit_figure
from bench.jobs import require_completed, start_video_job, watch, watch_timeout
from bench.measures import per_unit_ms, video_worker_seconds
from bench.simulator import provider_calls
from bench.stack import RunContext, cpu_delta, orchestrator_stack

# Targets: ahead of Celery on the same workload, and at least a quarter of the raw round trip.
VS_CELERY = Target(">", 1.0)
VS_RAW = Target(">=", 0.25)
# Video worker CPU per segment: at most half of Celery's per task (worker tree), at most 4x the
# raw echo process's per message.
CPU_VS_CELERY = Target("<=", 0.5)
CPU_VS_RAW = Target("<=", 4.0, ".1f")


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
    add_cpu_figures(result, n, orch, raw, celery)


def add_cpu_figures(
    result: ScenarioResult,
    n: int,
    orch: dict[str, Any],
    raw: dict[str, Any],
    celery: dict[str, Any],
) -> None:
    """CPU per segment / message / task, and the video worker's against the two yardsticks."""
    worker_ms = video_worker_seconds(orch["cpu_seconds"]) * 1000 / n
    orch_ms = per_unit_ms(orch["cpu_seconds"], n)
    echo_ms = raw["cpu_seconds"]["echo_worker"] * 1000 / n
    driver_ms = raw["cpu_seconds"]["driver"] * 1000 / n
    work_cpu, noop_cpu = celery["workload"]["cpu_seconds"], celery["noop"]["cpu_seconds"]
    celery_ms = work_cpu["celery_worker_tree"] * 1000 / n
    noop_ms = noop_cpu["celery_worker_tree"] * 1000 / n
    pool = celery["workload"]["pool_processes"]
    result.add(
        cpu_per_unit_figure(
            "orchestrator: CPU per segment", orch["cpu_seconds"], n, orch["seconds"]
        )
    )
    result.add(
        Figure(
            "orchestrator: video worker CPU/segment",
            worker_ms,
            "ms",
            ".2f",
            note=f"gateway {orch_ms.get('gateway', math.nan):.2f} ms; gateway + worker"
            f" {orch_ms.get('gateway', math.nan) + worker_ms:.2f} ms",
        )
    )
    result.add(
        Figure(
            "raw broker: CPU/message, echo process",
            echo_ms,
            "ms",
            ".3f",
            note="bench.echo_worker alone (consume, publish confirmed, ack)",
        )
    )
    result.add(
        Figure(
            "raw broker: CPU/message, driver + echo",
            echo_ms + driver_ms,
            "ms",
            ".3f",
            note=f"driver (this benchmark process: publish with confirms, consume) {driver_ms:.3f}"
            " ms; RabbitMQ's own CPU not counted",
        )
    )
    result.add(
        Figure(
            "Celery: CPU/task, worker process tree",
            celery_ms,
            "ms",
            ".2f",
            note=f"same workload; celery worker + {pool} prefork children (whole tree); simulator"
            f" {work_cpu.get('simulator', math.nan) * 1000 / n:.2f} ms, driver"
            f" {work_cpu.get('driver', math.nan) * 1000 / n:.2f} ms per task not included",
        )
    )
    result.add(
        Figure(
            "Celery no-op: CPU/task, worker tree",
            noop_ms,
            "ms",
            ".2f",
            note="completion only",
        )
    )
    result.add(
        Figure(
            "video worker / Celery, CPU per segment",
            worker_ms / celery_ms,
            "",
            ".2f",
            CPU_VS_CELERY,
            note=f"{worker_ms:.2f} ms / {celery_ms:.2f} ms (video worker process / Celery worker"
            " tree), same workload, this run",
        )
    )
    result.add(
        Figure(
            "video worker / raw echo, CPU per segment",
            worker_ms / echo_ms,
            "",
            ".1f",
            CPU_VS_RAW,
            note=f"{worker_ms:.2f} ms / {echo_ms:.3f} ms (video worker process / echo process),"
            f" N={n}, this run; / (driver + echo): {worker_ms / (echo_ms + driver_ms):.1f}",
        )
    )
