"""The story worker as a component: consumes the story queue until asked to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.attempts.options import AttemptOptions, Registration
from common.attempts.runner import AttemptRunner
from common.collector import settle_collector
from common.domain.kinds import STORY_SET
from common.leases import WorkerLease
from common.metrics_server import serving_metrics
from common.service import Infra, open_infra
from common.settings import Settings
from common.worker import start_consumer
from services.story_worker.files import StoryFiles
from services.story_worker.kinds import StoryPlans, StorySets
from services.story_worker.openai_adapter import OpenAIStoryProvider

log = logging.getLogger(__name__)


@asynccontextmanager
async def running_story_worker(infra: Infra) -> AsyncIterator[AttemptRunner]:
    """Consume story tasks; on exit, stop taking messages and drain within the bound."""
    s = infra.settings
    async with (
        OpenAIStoryProvider(
            api_key=s.openai_api_key.get_secret_value() if s.openai_api_key else "",
            base_url=s.openai_base_url,
            timeout=s.openai_timeout,
            secrets=s.secrets(),
        ) as provider,
        WorkerLease(infra.db, STORY_SET.queue, seconds=s.worker_lease_seconds) as lease,
    ):
        files = StoryFiles(s.output_root)
        options = AttemptOptions.of(s, call_timeout=s.openai_timeout)
        runner = AttemptRunner(
            infra.committer,
            [
                Registration(
                    kind(infra.committer, provider, files), s.retry_policy(kind.spec.name), options
                )
                for kind in (StoryPlans, StorySets)
            ],
            breakers=infra.breakers,
            lease=lease,
        )
        async with start_consumer(
            infra.broker,
            STORY_SET.queue,
            runner,
            prefetch=s.story_prefetch,
            drain_seconds=s.drain_seconds,
        ):
            log.info("story worker ready (OpenAI at %s)", s.openai_base_url)
            yield runner


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with (
        serving_metrics(settings.metrics_addr, settings.tokens),
        open_infra(settings) as infra,
        running_story_worker(infra),
    ):
        settle_collector()
        await stop.wait()
