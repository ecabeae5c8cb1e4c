"""9. Spend: provider submits paid per delivered segment, webhooks on.

Submits per delivered segment = the simulator's `accepted_requests` (submits fal accepted, so
paid) / segments that succeeded. 1.00 means nothing was paid twice. Two runs on fresh stacks,
each one job of N segments of `latency` s under `FAL_CONCURRENCY=limit`, with
`PUBLIC_HTTP_URL` set to the gateway's HTTP port (fal calls back when a generation finishes;
each submit's webhook URL names its task and attempt) and the service's default 2 s poll as
the fallback:

- **faults**: the faults scenario's 20 % transient faults on every fal call (429 with
  Retry-After, 502, 503, 504, and timeouts held longer than `FAL_TIMEOUT`; none of them is a
  submit fal accepted), `VIDEO_MAX_RETRIES=10`;
- **kills**: every submit is accepted at once and its answer held `spend_submit_hold` s
  (simulator rule `slow_response` on submit), so at any moment several paid submits have no
  request id on our side yet. `spend_kills` times, once a share of the job has been submitted
  and at least `MIN_IN_FLIGHT` paid submits are unanswered, the video worker gets SIGKILL
  (its whole process group), and a new one is started as soon as RabbitMQ has dropped the dead
  one's consumer. Unanswered paid submits at each kill are counted from the simulator's
  counters (accepted - answered with 200). Target 1.00: a task whose worker died mid-submit
  adopts the request fal's webhook names instead of submitting again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target, cpu_figure
from bench.jobs import (
    STALL_AFTER,
    get_job,
    require_completed,
    start_video_job,
    watch,
    watch_timeout,
)
from bench.probes import consumer_count
from bench.scenarios.faults import fault_groups
from bench.scenarios.makespan import ideal_makespan
from bench.simulator import Simulator, provider_calls
from bench.stack import RunContext, Stack, cpu_delta, orchestrator_stack
from common.broker import Topology
from common.domain.kinds import BUILTIN_KINDS, VIDEO_SEGMENT
from common.domain.scheduling import WINDOW

ONE_SUBMIT = Target("==", 1.0)
# A kill counts as mid-submit when at least this many paid submits are unanswered.
MIN_IN_FLIGHT = 3
# How long to wait for a kill's moment, and for RabbitMQ to drop a dead worker's consumer.
KILL_WAIT = 120.0
CONSUMER_GONE_WAIT = 15.0
STATS_EVERY = 0.02
FALLBACK_POLL = "2"
# A retry past the fleet-wide retry budget waits for the end of the minute (no event meanwhile),
# and may be refused again in the next one while the busy minute before still counts.
RETRY_BUDGET_WAITS = 3


async def unanswered_paid_submits(sim: Simulator) -> tuple[int, int]:
    """(submits fal accepted, of those not yet answered) right now."""
    stats = await sim.stats()
    answered = int(stats.get("responses", {}).get("submit", {}).get("200", 0))
    accepted = int(stats["accepted_requests"])
    return accepted, accepted - answered


async def kill_mid_submit(stack: Stack, accepted_at_least: int) -> dict[str, Any]:
    """Wait until `accepted_at_least` submits were accepted and some are unanswered, SIGKILL
    the video worker, restart it; what was in flight and how long the worker was away."""
    worker = stack.worker
    deadline = time.monotonic() + KILL_WAIT
    while True:
        accepted, in_flight = await unanswered_paid_submits(stack.sim)
        if accepted >= accepted_at_least and in_flight >= MIN_IN_FLIGHT:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no moment to kill mid-submit within {KILL_WAIT:.0f}s (accepted {accepted},"
                f" unanswered {in_flight})"
            )
        await asyncio.sleep(STATS_EVERY)
    assert worker.proc is not None
    killed_at = time.perf_counter()
    os.killpg(worker.proc.pid, signal.SIGKILL)
    await worker.proc.wait()
    queue = Topology(prefix=stack.env["QUEUE_PREFIX"], queues=BUILTIN_KINDS.queues).work_queue(
        VIDEO_SEGMENT.queue
    )
    # The restarted worker is ready when the queue has a consumer again: not the dead one's.
    gone_by = time.monotonic() + CONSUMER_GONE_WAIT
    while time.monotonic() < gone_by:
        if await consumer_count(stack.env["AMQP_URL"], queue) == 0:
            break
        await asyncio.sleep(0.1)
    await worker.start()
    return {
        "accepted": accepted,
        "unanswered_paid_submits": in_flight,
        "down_seconds": time.perf_counter() - killed_at,
    }


async def spend_run(
    ctx: RunContext,
    name: str,
    sizes: Sizes,
    *,
    sim_config: dict[str, Any],
    env: dict[str, str],
    kills: int,
) -> dict[str, Any]:
    """One job on a fresh stack with webhooks on, `kills` worker kills mid-submit."""
    n, limit, latency = sizes.spend_segments, sizes.utilisation_concurrency, sizes.spend_latency
    settings = {"FAL_CONCURRENCY": str(limit), "FAL_POLL_INTERVAL": FALLBACK_POLL, **env}
    config = {"latency": latency, **sim_config}
    ideal = ideal_makespan(n, limit, latency)
    async with orchestrator_stack(
        ctx, name, sim_config=config, env=settings, webhooks=True
    ) as stack:
        cpu_before = await stack.cpu_seconds()
        began = time.perf_counter()
        job_id, _ = await start_video_job(stack.stub, n)
        watching = asyncio.create_task(
            watch(
                stack.stub,
                job_id,
                give_up_after=watch_timeout(ideal) + RETRY_BUDGET_WAITS * WINDOW + 30 * kills,
                stall_after=STALL_AFTER + WINDOW,
            )
        )
        killed = []
        try:
            for i in range(kills):
                one = await kill_mid_submit(stack, (i + 1) * n // (kills + 1))
                killed.append(one)
                say(
                    f"spend ({name}): kill {i + 1}: {one['unanswered_paid_submits']} paid"
                    f" submits unanswered; worker back after {one['down_seconds']:.1f}s"
                )
            seen = await watching
        finally:
            watching.cancel()  # when a kill failed
        assert seen.ended_at is not None
        makespan = seen.ended_at - began
        cpu = cpu_delta(cpu_before, await stack.cpu_seconds())
        job = await get_job(stack.stub, job_id)
        stats = await stack.sim.stats()
    require_completed(seen, job_id)
    attempts = [task.attempts for task in job.tasks]
    return {
        "segments": n,
        "limit": limit,
        "latency": latency,
        "makespan": makespan,
        "ideal": ideal,
        "succeeded": job.succeeded_tasks,
        "accepted_requests": stats["accepted_requests"],
        "submits_total": stats["submits_total"],
        "submits_per_segment": stats["accepted_requests"] / max(job.succeeded_tasks, 1),
        "duplicate_payloads": stats["duplicate_submits"],
        "provider_calls": provider_calls(stats),
        "webhooks_sent": stats["webhooks_sent"],
        "retries": sum(a - 1 for a in attempts if a > 0),
        "kills": killed,
        "event_types": dict(seen.types),
        "settings": settings,
        "simulator_config": config,
        "cpu_seconds": cpu,
        "simulator": stats,
    }


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    n = sizes.spend_segments
    say(f"spend (faults): {n} segments x {sizes.spend_latency}s, {sizes.fault_rate:.0%} faults")
    faults_env = {
        "FAL_TIMEOUT": str(sizes.fault_call_timeout),
        "VIDEO_MAX_RETRIES": str(sizes.fault_max_retries),
    }
    if sizes.fault_breaker_open_seconds is not None:
        faults_env["BREAKER_OPEN_SECONDS"] = str(sizes.fault_breaker_open_seconds)
    if sizes.retry_budget_floor is not None:
        faults_env["RETRY_BUDGET_FLOOR"] = str(sizes.retry_budget_floor)
    faulty = await spend_run(
        ctx,
        "spend-faults",
        sizes,
        sim_config={
            "faults": fault_groups(sizes.fault_rate),
            "hang_seconds": sizes.fault_hang_seconds,
        },
        env=faults_env,
        kills=0,
    )
    result.raw["faults"] = faulty
    injected = sum(sum(k.values()) for k in faulty["simulator"]["faults_injected"].values())
    result.add(
        Figure(
            "faults: submits per delivered segment",
            faulty["submits_per_segment"],
            "",
            ".2f",
            note=f"{faulty['accepted_requests']} accepted of {faulty['submits_total']} sent,"
            f" {faulty['succeeded']}/{n} delivered; {injected} faults injected in"
            f" {faulty['provider_calls']} calls, {faulty['retries']} retries",
        )
    )
    say(f"spend (kills): {n} segments, {sizes.spend_kills} video worker SIGKILLs mid-submit")
    killing = await spend_run(
        ctx,
        "spend-kills",
        sizes,
        sim_config={
            "rules": [{"endpoint": "submit", "fault": "slow_response"}],
            "hang_seconds": sizes.spend_submit_hold,
        },
        env={},
        kills=sizes.spend_kills,
    )
    result.raw["kills"] = killing
    orphaned = sum(k["unanswered_paid_submits"] for k in killing["kills"])
    result.add(
        Figure(
            "kills: submits per delivered segment",
            killing["submits_per_segment"],
            "",
            ".2f",
            ONE_SUBMIT,
            note=f"{killing['accepted_requests']} accepted, {killing['succeeded']}/{n} delivered;"
            f" {len(killing['kills'])} SIGKILLs with {orphaned} paid submits unanswered;"
            f" {killing['duplicate_payloads']} segments paid more than once",
        )
    )
    for mode, raw in (("faults", faulty), ("kills", killing)):
        result.add(cpu_figure(f"{mode}: CPU used by the job", raw["cpu_seconds"], raw["makespan"]))
