"""What the video worker needs from a video provider (fal.ai in production, fakes in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from common.resilience import TransientError


@dataclass(frozen=True)
class ProviderRequest:
    """A submitted generation: its id and whatever the adapter needs to find it again after a
    crash (persisted as the task's opaque handle)."""

    request_id: str
    handle: dict[str, Any] = field(default_factory=dict)


class Phase(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True)
class Progress:
    phase: Phase
    queue_position: int | None = None
    # Provider log lines (newest last), when the provider sent any.
    logs: tuple[str, ...] = ()
    # COMPLETED: how long the generation ran, by the provider's own metrics (if it said).
    ran_for: float | None = None


@dataclass(frozen=True)
class Video:
    url: str
    content_type: str = ""
    file_name: str = ""
    file_size: int | None = None


class GenerationFailed(TransientError):
    """The provider ran the generation and it failed: the attempt failed (and may be retried
    as a new attempt), unlike a failed status call, which is simply made again later."""


class VideoProvider(Protocol):
    """Raises common.resilience ProviderError subclasses on failure."""

    async def submit(
        self,
        model: str,
        arguments: dict[str, Any],
        *,
        webhook_url: str | None = None,
        low_priority: bool = False,
    ) -> ProviderRequest: ...

    async def status(self, request: ProviderRequest) -> Progress: ...

    async def result(self, request: ProviderRequest) -> Video | Progress:
        """The video, or the request's progress when it is not finished after all."""
        ...

    async def cancel(self, request: ProviderRequest) -> bool:
        """True when cancellation was requested, False when the request had already finished."""
        ...
