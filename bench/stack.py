"""One orchestrator stack in real processes: simulator, gateway and video worker.

Every stack is fresh: its own database, its own queue prefix (the topology is deleted
afterwards), its own simulator (so its counters belong to one scenario). Processes are
stopped in reverse order with SIGTERM, whatever happens; on failure the tails of their logs
are printed.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

from bench.config import RunOptions
from bench.console import best_effort
from bench.database import fresh_database
from bench.probes import consuming, http_ok
from bench.procs import ChildProcess, free_port
from bench.simulator import Simulator, running_simulator
from common.broker import Topology, delete_topology
from common.domain.kinds import BUILTIN_KINDS, VIDEO_SEGMENT

# Only the type stubs know the async stub class; at run time it is JobServiceStub.
Stub: TypeAlias = "pb_grpc.JobServiceAsyncStub"

FAL_KEY = "bench-fal-key-0123456789"
# Big enough for the 10 000-task GetJob answer of the scale scenario.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Service settings every stack shares; scenarios override what they measure.
BASE_ENV = {
    "FAL_KEY": FAL_KEY,
    "FAL_TIMEOUT": "10",
    "FAL_POLL_INTERVAL": "0.25",
    "FAL_CONCURRENCY": "50",
    "VIDEO_MAX_RETRIES": "3",
    "VIDEO_BACKOFF_INITIAL": "0.2",
    "VIDEO_BACKOFF_CAP": "2",
    "MAX_RETRY_AFTER": "2",
    # Well above any scenario's poll interval: the sweeper never re-issues live work.
    "STALE_AFTER": "120",
    "DRAIN_SECONDS": "5",
}


@dataclass
class RunContext:
    """What every stack of one run shares: options and the run's scratch directory."""

    options: RunOptions
    workdir: Path

    def new_prefix(self) -> str:
        """A queue prefix nobody else uses (its topology is deleted after the stack)."""
        return f"bench-{uuid.uuid4().hex[:10]}"


@dataclass
class Stack:
    """A running stack: the settings it was started with, its processes and a gRPC stub."""

    env: dict[str, str]
    sim: Simulator
    gateway: ChildProcess
    worker: ChildProcess
    stub: Stub
    # Video workers after the first (`video_workers` > 1).
    more_workers: list[ChildProcess] = field(default_factory=list)

    @property
    def workers(self) -> list[ChildProcess]:
        return [self.worker, *self.more_workers]

    async def cpu_seconds(self) -> dict[str, float | None]:
        """CPU seconds used so far by each process of the stack and by this client."""
        return {
            "gateway": await self.gateway.cpu_seconds(),
            **{w.name: await w.cpu_seconds() for w in self.workers},
            "simulator": await self.sim.process.cpu_seconds(),
            "client": time.process_time(),
        }


def cpu_delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    """CPU seconds used between two `Stack.cpu_seconds()` readings, per process."""
    return {
        name: round(end - start, 2)
        for name, end in after.items()
        if end is not None and (start := before.get(name)) is not None
    }


def _service_env(
    ctx: RunContext, database_url: str, prefix: str, sim_url: str, overrides: Mapping[str, str]
) -> dict[str, str]:
    return {
        **BASE_ENV,
        "DATABASE_URL": database_url,
        "AMQP_URL": ctx.options.amqp_url,
        "QUEUE_PREFIX": prefix,
        "GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "FAL_QUEUE_URL": sim_url,
        "FAL_JWKS_URL": f"{sim_url}/.well-known/jwks.json",
        "OUTPUT_ROOT": str(ctx.workdir / "output"),
        "LOG_LEVEL": ctx.options.log_level,
        **overrides,
    }


def print_tails(processes: list[ChildProcess]) -> None:
    for process in processes:
        print(f"--- last lines of {process.log_path}", file=sys.stderr)
        print(process.tail(), file=sys.stderr)


@asynccontextmanager
async def orchestrator_stack(
    ctx: RunContext,
    name: str,
    *,
    sim_config: dict[str, Any],
    env: Mapping[str, str] | None = None,
    webhooks: bool = False,
    video_workers: int = 1,
) -> AsyncIterator[Stack]:
    """Start simulator, gateway and video worker(s) for scenario `name`; stop them on exit.

    `webhooks`: set PUBLIC_HTTP_URL to the gateway's HTTP port, so fal (the simulator) calls
    back when a generation finishes. `video_workers`: how many video worker processes (each
    is ready once the work queue has that many consumers).
    """
    opts = ctx.options
    prefix = ctx.new_prefix()
    log_dir = ctx.workdir / name
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[ChildProcess] = []
    async with AsyncExitStack() as exits:
        try:
            sim = await exits.enter_async_context(
                running_simulator(log_dir, "simulator", sim_config, opts.log_level)
            )
            started.append(sim.process)
            database_url = await exits.enter_async_context(
                fresh_database(opts.database, ctx.workdir, opts.postgres_url)
            )
            exits.push_async_callback(
                best_effort,
                f"delete broker topology {prefix}",
                lambda: delete_topology(
                    opts.amqp_url, Topology(prefix=prefix, queues=BUILTIN_KINDS.queues)
                ),
            )
            settings = _service_env(ctx, database_url, prefix, sim.url, env or {})
            if webhooks:
                settings["PUBLIC_HTTP_URL"] = f"http://{settings['HTTP_ADDR']}"
                settings["WEBHOOK_SECRET"] = "bench-webhook-secret"
            gateway = ChildProcess.module(
                "gateway",
                "services.gateway",
                settings,
                log_dir,
                http_ok(f"http://{settings['HTTP_ADDR']}/healthz"),
            )
            work_queue = Topology(prefix=prefix, queues=BUILTIN_KINDS.queues).work_queue(
                VIDEO_SEGMENT.queue
            )
            workers = [
                ChildProcess.module(
                    "video_worker" if i == 0 else f"video_worker_{i + 1}",
                    "services.video_worker",
                    settings,
                    log_dir,
                    consuming(opts.amqp_url, work_queue, at_least=i + 1),
                )
                for i in range(video_workers)
            ]
            # Started in order (the gateway migrates the schema), stopped in reverse.
            for process in (gateway, *workers):
                exits.push_async_callback(process.stop)
                started.append(process)
                await process.start()
            channel = await exits.enter_async_context(
                grpc.aio.insecure_channel(
                    settings["GRPC_ADDR"],
                    options=[
                        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ],
                )
            )
            stub = pb_grpc.JobServiceStub(channel)
            yield Stack(settings, sim, gateway, workers[0], stub, workers[1:])
        except Exception:
            print_tails(started)
            raise
