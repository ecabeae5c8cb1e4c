"""The whole stack inside the test's event loop: real gRPC/HTTP servers, real clients, an
in-process (or real) broker and a SQLite file. For API tests that need no process boundary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from common.service import Infra, open_infra
from common.settings import Settings
from services.gateway.service import Gateway, running_gateway
from services.simulator.app import SimulatorHandle
from services.story_worker.service import running_story_worker
from services.video_worker.service import running_video_worker
from tests.support.client import Stub, job_service
from tests.support.stack import FAL_KEY, OPENAI_KEY


@dataclass
class InProcStack:
    settings: Settings
    infra: Infra
    gateway: Gateway
    stub: Stub

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.http_port}"


def stack_settings(tmp_path: Path, sim: SimulatorHandle, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/orchestrator.db",
        "amqp_url": "memory://",
        "grpc_addr": "127.0.0.1:0",
        "http_addr": "127.0.0.1:0",
        "fal_queue_url": sim.url,
        "fal_jwks_url": f"{sim.url}/.well-known/jwks.json",
        "fal_key": FAL_KEY,
        "openai_base_url": f"{sim.url}/v1",
        "openai_api_key": OPENAI_KEY,
        "output_root": tmp_path / "output",
        "fal_poll_interval": 0.1,
        "fal_timeout": 2,
        "openai_timeout": 2,
        "video_backoff_initial": 0.05,
        "video_backoff_cap": 0.5,
        "story_backoff_initial": 0.05,
        "story_backoff_cap": 0.5,
        "max_retry_after": 1,
        "breaker_open_seconds": 0.5,
        "stale_after": 5,
        "sweep_interval": 0.5,
        "drain_seconds": 5,
    }
    values.update(overrides)
    return Settings.from_env(**values)


@asynccontextmanager
async def inproc_stack(
    settings: Settings, *, workers: tuple[str, ...] = ("video", "story")
) -> AsyncIterator[InProcStack]:
    async with AsyncExitStack() as stack:
        infra = await stack.enter_async_context(open_infra(settings))
        gateway = await stack.enter_async_context(running_gateway(infra))
        if "video" in workers:
            await stack.enter_async_context(running_video_worker(infra))
        if "story" in workers:
            await stack.enter_async_context(running_story_worker(infra))
        stub = await stack.enter_async_context(job_service(f"127.0.0.1:{gateway.grpc_port}"))
        yield InProcStack(settings, infra, gateway, stub)
