"""6. Scale: one job of 10 000 segments (zero-latency provider).

- **start latency**: the `StartVideoJob` RPC alone (the job and all its tasks are committed
  before it answers);
- **peak RSS** of the gateway and the video worker: `VmHWM` from `/proc/<pid>/status` (the
  kernel's high-water mark of the resident set) read after the job finished;
- **end to end** segments per second, as in the overhead scenario (information);
- **replay**: after the job finished, a fresh `WatchJob` with `after_cursor=0` read to its end;
  events per second = events / (time from opening the stream to its terminal event).
"""

from __future__ import annotations

import time

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult, Target, cpu_figure
from bench.jobs import require_completed, start_video_job, watch, watch_timeout
from bench.stack import RunContext, cpu_delta, orchestrator_stack

START_SECONDS = Target("<=", 2.0)
GATEWAY_RSS_MB = Target("<=", 300.0, ".0f")


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    n = sizes.scale_segments
    say(f"scale: one job of {n} segments, zero-latency provider")
    env = {
        "FAL_POLL_INTERVAL": str(sizes.overhead_poll_interval),
        # The provider answers at once: check the status right after the submit, in the same
        # step, as the Celery peer's task does (and as fal's own subscribe() does).
        "FAL_FIRST_POLL_DELAY": "0",
        "FAL_CONCURRENCY": str(sizes.overhead_concurrency),
    }
    async with orchestrator_stack(ctx, "scale", sim_config={"latency": 0}, env=env) as stack:
        cpu_before = await stack.cpu_seconds()
        began = time.perf_counter()
        job_id, rpc_seconds = await start_video_job(stack.stub, n)
        say(f"scale: StartVideoJob took {rpc_seconds:.2f}s; waiting for the job to finish")
        live = await watch(stack.stub, job_id, give_up_after=watch_timeout(n / 20))
        require_completed(live, job_id)
        assert live.ended_at is not None
        seconds = live.ended_at - began
        cpu = cpu_delta(cpu_before, await stack.cpu_seconds())
        gateway_rss = await stack.gateway.peak_rss_mb()
        worker_rss = await stack.worker.peak_rss_mb()
        say(f"scale: job done in {seconds:.1f}s; replaying its history")
        replay_began = time.perf_counter()
        replay = await watch(stack.stub, job_id, give_up_after=watch_timeout(n / 100))
        assert replay.ended_at is not None
        replay_seconds = replay.ended_at - replay_began
        gateway_rss_after_replay = await stack.gateway.peak_rss_mb()
    result.raw.update(
        segments=n,
        start_rpc_seconds=rpc_seconds,
        seconds=seconds,
        rate=n / seconds,
        gateway_peak_rss_mb=gateway_rss,
        worker_peak_rss_mb=worker_rss,
        gateway_peak_rss_after_replay_mb=gateway_rss_after_replay,
        events=live.events,
        replay_events=replay.events,
        replay_seconds=replay_seconds,
        replay_rate=replay.events / replay_seconds,
        settings=env,
        cpu_seconds=cpu,
    )
    result.add(
        Figure(
            "StartVideoJob latency", rpc_seconds, "s", ".2f", START_SECONDS, note=f"{n} segments"
        )
    )
    result.add(Figure("gateway peak RSS", gateway_rss, "MB", ".0f", GATEWAY_RSS_MB, note="VmHWM"))
    result.add(Figure("video worker peak RSS", worker_rss, "MB", ".0f", note="VmHWM"))
    result.add(Figure("end to end", n / seconds, "seg/s", ".0f", note=f"{seconds:.1f}s"))
    result.add(cpu_figure("CPU used by the job", cpu, seconds))
    result.add(
        Figure(
            "WatchJob replay",
            replay.events / replay_seconds,
            "events/s",
            ".0f",
            note=f"{replay.events} events in {replay_seconds:.2f}s (live stream saw"
            f" {live.events}); gateway VmHWM after it {gateway_rss_after_replay or 0:.0f} MB",
        )
    )
