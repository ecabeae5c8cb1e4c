"""The video worker as a component: consumes the video queue until asked to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.breaker_events import BreakerEvents
from common.broker import WorkQueue
from common.service import Infra, open_infra
from common.settings import Settings
from common.store.slots import ensure_slots
from common.worker import start_consumer
from services.video_worker.fal_adapter import FalVideoProvider
from services.video_worker.fal_transport import PROVIDER
from services.video_worker.handler import SegmentHandler, SegmentSettings

log = logging.getLogger(__name__)


@asynccontextmanager
async def running_video_worker(infra: Infra) -> AsyncIterator[SegmentHandler]:
    """Consume video segments; on exit, stop taking messages and drain within the bound."""
    s = infra.settings
    async with infra.db.write() as session:
        await ensure_slots(session, PROVIDER, s.fal_concurrency)
    webhook = f"{s.public_http_url.rstrip('/')}/webhooks/fal" if s.public_http_url else None
    async with FalVideoProvider(
        key=s.fal_key.get_secret_value() if s.fal_key else None,
        queue_url=s.fal_queue_url,
        timeout=s.fal_timeout,
        secrets=s.secrets(),
    ) as provider:
        handler = SegmentHandler(
            infra.uow,
            provider,
            breakers=BreakerEvents(s.breaker),
            policy=s.video_retry,
            settings=SegmentSettings(
                poll_interval=s.fal_poll_interval,
                first_poll_delay=s.fal_first_poll_delay,
                call_timeout=s.fal_timeout,
                webhook_url=webhook,
            ),
        )
        async with start_consumer(
            infra.broker,
            WorkQueue.VIDEO,
            handler,
            prefetch=s.video_prefetch,
            drain_seconds=s.drain_seconds,
        ):
            log.info("video worker ready (fal at %s, %d slots)", s.fal_queue_url, s.fal_concurrency)
            yield handler


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with open_infra(settings) as infra, running_video_worker(infra):
        await stop.wait()
