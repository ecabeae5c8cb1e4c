"""The batch applier's in-memory view of the rows it locked (see common.store.apply)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.domain.events import EventDraft
from common.domain.states import JobStatus, TaskStatus
from common.store.ledger import Tx


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
    events: list[EventDraft] = field(default_factory=list)
    open_delta: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    active: bool = False
    touched: bool = False
    reopen: str | None = None
    txs: list[Tx] = field(default_factory=list)


@dataclass
class Slots:
    in_flight: int
    capacity: int
    changed: bool = False
    released: bool = False


def live_task(row: Any) -> LiveTask:
    task_id, job_id, index, kind, status, attempt, holds_slot, priority = row
    return LiveTask(task_id, job_id, index, kind, TaskStatus(status), attempt, holds_slot, priority)


def event_row(job_id: str, seq: int, e: EventDraft, now: float) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "seq": seq,
        "type": e.type,
        "task_index": e.task_index,
        "task_status": e.task_status,
        "job_status": e.job_status,
        "message": e.message,
        "error_class": e.error_class,
        "details": e.details,
        "created_at": now,
    }
