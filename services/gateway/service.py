"""The gateway as a component: gRPC server, HTTP side port, progress fan-out and the outbox.

Shutdown (SIGTERM): health turns NOT_SERVING first, so load balancers stop sending; then the
servers stop with a grace period for in-flight calls; the outbox finishes publishing what it was
handed (its deadlines cover whatever it cannot).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from orchestrator.v1 import jobs_pb2, jobs_pb2_grpc

from common.lifecycle import Background
from common.service import Infra, open_infra
from common.settings import Settings
from services.gateway.core import JobsCore
from services.gateway.grpc_api import JobService
from services.gateway.http_api import HttpApi
from services.gateway.outbox import Outbox
from services.gateway.progress import ProgressHub, read_events

log = logging.getLogger(__name__)

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
# Long enough for unary calls to finish; watchers are told to reconnect after it.
GRPC_GRACE_SECONDS = 5.0


@dataclass
class Gateway:
    core: JobsCore
    outbox: Outbox
    grpc_port: int
    http_port: int


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


@asynccontextmanager
async def running_gateway(infra: Infra) -> AsyncIterator[Gateway]:
    settings = infra.settings
    background = Background()
    hub = ProgressHub(partial(read_events, infra.db), background)
    subscription = await infra.broker.subscribe(hub.on_note)
    outbox = Outbox(infra)
    core = JobsCore(infra, outbox, hub)
    outbox_task = asyncio.create_task(outbox.run(), name="outbox")

    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobService(core), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    grpc_port = server.add_insecure_port(settings.grpc_addr)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    http = HttpApi(infra, core)
    runner = web.AppRunner(http.app(), access_log=None)
    await runner.setup()
    host, port = _split(settings.http_addr)
    site = web.TCPSite(runner, host, port)
    await site.start()
    http_port = runner.addresses[0][1]
    log.info("gateway serving gRPC on %s:%d, HTTP on %s:%d", host, grpc_port, host, http_port)
    try:
        yield Gateway(core=core, outbox=outbox, grpc_port=grpc_port, http_port=http_port)
    finally:
        log.info("gateway draining")
        http.serving = False
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(min(GRPC_GRACE_SECONDS, settings.drain_seconds))
        await runner.cleanup()
        await background.drain(within=settings.drain_seconds)
        outbox.stop()
        try:
            async with asyncio.timeout(settings.drain_seconds):
                await outbox_task
        except TimeoutError:
            log.warning(
                "outbox did not finish within %.0fs; the sweeper will", settings.drain_seconds
            )
        await subscription.close()


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with open_infra(settings) as infra, running_gateway(infra):
        await stop.wait()
