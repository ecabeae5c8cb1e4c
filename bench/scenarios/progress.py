"""5. Progress latency: many watchers on one running job, over gRPC and over SSE.

Watchers are opened right after `StartVideoJob` of a job of S segments of `latency` s under a
limit: first a single WatchJob (the baseline), then W WatchJob streams (one gRPC channel, as
one client fleet behind one connection), then M at once on a third job, half WatchJob and half
`GET /jobs/{id}/events` (the web page's Server-Sent Events, one aiohttp connection each), each
half in a process of its own (bench.watchers: one Python process decoding ~1.5 million events
would measure itself, not the gateway). For
every event every watcher receives, latency = receive wall time - `event.created_at` (the wall
clock at which the orchestrator committed the event). Events committed before a watcher's
stream was opened are history replay, not progress, and are left out (counted separately).
In the big run "opened" means established (the stream's first bytes arrived), not requested:
1000 streams asked for at once take the gateway a second or two to accept, and events of that
second would otherwise measure the connection storm rather than delivery (the time to open
is reported in the note).
Reported: p50, p99 and max per transport, the event count, and the gateway's CPU seconds and
peak RSS while the M watchers ran (its peak is reset just before, through
/proc/<pid>/clear_refs, where the kernel allows it).

All watchers run on the same cores as the services, so the figures include the clients' own
cost of decoding every message (their CPU is in the "CPU used" rows). Anonymous callers share one
stream limit and one request rate per address, so the gateway runs with both raised.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from orchestrator.v1 import jobs_pb2 as pb

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target, cpu_figure
from bench.jobs import (
    JobStalled,
    Watch,
    require_completed,
    start_video_job,
    watch,
    watch_timeout,
)
from bench.measures import percentile
from bench.scenarios.makespan import ideal_makespan
from bench.stack import RunContext, Stack, cpu_delta, orchestrator_stack
from bench.watchers import Fleet, FleetResult

P99 = Target("<=", 100.0, ".0f")
# Watchers per child process in the big run: one process reading 500 streams falls behind on
# its own (measured: SSE p99 1.3 s with 500 per process, 0.46 s with 125).
WATCHERS_PER_PROCESS = 125
# Every watcher of the benchmark is one anonymous caller (its address): let them all in.
LIMITS_ENV = {
    "MAX_STREAMS_PER_CALLER": "5000",
    "RATE_LIMIT_PER_SECOND": "10000",
    "RATE_LIMIT_BURST": "10000",
}


def latency_stats(seconds: list[float], seen: list[Watch] | None) -> dict[str, Any]:
    """p50/p90/p99/max in milliseconds (and counts, given the watchers)."""
    latencies = sorted(value * 1000 for value in seconds)
    stats: dict[str, Any] = {
        "events_measured": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else math.nan,
    }
    if seen is not None:
        stats.update(
            watchers=len(seen),
            events_received=sum(one.events for one in seen),
            events_replayed=sum(one.replayed for one in seen),
        )
    return stats


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: "5" > clear_refs); False if not
    allowed, and the peak then covers the process's whole life."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def watched_job(stack: Stack, sizes: Sizes, watchers: int) -> dict[str, Any]:
    """One job of `progress_segments` watched by `watchers` WatchJob streams of this process."""
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
    latencies = [seconds for one in seen for seconds in one.live_latencies]
    return {
        "job_events": seen[0].events,
        "grpc": latency_stats(latencies, seen),
        "makespan": makespan,
        "cpu_seconds": cpu,
    }


async def fleet_job(
    stack: Stack, sizes: Sizes, workdir: Path, *, grpc_watchers: int, sse_watchers: int
) -> dict[str, Any]:
    """One job watched by two child processes of watchers (bench.watchers), one per transport,
    opened together right after StartVideoJob; the gateway's CPU and peak RSS meanwhile."""
    n, limit = sizes.progress_segments, sizes.progress_concurrency
    give_up = watch_timeout(ideal_makespan(n, limit, sizes.progress_latency))
    fleets = [
        Fleet(transport, share, workdir / f"watchers-{transport}-{i}")
        for transport, count in (("grpc", grpc_watchers), ("sse", sse_watchers))
        for i, share in enumerate(_shares(count, WATCHERS_PER_PROCESS))
    ]
    try:
        for fleet in fleets:
            await fleet.start(stack.env["GRPC_ADDR"], f"http://{stack.env['HTTP_ADDR']}", give_up)
        gateway_pid = stack.gateway.proc.pid if stack.gateway.proc else None
        peak_reset = gateway_pid is not None and await asyncio.to_thread(
            reset_peak_rss, gateway_pid
        )
        cpu_before = await stack.cpu_seconds()
        began = time.time()
        job_id, _ = await start_video_job(stack.stub, n)
        for fleet in fleets:
            fleet.go(job_id)
        results = [await fleet.result() for fleet in fleets]
        cpu = cpu_delta(cpu_before, await stack.cpu_seconds())
        peak_rss = await stack.gateway.peak_rss_mb()
    finally:
        for fleet in fleets:
            await fleet.stop()
    for result in results:
        for status in result.statuses:
            if status != pb.JOB_STATUS_COMPLETED:
                raise JobStalled(f"job {job_id} ended {status} for a {result.transport} watcher")
    stats = {t: fleet_stats([r for r in results if r.transport == t]) for t in ("grpc", "sse")}
    for t in ("grpc", "sse"):
        cpu[f"{t} watchers"] = round(sum(r.cpu_seconds for r in results if r.transport == t), 2)
    every = [s for r in results for s in r.latencies]
    return {
        "job_events": results[0].events // max(1, results[0].watchers),
        "watcher_processes": len(fleets),
        **stats,
        "all": latency_stats(every, None),
        "events_replayed": sum(r.replayed for r in results),
        "makespan": max(r.finished_at for r in results) - began,
        "cpu_seconds": cpu,
        "gateway_peak_rss_mb": peak_rss,
        "gateway_peak_reset": peak_reset,
    }


