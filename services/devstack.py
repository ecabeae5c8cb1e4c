"""`python -m services.devstack`: the whole service in one process, on embedded defaults.

Gateway, video worker, story worker and the provider simulator share one event loop, an
in-process broker (AMQP_URL=memory://) and a SQLite file (data/orchestrator.db); the real
fal-client and openai clients talk to the simulator over HTTP. With `--demo` it submits a video
job (and a story job) through its own gRPC API and prints their events until they finish.

Any setting can still be overridden from the environment (e.g. AMQP_URL to use RabbitMQ, or
FAL_QUEUE_URL / OPENAI_BASE_URL with real keys to use the real providers).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from contextlib import AsyncExitStack
from typing import Any

import grpc
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

from common.lifecycle import run_loop, stop_on_signals
from common.logs import setup_logging
from common.service import open_infra
from common.settings import Settings, SettingsError
from common.tracing import setup_tracing
from services.gateway.service import check_exposure, running_gateway
from services.simulator.app import run_simulator
from services.simulator.config import SimulatorConfig
from services.story_worker.service import running_story_worker
from services.video_worker.service import running_video_worker

log = logging.getLogger("devstack")

SIMULATOR_KEY = "devstack-key"


def _settings(simulator_url: str) -> Settings:
    """Embedded defaults, pointed at the simulator unless the environment says otherwise."""
    defaults: dict[str, Any] = {}
    if "FAL_QUEUE_URL" not in os.environ:
        defaults.update(fal_queue_url=simulator_url, fal_key=SIMULATOR_KEY, fal_poll_interval=0.5)
    if "OPENAI_BASE_URL" not in os.environ:
        defaults.update(openai_base_url=f"{simulator_url}/v1", openai_api_key=SIMULATOR_KEY)
    return Settings.from_env(**{k: v for k, v in defaults.items() if k.upper() not in os.environ})


async def demo(grpc_port: int) -> bool:
    """Run a video job and a story job through the gRPC API; True when both completed."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.JobServiceStub(channel)
        video = await stub.StartVideoJob(
            pb.StartVideoJobRequest(
                battle_arena_url="https://example.com/arena.png",
                total_segments=5,
                prompt="Two robots clash in a neon arena",
            )
        )
        story = await stub.StartStoryJob(
            pb.StartStoryJobRequest(
                idea="A sci-fi adventure about time travel",
                total_segments=30,
                segments_per_set=10,
                save_to_files=True,
                output_directory="demo_time_travel",
            )
        )
        results = await asyncio.gather(
            _follow(stub, video.job_id, "video"), _follow(stub, story.job_id, "story")
        )
    return all(results)


async def _follow(stub: pb_grpc.JobServiceAsyncStub, job_id: str, label: str) -> bool:
    print(f"[{label}] job {job_id} started", flush=True)
    async for item in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
        for e in item.events:
            where = f"task {e.task_index}" if e.task_index >= 0 else "job"
            print(f"[{label}] #{e.cursor:<3} {where:<8} {e.message}", flush=True)
    job = await stub.GetJob(pb.GetJobRequest(job_id=job_id))
    status = pb.JobStatus.Name(job.status).removeprefix("JOB_STATUS_")
    print(f"[{label}] job {job_id} finished: {status} — {job.message}", flush=True)
    if job.HasField("story") and job.story.metadata_file:
        print(f"[{label}] files: {job.story.metadata_file}", flush=True)
    return bool(job.status == pb.JOB_STATUS_COMPLETED)


async def main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with AsyncExitStack() as stack:
        sim = await stack.enter_async_context(
            run_simulator(SimulatorConfig(latency=args.latency, seed=0), port=args.simulator_port)
        )
        settings = _settings(sim.url)
        setup_logging(settings.log_level, "devstack", settings.log_format)
        setup_tracing("devstack")
        check_exposure(settings)
        infra = await stack.enter_async_context(open_infra(settings))
        gateway = await stack.enter_async_context(running_gateway(infra))
        await stack.enter_async_context(running_video_worker(infra))
        await stack.enter_async_context(running_story_worker(infra))
        print(
            f"devstack up: gRPC {settings.grpc_addr}, HTTP {settings.http_addr},"
            f" simulator {sim.url}, database {settings.database_url}",
            flush=True,
        )
        if args.demo:
            ok = await demo(gateway.grpc_port)
            if args.exit_after_demo:
                return 0 if ok else 1
            print(
                "\nTry it yourself (Ctrl-C stops the stack):\n"
                f"  the dashboard: http://{settings.http_addr}/\n"
                f"  orchestrator --target {settings.grpc_addr} video --arena"
                " https://example.com/arena.png -n 5\n"
                f"  grpcurl -plaintext {settings.grpc_addr} list\n"
                '  grpcurl -plaintext -d \'{"battle_arena_url":"https://example.com/arena.png",'
                f'"total_segments":5}}\' {settings.grpc_addr} '
                "orchestrator.v1.JobService/StartVideoJob",
                flush=True,
            )
        await stop.wait()
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.devstack", description=__doc__)
    parser.add_argument("--demo", action="store_true", help="run a demo video and story job")
    parser.add_argument(
        "--exit-after-demo", action="store_true", help="stop once the demo jobs finished"
    )
    parser.add_argument("--latency", type=float, default=2.0, help="simulated fal seconds")
    parser.add_argument("--simulator-port", type=int, default=8100)
    args = parser.parse_args()
    try:
        sys.exit(run_loop(main(args)))
    except SettingsError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
