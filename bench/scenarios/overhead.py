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

The three run back to back, `overhead_rounds` times (3 in the full run). Every figure is the
median over the rounds, a ratio (or a sum) taken within each round first; the main figures'
notes list each round's value. This machine's speed drifts within a minute (the raw broker
managed 721 and then 2278 msg/s in two rounds of one run), and a single round compared a
Celery run made 15 s after the orchestrator's.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.broker_limit import raw_round_trip
from bench.celery_peer import celery_rates
from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target
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
# A value read from one round's figures (`round_values`).
PerRound = Callable[[dict[str, float]], float]


async def orchestrator_rate(
    ctx: RunContext, sizes: Sizes, name: str = "overhead-orchestrator"
) -> dict[str, Any]:
    """Segments per second end to end for one job of `overhead_segments` segments."""
    n = sizes.overhead_segments
    env = {
        "FAL_POLL_INTERVAL": str(sizes.overhead_poll_interval),
        # The provider answers at once: check the status right after the submit, in the same
        # step, as the Celery peer's task does (and as fal's own subscribe() does).
        "FAL_FIRST_POLL_DELAY": "0",
        "FAL_CONCURRENCY": str(sizes.overhead_concurrency),
    }
    async with orchestrator_stack(ctx, name, sim_config={"latency": 0}, env=env) as stack:
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
    n, rounds = sizes.overhead_segments, sizes.overhead_rounds
    measured: list[dict[str, Any]] = []
    for i in range(rounds):
        of, tag = (f" (round {i + 1} of {rounds})", f"-{i + 1}") if rounds > 1 else ("", "")
        say(f"overhead: orchestrator, {n} segments, zero-latency provider{of}")
        orch = await orchestrator_rate(ctx, sizes, f"overhead-orchestrator{tag}")
        say(f"overhead: orchestrator {orch['rate']:.0f} segments/s; raw broker round trip{of}")
        log_dir = ctx.workdir / f"overhead-raw{tag}"
        log_dir.mkdir(parents=True, exist_ok=True)
        raw = await raw_round_trip(ctx.options.amqp_url, ctx.new_prefix(), n, log_dir)
        say(f"overhead: raw {raw['rate']:.0f} msgs/s; Celery peer, {n} tasks x 2 variants{of}")
        celery = await celery_rates(ctx, sizes, f"overhead-celery{tag}")
        measured.append({"orchestrator": orch, "raw_broker": raw, "celery": celery})
    result.raw["rounds"] = measured
    pool = measured[0]["celery"]["workload"]["pool_processes"]
    add_figures(result, sizes, [round_values(m, n) for m in measured], pool)


def round_values(measured: dict[str, Any], n: int) -> dict[str, float]:
    """Every figure of one round (orchestrator, raw broker and Celery run back to back)."""
    orch, raw, celery = measured["orchestrator"], measured["raw_broker"], measured["celery"]
    work, noop = celery["workload"], celery["noop"]
    values = {
        "rate": orch["rate"],
        "seconds": orch["seconds"],
        "raw_rate": raw["rate"],
        "celery_rate": work["rate"],
        "noop_rate": noop["rate"],
        "worker_ms": video_worker_seconds(orch["cpu_seconds"]) * 1000 / n,
        "echo_ms": raw["cpu_seconds"]["echo_worker"] * 1000 / n,
        "driver_ms": raw["cpu_seconds"]["driver"] * 1000 / n,
        "celery_ms": work["cpu_seconds"]["celery_worker_tree"] * 1000 / n,
        "noop_ms": noop["cpu_seconds"]["celery_worker_tree"] * 1000 / n,
        "celery_sim_ms": work["cpu_seconds"].get("simulator", math.nan) * 1000 / n,
        "celery_driver_ms": work["cpu_seconds"].get("driver", math.nan) * 1000 / n,
    }
    # Each process's CPU per segment (`cpu:` keys).
    values |= {f"cpu:{name}": ms for name, ms in per_unit_ms(orch["cpu_seconds"], n).items()}
    return values


