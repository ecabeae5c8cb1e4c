"""The video worker as a component: consumes the video queue until asked to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.attempts.options import AttemptOptions, Registration
from common.attempts.runner import AttemptRunner
from common.collector import settle_collector
from common.domain.kinds import VIDEO_SEGMENT
from common.leases import WorkerLease
from common.metrics_server import serving_metrics
from common.service import Infra, open_infra
from common.settings import Settings
from common.store.slots import ensure_slots
from common.worker import start_consumer
from services.video_worker.fal_adapter import FalVideoProvider
from services.video_worker.fal_webhook import WEBHOOK_PATH
from services.video_worker.segments import VideoSegments

log = logging.getLogger(__name__)


@asynccontextmanager
async def running_video_worker(infra: Infra) -> AsyncIterator[AttemptRunner]:
    """Consume video segments; on exit, stop taking messages and drain within the bound."""
    s = infra.settings
    pool = VIDEO_SEGMENT.slot_pool
    assert pool is not None
    limit = s.pool_limit(pool)
    async with infra.db.write() as session:
        await ensure_slots(session, pool, limit)
    webhook = f"{s.public_http_url.rstrip('/')}{WEBHOOK_PATH}" if s.public_http_url else None
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else ""
    async with (
        FalVideoProvider(
            key=s.fal_key.get_secret_value() if s.fal_key else None,
            queue_url=s.fal_queue_url,
            timeout=s.fal_timeout,
            secrets=s.secrets(),
            hedged_reads=s.fal_hedged_reads,
        ) as provider,
        WorkerLease(infra.db, VIDEO_SEGMENT.queue, seconds=s.worker_lease_seconds) as lease,
    ):
        runner = AttemptRunner(
            infra.committer,
            [
                Registration(
                    VideoSegments(provider, webhook_base=webhook, webhook_secret=secret),
                    s.retry_policy(VIDEO_SEGMENT.name),
                    AttemptOptions.of(
                        s,
                        call_timeout=s.fal_timeout,
                        poll_interval=s.fal_poll_interval,
                        first_poll_delay=s.fal_first_poll_delay,
                        learn_first_poll=webhook is None,
                        adopt_window=s.webhook_adopt_window if webhook else 0.0,
                    ),
                )
            ],
            breakers=infra.breakers,
            lease=lease,
        )
        async with start_consumer(
            infra.broker,
            VIDEO_SEGMENT.queue,
            runner,
            prefetch=s.video_prefetch,
            drain_seconds=s.drain_seconds,
        ):
            log.info("video worker ready (fal at %s, %d slots)", s.fal_queue_url, limit)
            yield runner


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with (
        serving_metrics(settings.metrics_addr, settings.tokens),
        open_infra(settings) as infra,
        running_video_worker(infra),
    ):
        settle_collector()
        await stop.wait()
