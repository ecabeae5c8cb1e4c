"""A whole stack in real processes (gateway and workers) on a real RabbitMQ, for e2e tests.

The provider simulator runs inside the test's event loop, so tests can configure faults and read
its counters directly; the services reach it over HTTP like they would reach fal and OpenAI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.simulator.app import SimulatorHandle
from tests.support.client import Stub, job_service
from tests.support.procs import ServiceProcess, free_port

FAL_KEY = "test-fal-key-0123456789"
OPENAI_KEY = "sk-test-openai-key-0123456789"

READY = {
    "gateway": "gateway serving gRPC",
    "video_worker": "video worker ready",
    "story_worker": "story worker ready",
}


def base_env(
    tmp_path: Path, amqp_url: str, queue_prefix: str, sim: SimulatorHandle
) -> dict[str, str]:
    """Settings for fast, deterministic tests: short polls, short backoff, short deadlines."""
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/orchestrator.db",
        "AMQP_URL": amqp_url,
        "QUEUE_PREFIX": queue_prefix,
        "GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "FAL_QUEUE_URL": sim.url,
        "FAL_JWKS_URL": f"{sim.url}/.well-known/jwks.json",
        "FAL_KEY": FAL_KEY,
        "OPENAI_BASE_URL": f"{sim.url}/v1",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OUTPUT_ROOT": str(tmp_path / "output"),
        "FAL_POLL_INTERVAL": "0.1",
        "FAL_TIMEOUT": "2",
        "OPENAI_TIMEOUT": "2",
        "VIDEO_BACKOFF_INITIAL": "0.05",
        "VIDEO_BACKOFF_CAP": "0.5",
        "STORY_BACKOFF_INITIAL": "0.05",
        "STORY_BACKOFF_CAP": "0.5",
        "MAX_RETRY_AFTER": "1",
        "BREAKER_OPEN_SECONDS": "0.5",
        "STALE_AFTER": "5",
        "SWEEP_INTERVAL": "0.5",
        "DRAIN_SECONDS": "5",
        "LOG_LEVEL": "INFO",
    }


@dataclass
class Stack:
    env: dict[str, str]
    sim: SimulatorHandle
    stub: Stub
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://{self.env['HTTP_ADDR']}"

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.processes.values())

    async def start(self, name: str, env: Mapping[str, str] | None = None) -> ServiceProcess:
        """Start (or restart) `name`; `env`: settings of its own, on its first start."""
        process = self.processes.get(name) or ServiceProcess(
            name, {**self.env, **(env or {})}, READY[name]
        )
        self.processes[name] = process
        await process.start()
        return process


@asynccontextmanager
async def running_stack(
    tmp_path: Path,
    amqp_url: str,
    queue_prefix: str,
    sim: SimulatorHandle,
    *,
    services: tuple[str, ...] = ("gateway", "video_worker"),
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    settings = {**base_env(tmp_path, amqp_url, queue_prefix, sim), **(env or {})}
    async with AsyncExitStack() as exits:
        stub = await exits.enter_async_context(job_service(settings["GRPC_ADDR"]))
        stack = Stack(env=settings, sim=sim, stub=stub)

        async def stop_all() -> None:
            for process in reversed(list(stack.processes.values())):
                await process.stop()

        exits.push_async_callback(stop_all)
        for name in services:
            await stack.start(name)
        try:
            yield stack
        except BaseException:
            print(stack.logs())
            raise
