"""Fakes at the provider ports: scripted outcomes, counted calls, and a gate to hold a call.

`VideoProvider` and `StoryProvider` are Protocols; these implement them in memory so handler and
lifecycle rules run in milliseconds. The real adapters keep their own tests against the
simulator (tests/unit/test_fal_adapter.py, tests/simulator).

A `Script` gives each call the next scripted outcome ("ok" once it runs out): "ok",
"transient" (a 503), "rate_limited" (a 429 with Retry-After), "permanent" (a 400).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, deque
from typing import Any

from common.resilience import ErrorClass, PermanentError, TransientError
from services.simulator.prose import Prose
from services.simulator.schema_fill import SchemaFiller
from services.story_worker.openai_adapter import Answer
from services.video_worker.ports import Phase, Progress, ProviderRequest, Video


class Script:
    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._outcomes: deque[str] = deque()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    def add(self, *outcomes: str) -> None:
        self._outcomes.extend(outcomes)

    def hold(self) -> None:
        """Make calls wait (after `entered` is set) until `release()`."""
        self.gate = asyncio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()

    async def next(self) -> None:
        """Wait at the gate if held, then raise the next scripted failure (or return)."""
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        outcome = self._outcomes.popleft() if self._outcomes else "ok"
        if outcome == "ok":
            return
        if outcome == "transient":
            raise TransientError(
                "503 from the fake", provider=self.provider, error_class=ErrorClass.SERVER_ERROR
            )
        if outcome == "rate_limited":
            raise TransientError(
                "429 from the fake",
                provider=self.provider,
                error_class=ErrorClass.RATE_LIMITED,
                status_code=429,
                retry_after=0.01,
            )
        if outcome == "permanent":
            raise PermanentError(
                "400 from the fake",
                provider=self.provider,
                error_class=ErrorClass.BAD_REQUEST,
                status_code=400,
            )
        raise ValueError(f"unknown scripted outcome {outcome!r}")


class FakeVideoProvider:
    """A `VideoProvider`: submits follow `script`; a request is done after `polls` checks."""

    def __init__(self, *, polls: int = 0) -> None:
        self.script = Script("fal")
        self.polls = polls
        self.calls: Counter[str] = Counter()
        self.checked: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self.cancel_seen = asyncio.Event()
        self._ids = itertools.count(1)

    async def submit(
        self,
        model: str,
        arguments: dict[str, Any],
        *,
        webhook_url: str | None = None,
        low_priority: bool = False,
    ) -> ProviderRequest:
        self.calls["submit"] += 1
        await self.script.next()
        request_id = f"fake-{next(self._ids)}"
        return ProviderRequest(request_id, {"prompt": arguments.get("prompt", "")})

    async def status(self, request: ProviderRequest) -> Progress:
        self.calls["status"] += 1
        self.checked[request.request_id] += 1
        if self.checked[request.request_id] <= self.polls:
            return Progress(Phase.IN_PROGRESS)
        return Progress(Phase.COMPLETED)

    async def result(self, request: ProviderRequest) -> Video | Progress:
        self.calls["result"] += 1
        return Video(url=f"https://videos.example/{request.request_id}.mp4")

    async def cancel(self, request: ProviderRequest) -> bool:
        self.calls["cancel"] += 1
        self.cancelled.append(request.request_id)
        self.cancel_seen.set()
        return True

    @property
    def paid(self) -> int:
        """Submits the provider accepted (and would bill)."""
        return self.calls["submit"]


class FakeStoryProvider:
    """A `StoryProvider` answering any JSON schema with valid, deterministic JSON."""

    def __init__(self) -> None:
        self.script = Script("openai")
        self.calls: Counter[str] = Counter()
        self._rng = random.Random(0)

    async def complete_json(
        self, model: str, system: str, user: str, schema_name: str, schema: dict[str, Any]
    ) -> Answer:
        self.calls[schema_name] += 1
        await self.script.next()
        if schema_name == "story_plan":
            return Answer(_plan(schema))
        value = SchemaFiller(schema, self._rng, Prose(self._rng, user)).fill()
        assert isinstance(value, dict)
        return Answer(value)

    @property
    def paid(self) -> int:
        return sum(self.calls.values())


def _plan(schema: dict[str, Any]) -> dict[str, Any]:
    lines = schema["properties"]["outline"]["minItems"]
    return {
        "title": "The Fake Expedition",
        "logline": "Two friends cross a fake desert.",
        "genre": "adventure",
        "characters": [
            {"name": "Ada", "role": "lead", "description": "a careful navigator"},
            {"name": "Bo", "role": "friend", "description": "a reckless optimist"},
        ],
        "outline": [f"beat {n}" for n in range(1, lines + 1)],
    }
