"""The fal queue as a discrete-event model: requests wait, run for their latency, complete.

State is computed from timestamps: `advance()` replays every completion due by now (freeing a
slot at its exact end time and starting the next waiting request there), so answers do not
depend on how often anyone polls, zero latency needs no task, and tests can drive a manual
clock. One owned pump task (`run`) wakes at the next deadline so completions (and their
webhooks) happen on time even when nobody polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from services.simulator.config import Clock

Priority = Literal["normal", "low"]

GENERATION_ERROR = "Generation failed: the model could not produce a video for this input"


class QueueStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class QueuedRequest:
    """One accepted (paid) generation request."""

    request_id: str
    app_id: str
    route_prefix: str  # "owner/alias" (or "namespace/owner/alias"): where its URLs live
    base_url: str  # the URL the client used, for the URLs we hand back
    arguments: dict[str, Any]
    body_text: str  # as sent: what status/result rules match against
    webhook_url: str | None
    priority: Priority
    latency: float
    fails: bool
    seed: int
    file_size: int
    submitted_at: float
    started_at: float | None = None
    completed_at: float | None = None
    cancelled: bool = False
    sequence: int = field(default=0)

    @property
    def status(self) -> QueueStatus:
        if self.completed_at is not None:
            return QueueStatus.COMPLETED
        if self.started_at is not None:
            return QueueStatus.IN_PROGRESS
        return QueueStatus.IN_QUEUE

    @property
    def outcome(self) -> Outcome | None:
        if self.completed_at is None:
            return None
        if self.cancelled:
            return Outcome.CANCELLED
        return Outcome.FAILED if self.fails else Outcome.OK

    @property
    def request_url(self) -> str:
        return f"{self.base_url}/{self.route_prefix}/requests/{self.request_id}"

    @property
    def file_name(self) -> str:
        return f"{self.request_id}.mp4"

    def result(self) -> dict[str, Any]:
        """The model output of a successful generation."""
        return {
            "video": {
                "url": f"{self.base_url}/files/{self.file_name}",
                "content_type": "video/mp4",
                "file_name": self.file_name,
                "file_size": self.file_size,
            },
            "seed": self.seed,
        }


CompletionListener = Callable[[QueuedRequest], None]


class FalQueue:
    """Waiting and running requests under a concurrency limit; normal priority before low."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._requests: dict[str, QueuedRequest] = {}
        self._waiting: dict[Priority, deque[QueuedRequest]] = {"normal": deque(), "low": deque()}
        self._running: list[tuple[float, int, QueuedRequest]] = []  # heap by end time
        self._sequence = 0
        self._max_concurrency = 0
        self._changed = asyncio.Event()
        self.max_in_progress = 0
        self.on_complete: CompletionListener | None = None

    def get(self, request_id: str) -> QueuedRequest | None:
        return self._requests.get(request_id)

    @property
    def in_progress_now(self) -> int:
        return len(self._running)

    @property
    def waiting_now(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def set_max_concurrency(self, limit: int) -> None:
        self.advance()
        self._max_concurrency = limit
        self._fill(self._clock())
        self._changed.set()

    def submit(self, request: QueuedRequest) -> int:
        """Enqueue an accepted request (starting it if a slot is free); its queue position."""
        self.advance()
        self._sequence += 1
        request.sequence = self._sequence
        self._requests[request.request_id] = request
        self._waiting[request.priority].append(request)
        self._fill(self._clock())
        self._changed.set()
        return self.position(request)

    def position(self, request: QueuedRequest) -> int:
        """0-based place among waiting requests in service order (0 once running)."""
        if request.status is not QueueStatus.IN_QUEUE:
            return 0
        ahead = len(self._waiting["normal"]) if request.priority == "low" else 0
        return ahead + self._waiting[request.priority].index(request)

    def cancel(self, request: QueuedRequest) -> bool:
        """Cancel a waiting or running request; False when it had already completed."""
        self.advance()
        if request.completed_at is not None:
            return False
        now = self._clock()
        if request.started_at is None:
            self._waiting[request.priority].remove(request)
        else:
            self._running = [entry for entry in self._running if entry[2] is not request]
            heapq.heapify(self._running)
        request.cancelled = True
        request.completed_at = now
        self._fill(now)
        self._changed.set()
        return True

    def advance(self) -> None:
        """Complete every request due by now, starting waiting ones in the freed slots."""
        now = self._clock()
        while self._running and self._running[0][0] <= now:
            ends_at, _, request = heapq.heappop(self._running)
            request.completed_at = ends_at
            self._fill(ends_at)
            if self.on_complete is not None:
                self.on_complete(request)
        self._fill(now)

    def timeline(self) -> dict[str, Any]:
        """Every accepted request in acceptance order, as columns of simulator-clock seconds:
        when it was accepted, when it started, when it completed (its due time; None while
        waiting or running), and its outcome (None while unfinished). Call `advance()` first."""
        requests = sorted(self._requests.values(), key=lambda r: r.sequence)
        return {
            "now": self._clock(),
            "submitted_at": [r.submitted_at for r in requests],
            "started_at": [r.started_at for r in requests],
            "completed_at": [r.completed_at for r in requests],
            "outcome": [None if (o := r.outcome) is None else o.value for r in requests],
        }

    def next_deadline(self) -> float | None:
        return self._running[0][0] if self._running else None

    def clear(self) -> None:
        self._requests.clear()
        for waiting in self._waiting.values():
            waiting.clear()
        self._running.clear()
        self.max_in_progress = 0
        self._changed.set()

    async def run(self) -> None:
        """Pump: complete requests at their deadlines even when nobody polls."""
        while True:
            self._changed.clear()
            self.advance()
            deadline = self.next_deadline()
            delay = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()

    def _fill(self, at: float) -> None:
        while self._waiting_any() and self._has_slot():
            request = self._pop_next()
            request.started_at = max(at, request.submitted_at)
            ends_at = request.started_at + request.latency
            heapq.heappush(self._running, (ends_at, request.sequence, request))
        self.max_in_progress = max(self.max_in_progress, len(self._running))

    def _has_slot(self) -> bool:
        return self._max_concurrency == 0 or len(self._running) < self._max_concurrency

    def _waiting_any(self) -> bool:
        return any(self._waiting.values())

    def _pop_next(self) -> QueuedRequest:
        return (self._waiting["normal"] or self._waiting["low"]).popleft()