def fleet_stats(results: list[FleetResult]) -> dict[str, Any]:
    stats = latency_stats([s for r in results for s in r.latencies], None)
    connected = sorted(seconds * 1000 for r in results for seconds in r.connected)
    stats.update(
        watchers=sum(r.watchers for r in results),
        events_received=sum(r.events for r in results),
        events_replayed=sum(r.replayed for r in results),
        connect_p50_ms=percentile(connected, 50),
        connect_max_ms=connected[-1] if connected else math.nan,
    )
    return stats


def _shares(count: int, per_process: int) -> list[int]:
    """`count` watchers split as evenly as possible over processes of at most `per_process`."""
    processes = max(1, math.ceil(count / per_process))
    return [count // processes + (i < count % processes) for i in range(processes)]


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    w, m, n = sizes.progress_watchers, sizes.progress_mixed_watchers, sizes.progress_segments
    latency, limit = sizes.progress_latency, sizes.progress_concurrency
    env = {
        "FAL_CONCURRENCY": str(limit),
        "FAL_POLL_INTERVAL": str(sizes.polling_interval),
        **LIMITS_ENV,
    }
    result.raw.update(segments=n, latency=latency, limit=limit, settings=env)
    async with orchestrator_stack(
        ctx, "progress", sim_config={"latency": latency}, env=env
    ) as stack:
        say(f"progress: 1 watcher (baseline) on a job of {n} segments x {latency}s, limit {limit}")
        single = await watched_job(stack, sizes, 1)
        say(f"progress: {w} WatchJob watchers on another job of {n} segments")
        many = await watched_job(stack, sizes, w)
        half = m // 2
        say(f"progress: {m} watchers ({m - half} WatchJob + {half} SSE) on a third job")
        mixed = await fleet_job(
            stack, sizes, ctx.workdir, grpc_watchers=m - half, sse_watchers=half
        )
    result.raw.update(single=single, many=many, mixed=mixed)
    _report(result, single, many, mixed, w, m)


def _report(
    result: ScenarioResult,
    single: dict[str, Any],
    many: dict[str, Any],
    mixed: dict[str, Any],
    w: int,
    m: int,
) -> None:
    grpc = many["grpc"]
    say(f"progress: {w} gRPC: p50 {grpc['p50_ms']:.1f} ms, p99 {grpc['p99_ms']:.1f} ms")
    result.add(Figure("p50 event latency", grpc["p50_ms"], "ms", ".1f", note=f"{w} watchers"))
    result.add(Figure("p99 event latency", grpc["p99_ms"], "ms", ".1f", P99, note=f"{w} watchers"))
    half = m // 2
    for name, count in (("grpc", m - half), ("sse", half)):
        stats = mixed[name]
        label = "WatchJob" if name == "grpc" else "SSE"
        say(
            f"progress: {m} mixed, {label}: p50 {stats['p50_ms']:.1f} ms,"
            f" p99 {stats['p99_ms']:.1f} ms, max {stats['max_ms']:.0f} ms"
            f" over {stats['events_measured']} events"
        )
        note = (
            f"{count} of {m}; max {stats['max_ms']:.0f} ms; streams opened in"
            f" {stats['connect_p50_ms']:.0f} ms (p50), {stats['connect_max_ms']:.0f} ms (max)"
        )
        result.add(Figure(f"{m} watchers, {label}: p50", stats["p50_ms"], "ms", ".1f", note=note))
        result.add(
            Figure(f"{m} watchers, {label}: p99", stats["p99_ms"], "ms", ".1f", P99, note=note)
        )
    every = mixed["all"]
    result.add(
        Figure(
            f"{m} watchers: events measured",
            every["events_measured"],
            "",
            ".0f",
            note=f"{mixed['job_events']}/job x {m}; {mixed['events_replayed']} replayed left out",
        )
    )
    gateway_cpu = mixed["cpu_seconds"].get("gateway")
    result.add(
        Figure(
            f"{m} watchers: gateway CPU",
            gateway_cpu,
            "cpu-s",
            ".1f",
            note=f"wall {mixed['makespan']:.1f}s",
        )
    )
    result.add(
        Figure(
            f"{m} watchers: gateway peak RSS",
            mixed["gateway_peak_rss_mb"],
            "MB",
            ".0f",
            note="during the job" if mixed["gateway_peak_reset"] else "since the gateway started",
        )
    )
    result.add(cpu_figure(f"{m} watchers: CPU used", mixed["cpu_seconds"], mixed["makespan"]))
    result.add(cpu_figure(f"{w} watchers: CPU used", many["cpu_seconds"], many["makespan"]))
    result.add(
        Figure(
            "1 watcher: p50 / p99 event latency",
            single["grpc"]["p50_ms"],
            "ms",
            ".1f",
            note=f"p99 {single['grpc']['p99_ms']:.1f} ms; baseline, same job size, same stack",
        )
    )
