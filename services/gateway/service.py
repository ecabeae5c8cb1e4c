"""The gateway as a component: gRPC server, HTTP side port, progress fan-out and the outbox.

Shutdown (SIGTERM): health turns NOT_SERVING first, so load balancers stop sending; then the
servers stop with a grace period for in-flight calls; the outbox finishes publishing what it was
handed (its deadlines cover whatever it cannot).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from orchestrator.v1 import jobs_pb2

from common import tracing
from common.collector import settle_collector
from common.lifecycle import Background
from common.service import Infra, open_infra
from common.settings import Settings, SettingsError
from services.gateway.core import JobsCore
from services.gateway.feed_reads import FeedReads
from services.gateway.grpc_api import JobService, add_to_server
from services.gateway.grpc_guard import Guard
from services.gateway.http_api import OPEN_PATHS, HttpApi
from services.gateway.http_guard import HttpGuard
from services.gateway.limits import CallerLimits
from services.gateway.outbox import Outbox
from services.gateway.progress import ProgressHub
from services.video_worker.fal_transport import route_url
from services.video_worker.fal_upload import FalUploader
from services.video_worker.fal_webhook import FalWebhookVerifier

log = logging.getLogger(__name__)
MAX_STREAMS_PER_CONNECTION = 1000

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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Without tokens, serve on loopback only, unless ALLOW_ANONYMOUS says otherwise."""
    exposed = [
        addr for addr in (settings.grpc_addr, settings.http_addr) if not _loopback(_split(addr)[0])
    ]
    if settings.tokens.enabled:
        roles = sorted({e.role.name.lower() for e in settings.tokens.entries})
        log.info(
            "authentication on: %d tokens (%s)",
            len(settings.tokens.entries),
            ", ".join(roles),
            extra={"event": "session"},
        )
    elif exposed and not settings.allow_anonymous:
        raise SettingsError(
            f"refusing to serve without authentication on {', '.join(exposed)}: configure"
            " AUTH_TOKENS (or AUTH_TOKENS_FILE), bind to 127.0.0.1, or set ALLOW_ANONYMOUS=true"
        )
    else:
        log.warning(
            "authentication OFF: anyone who reaches %s can start paid generations",
            ", ".join(exposed) or "this machine's loopback ports",
            extra={"event": "warning"},
        )


def _tls(settings: Settings) -> tuple[grpc.ServerCredentials | None, ssl.SSLContext | None]:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None, None
    cert, key = settings.tls_cert_file.read_bytes(), settings.tls_key_file.read_bytes()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return grpc.ssl_server_credentials([(key, cert)]), context


async def _grpc_server(
    settings: Settings, core: JobsCore, limits: CallerLimits
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:  # type: ignore[name-defined]
    """The started gRPC server (JobService, health, reflection) and its port."""
    server = grpc.aio.server(
        interceptors=[*tracing.grpc_interceptors(), Guard(settings.tokens, limits)],
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ],
    )
    add_to_server(JobService(core), server)
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
    credentials, _ = _tls(settings)
    if credentials is not None:
        port = server.add_secure_port(settings.grpc_addr, credentials)
    else:
        port = server.add_insecure_port(settings.grpc_addr)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, port


@asynccontextmanager
async def running_gateway(infra: Infra) -> AsyncIterator[Gateway]:
    settings = infra.settings
    limits = CallerLimits(
        rate=settings.rate_limit_per_second,
        burst=settings.rate_limit_burst,
        max_streams=settings.max_streams_per_caller,
    )
    async with AsyncExitStack() as stack:
        webhooks = await stack.enter_async_context(
            FalWebhookVerifier(
                # fal's keys come from the simulator when FAL_QUEUE_URL points at one.
                route_url(settings.fal_jwks_url, settings.fal_queue_url),
                tolerance=settings.fal_webhook_tolerance,
            )
        )
        uploader = await stack.enter_async_context(
            FalUploader(
                key=settings.fal_key.get_secret_value() if settings.fal_key else None,
                queue_url=settings.fal_queue_url,
                timeout=settings.fal_timeout,
                secrets=settings.secrets(),
            )
        )
        background = Background()
        reads = FeedReads(infra.db)
        stack.push_async_callback(reads.close)  # after the feeds' reads (drained below)
        hub = ProgressHub(reads.read, background)
        subscription = await infra.broker.subscribe(hub.on_note)
        stack.push_async_callback(subscription.close)
        outbox = Outbox(infra)
        core = JobsCore(infra, outbox, hub)
        outbox_task = asyncio.create_task(outbox.run(), name="outbox")
        server, health_servicer, grpc_port = await _grpc_server(settings, core, limits)

        guard = HttpGuard(
            settings.tokens, limits, open_paths=OPEN_PATHS, read_timeout=settings.http_read_timeout
        )
        http = HttpApi(infra, core, guard, webhooks, uploader)
        # keepalive_timeout also bounds a connection that never completes its first request.
        runner = web.AppRunner(
            http.app(), access_log=None, keepalive_timeout=settings.http_idle_timeout
        )
        await runner.setup()
        host, port = _split(settings.http_addr)
        await web.TCPSite(runner, host, port, ssl_context=_tls(settings)[1]).start()
        http_port = runner.addresses[0][1]
        log.info("gateway serving gRPC on %s:%d, HTTP on %s:%d", host, grpc_port, host, http_port)
        try:
            yield Gateway(core=core, outbox=outbox, grpc_port=grpc_port, http_port=http_port)
        finally:
            log.info("gateway draining", extra={"event": "session"})
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


async def main(settings: Settings, stop: asyncio.Event) -> None:
    check_exposure(settings)  # before connecting anything
    async with open_infra(settings) as infra, running_gateway(infra):
        settle_collector()
        await stop.wait()
