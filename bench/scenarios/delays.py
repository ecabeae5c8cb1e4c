"""10. Delayed delivery: how late RabbitMQ's delay tiers hand back a delayed message.

Every poll, retry and deferral of a task is a delayed message (common.broker.delays), and a
poll that arrives late is a provider slot left idle after its generation ended. N messages with
delays drawn uniformly from [`delay_min`, `delay_max`] s are published through the
orchestrator's own broker (`open_broker`, a fresh topology) in batches, as a worker does, and
consumed by the same process; lateness = receive wall time - due time (publish + delay; never
negative by the broker's contract). Measured with the default topology and, in the same run,
with the earlier 15 ms tolerance (a remainder of 15-50 ms parked a whole 50 ms tier), to show
what the tolerance is worth on this machine today. Hops per message (early arrivals parked in a
tier again, `orchestrator_broker_delay_hops_total`) with the default topology and without its
hold (`delay_hold_ms=0`, the earlier default: only the smallest tier waited out in-process).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from prometheus_client import REGISTRY

from bench.config import Sizes
from bench.console import say
from bench.figures import Figure, ScenarioResult
from bench.measures import percentile
from bench.stack import RunContext
from common.broker import Incoming, Outgoing, Topology, delete_topology, open_broker

BATCH = 20
EARLIER_TOLERANCE_MS = 15
QUEUE = "delays"


async def lateness(url: str, topology: Topology, sizes: Sizes) -> list[float]:
    """Seconds each of `sizes.delay_messages` delayed messages arrived after its due time."""
    late: list[float] = []
    received = asyncio.Event()
    n = sizes.delay_messages

    async def handler(message: Incoming) -> None:
        late.append(time.time() - float(message.body))
        if len(late) == n:
            received.set()

    rnd = random.Random(10)
    try:
        async with open_broker(url, topology) as broker:
            await broker.consume(QUEUE, handler, prefetch=100)
            for start in range(0, n, BATCH):
                batch = []
                for _ in range(min(BATCH, n - start)):
                    delay = rnd.uniform(sizes.delay_min, sizes.delay_max)
                    batch.append(Outgoing(QUEUE, str(time.time() + delay).encode(), delay=delay))
                await broker.publish(batch)
                await asyncio.sleep(sizes.delay_max / (n / BATCH))  # spread over one max delay
            await asyncio.wait_for(received.wait(), timeout=sizes.delay_max * 4 + 30)
    finally:
        await delete_topology(url, topology)
    return sorted(late)


def hops_so_far() -> float:
    """Early arrivals this process parked in a tier again (common.broker's counter)."""
    value = REGISTRY.get_sample_value("orchestrator_broker_delay_hops_total", {"queue": QUEUE})
    return value or 0.0


async def run(ctx: RunContext, sizes: Sizes, result: ScenarioResult) -> None:
    n = sizes.delay_messages
    say(f"delays: {n} messages, delays {sizes.delay_min}-{sizes.delay_max}s")
    runs: dict[str, tuple[list[float], float]] = {}
    default_hold = Topology().delay_hold_ms
    variants = {  # name: (tolerance, hold)
        "default": (None, default_hold),
        "no hold": (None, 0),
        "earlier": (EARLIER_TOLERANCE_MS, 0),
    }
    for name, (tolerance, hold) in variants.items():
        topology = Topology(
            prefix=ctx.new_prefix(),
            queues=(QUEUE,),
            delay_tolerance_ms=tolerance,
            delay_hold_ms=hold,
        )
        before_hops = hops_so_far()
        late = await lateness(ctx.options.amqp_url, topology, sizes)
        runs[name] = late, (hops_so_far() - before_hops) / n
    result.raw = {
        name: {
            "mean_ms": statistics.fmean(late) * 1000,
            "p50_ms": percentile(late, 50) * 1000,
            "p99_ms": percentile(late, 99) * 1000,
            "min_ms": late[0] * 1000,
            "hops_per_message": hops,
        }
        for name, (late, hops) in runs.items()
    }
    now, before = result.raw["default"], result.raw["earlier"]
    no_hold = result.raw["no hold"]
    result.add(Figure("lateness: mean", now["mean_ms"], "ms", note=f"{n} messages"))
    result.add(
        Figure("lateness: p50 / p99", now["p50_ms"], "ms", note=f"p99 {now['p99_ms']:.1f} ms")
    )
    result.add(
        Figure(
            "lateness, 15 ms tolerance: mean",
            before["mean_ms"],
            "ms",
            note=f"p50 {before['p50_ms']:.1f}, p99 {before['p99_ms']:.1f} ms;"
            f" mean {before['mean_ms'] / max(now['mean_ms'], 1e-3):.1f} x the default's",
        )
    )
    result.add(
        Figure(
            "hops per message",
            now["hops_per_message"],
            "",
            ".2f",
            note=f"without the hold {no_hold['hops_per_message']:.2f}"
            f" (lateness mean {no_hold['mean_ms']:.1f} ms); each hop a delivery, a confirmed"
            " publish and an ack",
        )
    )
