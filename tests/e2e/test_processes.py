"""Process lifecycle: `make run`'s one-process stack, SIGTERM draining."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.support.client import events_until, running_tasks, status_name
from tests.support.procs import free_port
from tests.support.stack import running_stack


async def test_make_run_stack_shows_demo_jobs_finishing(tmp_path: Path) -> None:
    """What `make run` runs, in a fresh folder: embedded defaults, demo jobs to completion."""
    env = {
        **os.environ,
        "GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "HTTP_ADDR": f"127.0.0.1:{free_port()}",
    }
    for name in ("DATABASE_URL", "AMQP_URL", "FAL_QUEUE_URL", "OPENAI_BASE_URL", "OUTPUT_ROOT"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.devstack",
        "--demo",
        "--exit-after-demo",
        "--latency",
        "0.3",
        "--simulator-port",
        "0",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    text = output.decode()
    assert proc.returncode == 0, text
    assert "[video] job" in text and "finished: COMPLETED — 5 of 5 segments succeeded" in text
    assert "finished: COMPLETED — 3 of 3 sets succeeded" in text
    assert (tmp_path / "data" / "orchestrator.db").exists()
    written = sorted(p.name for p in (tmp_path / "output" / "demo_time_travel").iterdir())
    assert len(written) == 4 and written[-1].endswith("_set_03.json"), written


async def test_sigterm_turns_health_not_serving_then_exits_cleanly(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    async with running_stack(
        tmp_path, amqp_url, broker_prefix, sim, services=("gateway",)
    ) as stack:
        gateway = stack.processes["gateway"]
        async with grpc.aio.insecure_channel(stack.env["GRPC_ADDR"]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            updates = health.Watch(health_pb2.HealthCheckRequest(service=""))
            seen = [(await updates.read()).status]
            assert gateway.proc is not None
            gateway.proc.terminate()
            seen.append((await updates.read()).status)
        assert seen == [
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        ]
        assert await gateway.stop() == 0


async def test_sigterm_lets_the_worker_finish_its_call_before_exiting(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(chat_latency=1.5)
    services = ("gateway", "story_worker")
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim, services=services) as stack:
        started = await stack.stub.StartStoryJob(
            pb.StartStoryJobRequest(idea="A heist on the moon", total_segments=4)
        )
        # Until the plan call is under way.
        await events_until(stack.stub, started.job_id, lambda seen: bool(running_tasks(seen)))
        assert await stack.processes["story_worker"].stop() == 0
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
        assert job.tasks[0].status == pb.TASK_STATUS_SUCCEEDED  # drained, not abandoned
        assert status_name(job.status) == "RUNNING"
        assert sim.stats(with_logs=False)["chat_calls"] == 1
