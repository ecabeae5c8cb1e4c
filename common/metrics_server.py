"""A worker's own HTTP endpoint for Prometheus (METRICS_ADDR): /metrics and /healthz.

With tokens configured, /metrics needs a valid bearer token like every route of the service
(any role); /healthz is open.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from common import metrics
from common.auth import Tokens
from common.errors import Unauthenticated

log = logging.getLogger(__name__)


def metrics_app(tokens: Tokens) -> web.Application:
    async def scrape(request: web.Request) -> web.Response:
        try:
            tokens.identify(request.headers.get("Authorization"))
        except Unauthenticated as exc:
            return web.json_response({"error": str(exc)}, status=401)
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "serving"})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    return app


@asynccontextmanager
async def serving_metrics(addr: str, tokens: Tokens) -> AsyncIterator[int | None]:
    """Serve the metrics on `addr` (HOST:PORT) for the block; the port, or None when `addr`
    is empty (no endpoint)."""
    if not addr:
        yield None
        return
    host, _, port = addr.rpartition(":")
    runner = web.AppRunner(metrics_app(tokens), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    bound = int(runner.addresses[0][1])
    log.info("metrics on %s:%d", host, bound, extra={"event": "session"})
    try:
        yield bound
    finally:
        await runner.cleanup()