def add_figures(
    result: ScenarioResult, sizes: Sizes, rounds: list[dict[str, float]], pool: object
) -> None:
    """The table's rows: with several rounds, each the median of what the rounds measured (a
    ratio or a sum is taken within each round, then its median); the main figures' notes list
    each round's value."""
    n, k = sizes.overhead_segments, len(rounds)

    def value(top: str, bottom: str | None = None) -> PerRound:
        """One round's `top`, or its `top / bottom`."""
        return lambda r: r[top] / r[bottom] if bottom else r[top]

    def median_of(of: PerRound) -> float:
        return statistics.median(of(r) for r in rounds)

    def mid(key: str) -> float:
        return median_of(value(key))

    def ratio(top: str, bottom: str) -> float:
        return median_of(value(top, bottom))

    def listed(of: PerRound, fmt: str = ".2f") -> str:
        """'; rounds: a / b / c', nothing with one round."""
        if k == 1:
            return ""
        return "; rounds: " + " / ".join(f"{of(r):{fmt}}" for r in rounds)

    def each(top: str, bottom: str | None = None, fmt: str = ".2f") -> str:
        return listed(value(top, bottom), fmt)

    scope = "this run" if k == 1 else f"times: medians of {k} rounds; figure: median ratio"
    result.add(
        Figure(
            "orchestrator end to end",
            mid("rate"),
            "seg/s",
            ".0f",
            note=f"N={n} in {mid('seconds'):.2f}s; poll {sizes.overhead_poll_interval}s, no"
            f" provider limit{each('rate', fmt='.0f')}",
        )
    )
    result.add(
        Figure(
            "raw broker round trip",
            mid("raw_rate"),
            "msg/s",
            ".0f",
            note=f"aio-pika, confirms, echo process{each('raw_rate', fmt='.0f')}",
        )
    )
    result.add(
        Figure(
            "Celery, same workload",
            mid("celery_rate"),
            "task/s",
            ".0f",
            note=f"prefork x{sizes.celery_concurrency}, sync httpx{each('celery_rate', fmt='.0f')}",
        )
    )
    result.add(
        Figure("Celery, no-op task", mid("noop_rate"), "task/s", ".0f", note="completion only")
    )
    result.add(
        Figure(
            "orchestrator / raw",
            ratio("rate", "raw_rate"),
            "",
            ".2f",
            VS_RAW,
            note=each("rate", "raw_rate").removeprefix("; "),
        )
    )
    result.add(
        Figure(
            "orchestrator / Celery (same workload)",
            ratio("rate", "celery_rate"),
            "",
            ".2f",
            VS_CELERY,
            note=each("rate", "celery_rate").removeprefix("; "),
        )
    )
    result.add(Figure("orchestrator / Celery (no-op)", ratio("rate", "noop_rate"), "", ".2f"))
    # Processes measured in every round (one whose reading failed in a round is left out).
    measured = [
        key for key in rounds[0] if key.startswith("cpu:") and all(key in r for r in rounds)
    ]

    def cpu_total(r: dict[str, float]) -> float:
        return sum(r[key] for key in measured)

    parts = ", ".join(f"{key.removeprefix('cpu:')} {mid(key):.2f}" for key in measured)
    result.add(
        Figure(
            "orchestrator: CPU per segment",
            median_of(cpu_total),
            "ms/seg",
            ".2f",
            note=f"ms/seg: {parts}"
            + (f" (each a median of {k} rounds)" if k > 1 else "")
            + f"; wall {mid('seconds'):.1f}s"
            + listed(cpu_total),
        )
    )
    worker_ms = mid("worker_ms")
    gateway_ms = mid("cpu:gateway") if "cpu:gateway" in measured else math.nan
    gateway_and_worker = median_of(lambda r: r.get("cpu:gateway", math.nan) + r["worker_ms"])
    result.add(
        Figure(
            "orchestrator: video worker CPU/segment",
            worker_ms,
            "ms",
            ".2f",
            note=f"gateway {gateway_ms:.2f} ms; gateway + worker {gateway_and_worker:.2f}"
            " ms" + each("worker_ms"),
        )
    )
    result.add(
        Figure(
            "raw broker: CPU/message, echo process",
            mid("echo_ms"),
            "ms",
            ".3f",
            note="bench.echo_worker alone (consume, publish confirmed, ack)"
            + each("echo_ms", fmt=".3f"),
        )
    )
    driver_ms = mid("driver_ms")
    result.add(
        Figure(
            "raw broker: CPU/message, driver + echo",
            median_of(lambda r: r["echo_ms"] + r["driver_ms"]),
            "ms",
            ".3f",
            note=f"driver (this benchmark process: publish with confirms, consume) {driver_ms:.3f}"
            " ms; RabbitMQ's own CPU not counted",
        )
    )
    result.add(
        Figure(
            "Celery: CPU/task, worker process tree",
            mid("celery_ms"),
            "ms",
            ".2f",
            note=f"same workload; celery worker + {pool} prefork children (whole"
            f" tree); simulator {mid('celery_sim_ms'):.2f} ms, driver"
            f" {mid('celery_driver_ms'):.2f} ms per task not included" + each("celery_ms"),
        )
    )
    result.add(
        Figure(
            "Celery no-op: CPU/task, worker tree",
            mid("noop_ms"),
            "ms",
            ".2f",
            note="completion only",
        )
    )
    result.add(
        Figure(
            "video worker / Celery, CPU per segment",
            ratio("worker_ms", "celery_ms"),
            "",
            ".2f",
            CPU_VS_CELERY,
            note=f"{worker_ms:.2f} ms / {mid('celery_ms'):.2f} ms (video worker process / Celery"
            f" worker tree), same workload, {scope}" + each("worker_ms", "celery_ms"),
        )
    )
    vs_echo_and_driver = median_of(lambda r: r["worker_ms"] / (r["echo_ms"] + r["driver_ms"]))
    result.add(
        Figure(
            "video worker / raw echo, CPU per segment",
            ratio("worker_ms", "echo_ms"),
            "",
            ".1f",
            CPU_VS_RAW,
            note=f"{worker_ms:.2f} ms / {mid('echo_ms'):.3f} ms (video worker process / echo"
            f" process), N={n}, {scope}; / (driver + echo):"
            f" {vs_echo_and_driver:.1f}" + each("worker_ms", "echo_ms", fmt=".1f"),
        )
    )
