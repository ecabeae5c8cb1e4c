"""Everything one simulator instance knows, shared by its HTTP routes and its in-process handle."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
import uuid
from typing import Any

from services.simulator.cdn_store import CdnStore
from services.simulator.config import Clock, Endpoint, SimulatorConfig
from services.simulator.fal_queue import FalQueue
from services.simulator.faults import Fault, FaultEngine
from services.simulator.rate_limits import RateLimiter
from services.simulator.stats import Stats
from services.simulator.webhook_signing import WebhookSigner
from services.simulator.webhooks import WebhookSender


class SimulatorState:
    """Config, seeded randomness, fault engine, fal queue and stats of one simulator.

    `clock` is a monotonic seconds source; tests may pass a manual one to drive generations.
    """

    def __init__(self, config: SimulatorConfig, *, clock: Clock | None = None) -> None:
        self.start_config = config
        self.config = config
        self.clock: Clock = clock or time.monotonic
        self.rng = random.Random(config.seed)
        # Ids draw from their own stream so handing one out never shifts a fault decision.
        self.stats = Stats(config.call_log_limit)
        self.faults = FaultEngine(self.rng, self.clock)
        self.queue = FalQueue(self.clock)
        # Made once per process and kept across resets, like fal's published keys.
        self.signer = WebhookSigner()
        self.webhooks = WebhookSender(lambda: self.config, lambda: self.stats, self.signer)
        self.queue.on_complete = self.webhooks.dispatch
        self.cdn = CdnStore(config.upload_store_bytes)
        self.rate_limits = RateLimiter(self.clock)
        # Signs CDN tokens; kept across resets, as issued tokens stay valid at fal.
        self.cdn_secret = secrets.token_bytes(32)
        # Set when the server shuts down: every held (hanging) answer wakes up at once.
        self.stopping = asyncio.Event()
        self._apply(config, set(SimulatorConfig.model_fields))

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Merge and validate top-level config changes (pydantic.ValidationError if invalid).

        Runtime state follows only what changed: new `outages` and `storms` are anchored now,
        new `rules` get fresh `times` budgets, new rate budgets start full, a new `seed` reseeds
        the RNG.
        """
        config = self.config.merged(changes)
        self.config = config
        self._apply(config, set(changes))
        return config

    def reset(self) -> None:
        """Back to the start config with empty stats, no requests and no uploaded files."""
        self.queue.clear()
        self.cdn.clear()
        self.webhooks.cancel_pending()
        self.config = self.start_config
        self.stats = Stats(self.config.call_log_limit)
        self._apply(self.config, set(SimulatorConfig.model_fields))

    def snapshot(self, *, with_logs: bool = True, with_timeline: bool = False) -> dict[str, Any]:
        """The `/_sim/stats` document; `with_timeline` adds `timeline` (see FalQueue.timeline:
        one entry per accepted request, so only on request)."""
        self.queue.advance()
        data = self.stats.snapshot(with_logs=with_logs)
        data["max_in_progress"] = self.queue.max_in_progress
        data["in_progress_now"] = self.queue.in_progress_now
        data["in_queue_now"] = self.queue.waiting_now
        data["rules_fired"] = self.faults.rule_fired()
        data["uploads"] = self.cdn.snapshot()
        if with_timeline:
            data["timeline"] = self.queue.timeline()
        return data

    async def pause(self, seconds: float) -> None:
        """Sleep, but return early when the server is stopping so shutdown never waits."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    def decide_fault(self, endpoint: Endpoint, match_text: str) -> Fault | None:
        """The fault for one call (see FaultEngine.decide), counted in the stats right away."""
        fault = self.faults.decide(endpoint, match_text)
        if fault is not None:
            self.stats.record_fault(endpoint, fault.label)
        return fault

    def new_id(self) -> uuid.UUID:
        """A random UUID4, as real providers hand out: unique across simulator restarts, so a
        database that outlives the simulator never sees a request id twice."""
        return uuid.uuid4()

    def draw_latency(self) -> float:
        config = self.config
        if config.latency_jitter == 0:
            return config.latency
        return config.latency * (
            1 + self.rng.uniform(-config.latency_jitter, config.latency_jitter)
        )

    def _apply(self, config: SimulatorConfig, changed: set[str]) -> None:
        if "seed" in changed:
            self.rng.seed(config.seed)
        if "faults" in changed:
            self.faults.set_groups(config.faults)
        if "outages" in changed:
            self.faults.set_outages(config.outages)
        if "rules" in changed:
            self.faults.set_rules(config.rules)
        if "storms" in changed:
            self.faults.set_storms(config.storms)
        if changed & {"openai_rate_limit", "openai_model_rate_limits"}:
            self.rate_limits.configure(config.openai_rate_limit, config.openai_model_rate_limits)
        if "upload_store_bytes" in changed:
            self.cdn.limit = config.upload_store_bytes
        if "max_concurrency" in changed:
            self.queue.set_max_concurrency(config.max_concurrency)
        if "call_log_limit" in changed and self.stats.call_log.maxlen != config.call_log_limit:
            self.stats.resize_logs(config.call_log_limit)
