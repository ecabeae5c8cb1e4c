"""The rows a batch locked, as the batch applier (common.domain.batch) sees and changes them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common.domain.changes import ChangeSet
from common.domain.events import EventDraft
from common.domain.states import JobStatus, TaskStatus


@dataclass
class LiveTask:
    id: int
    job_id: str
    index: int
    kind: str
    status: TaskStatus
    attempt: int
    holds_slot: bool
    priority: int


@dataclass
class LiveJob:
    id: str
    kind: str
    status: JobStatus
    open_tasks: int
    last_seq: int
    cancel_requested: bool
    created_at: float = 0.0
    owner: str = ""
    cap: int = 0
    # When one of its tasks was last handed a provider slot (round-robin among equals).
    slot_at: float | None = None
    events: list[EventDraft] = field(default_factory=list)
    open_delta: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    active: bool = False
    touched: bool = False
    reopen: str | None = None
    change_sets: list[ChangeSet] = field(default_factory=list)
    finishing: bool = False


@dataclass
class Slots:
    in_flight: int
    capacity: int
    changed: bool = False
    released: bool = False


@dataclass(frozen=True)
class JobWrite:
    """One job's row update and its new events, numbered from `first_seq`."""

    job_id: str
    values: dict[str, Any]
    first_seq: int
    events: list[EventDraft]


def live_task(row: Iterable[Any]) -> LiveTask:
    task_id, job_id, index, kind, status, attempt, holds_slot, priority = row
    return LiveTask(task_id, job_id, index, kind, TaskStatus(status), attempt, holds_slot, priority)
