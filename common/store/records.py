"""Immutable snapshots of rows, for code that reads state and then records changes to it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.store.tables import Task


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    job_id: str
    index: int
    kind: str
    status: str
    priority: int
    attempt: int
    max_attempts: int
    payload: dict[str, Any]
    request_id: str | None
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    result: dict[str, Any] | None
    last_error: str
    error_class: str
    recoverable: bool
    holds_slot: bool
    poll_chain: int
    deadline_at: float | None
    next_attempt_at: float | None
    updated_at: float

    @classmethod
    def of(cls, row: Row[Any]) -> TaskRecord:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


TASK_COLUMNS = [Task.__table__.c[f.name] for f in fields(TaskRecord)]


async def load_task(session: AsyncSession, task_id: int) -> TaskRecord | None:
    row = (await session.execute(select(*TASK_COLUMNS).where(Task.id == task_id))).one_or_none()
    return None if row is None else TaskRecord.of(row)


async def load_tasks(session: AsyncSession, *where: Any) -> list[TaskRecord]:
    rows = await session.execute(select(*TASK_COLUMNS).where(*where).order_by(Task.index))
    return [TaskRecord.of(r) for r in rows]
