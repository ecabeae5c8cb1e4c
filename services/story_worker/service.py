"""The story worker as a component: consumes the story queue until asked to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.breaker_events import BreakerEvents
from common.broker import WorkQueue
from common.service import Infra, open_infra
from common.settings import Settings
from common.worker import start_consumer
from services.story_worker.files import StoryFiles
from services.story_worker.handler import StoryHandler, StorySettings
from services.story_worker.openai_adapter import OpenAIStoryProvider

log = logging.getLogger(__name__)


@asynccontextmanager
async def running_story_worker(infra: Infra) -> AsyncIterator[StoryHandler]:
    """Consume story tasks; on exit, stop taking messages and drain within the bound."""
    s = infra.settings
    async with OpenAIStoryProvider(
        api_key=s.openai_api_key.get_secret_value() if s.openai_api_key else "",
        base_url=s.openai_base_url,
        timeout=s.openai_timeout,
        secrets=s.secrets(),
    ) as provider:
        handler = StoryHandler(
            infra.uow,
            provider,
            breakers=BreakerEvents(s.breaker),
            policy=s.story_retry,
            files=StoryFiles(s.output_root),
            settings=StorySettings(call_timeout=s.openai_timeout),
        )
        async with start_consumer(
            infra.broker,
            WorkQueue.STORY,
            handler,
            prefetch=s.story_prefetch,
            drain_seconds=s.drain_seconds,
        ):
            log.info("story worker ready (OpenAI at %s)", s.openai_base_url)
            yield handler


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with open_infra(settings) as infra, running_story_worker(infra):
        await stop.wait()
