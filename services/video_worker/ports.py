"""What the video worker needs from a video provider (fal.ai in production, fakes in unit tests)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


@dataclass(frozen=True)
class ProviderRequest:
    """A submitted generation: everything needed to find it again after a crash."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


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


@dataclass(frozen=True)
class Video:
    url: str
    content_type: str = ""
    file_name: str = ""
    file_size: int | None = None


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

    async def result(self, request: ProviderRequest) -> Video: ...

    async def cancel(self, request: ProviderRequest) -> bool:
        """True when cancellation was requested, False when the request had already finished."""
        ...
