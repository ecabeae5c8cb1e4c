"""What an event says: the domain's side of the events table and the WatchJob stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    JOB_CREATED = "job_created"
    JOB_STATUS = "job_status"
    TASK_STATUS = "task_status"
    TASK_PROGRESS = "task_progress"
    TASK_DEFERRED = "task_deferred"
    BREAKER = "breaker"
    RETRY_REQUESTED = "retry_requested"
    CANCEL_REQUESTED = "cancel_requested"
    STORY_PLANNED = "story_planned"


@dataclass(frozen=True)
class EventDraft:
    """An event before it has a cursor; the store numbers it in the transaction that writes it."""

    type: EventType
    message: str = ""
    task_index: int | None = None
    task_status: str = ""
    job_status: str = ""
    error_class: str = ""
    details: dict[str, Any] = field(default_factory=dict)
