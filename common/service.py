"""What every service process shares: settings, logging, signals, database and broker."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from common.breaker_events import BreakerEvents
from common.broker import Broker, open_broker
from common.committer import GroupCommitter
from common.domain.kinds import KindRegistry
from common.lifecycle import run_loop, stop_on_signals
from common.logs import setup_logging
from common.settings import Settings, SettingsError
from common.store.database import Database, open_database
from common.tracing import setup_tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Infra:
    """The long-lived resources a service component works with."""

    settings: Settings
    db: Database
    broker: Broker
    committer: GroupCommitter
    # Circuit breakers of this process, whose transitions ride on its change sets.
    breakers: BreakerEvents

    @property
    def kinds(self) -> KindRegistry:
        return self.settings.kinds


@asynccontextmanager
async def open_infra(settings: Settings, *, broker: Broker | None = None) -> AsyncIterator[Infra]:
    """Open (and migrate) the database and connect the broker; close both in reverse order."""
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(open_database(settings.database_url))
        if broker is None:
            broker = await stack.enter_async_context(
                open_broker(settings.amqp_url, settings.topology)
            )
        committer = GroupCommitter(
            db,
            broker,
            settings.store_timings,
            kinds=settings.kinds,
            policy=settings.budget_policy,
            budget_limits=settings.budget_limits,
        )
        breakers = BreakerEvents(settings.breaker)
        committer.hooks.append(breakers)
        try:
            yield Infra(settings, db, broker, committer, breakers)
        finally:
            await committer.close()


def run_service(name: str, main: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> None:
    """Entry point of `python -m services.<name>`: settings, logging, signals, exit code."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.log_level, name, settings.log_format)
    setup_tracing(name)
    if settings.amqp_url.startswith("memory:"):
        print(
            f"{name}: AMQP_URL is memory:// (the in-process broker), which only works when every"
            " service runs in one process: use `python -m services.devstack`, or set AMQP_URL to"
            " your RabbitMQ (e.g. amqp://guest:guest@127.0.0.1:5672/)",
            file=sys.stderr,
        )
        raise SystemExit(2)

    async def _run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await main(settings, stop)

    try:
        run_loop(_run())
    except SettingsError as exc:  # a setting only a running component could judge
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("%s stopped", name)
