"""Task state changes — the only code that writes a task's status — and provider slots.

A change is a conditional UPDATE on (id, status, attempt): if another process moved the task
first, nothing is written and `StaleTask` rolls the transaction back. Each change appends its
event, gives back a provider slot when the task stops generating, and finishes the job when it
was the last open task.

Provider slots bound the generations in flight per provider across every worker. A task that
finds no free slot waits (WAITING) without holding a message; whoever frees a slot hands it to
the next waiting task in the same transaction and owes it a message (`Tx.outgoing`). Slot
decisions first lock the provider's row, so a release and a wait cannot miss each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from common.domain.events import EventDraft, EventType
from common.domain.states import TaskKind, TaskStatus, check_task_transition
from common.messages import MessageKind, TaskMessage, outgoing
from common.store.ledger import JobHead, StaleTask, Tx
from common.store.tables import ProviderSlots, Task

# Which provider's slots a task kind uses (story calls are bounded by worker prefetch instead).
SLOT_PROVIDER: dict[str, str] = {TaskKind.VIDEO_SEGMENT: "fal"}
# A slot is kept across these statuses (QUEUED: granted, its run message on the way).
_KEEPS_SLOT = frozenset({TaskStatus.QUEUED, TaskStatus.SUBMITTING, TaskStatus.RUNNING})


@dataclass(frozen=True)
class Failure:
    """Why a task failed, as recorded on the task and its event."""

    message: str
    error_class: str
    recoverable: bool


async def load_task(session: AsyncSession, task_id: int) -> Task | None:
    return await session.get(Task, task_id, populate_existing=True)


async def change(
    tx: Tx,
    task: Task,
    new: TaskStatus,
    *,
    message: str,
    failure: Failure | None = None,
    details: dict[str, Any] | None = None,
    **values: Any,
) -> JobHead:
    """Move `task` to `new` (checked against the transition table) and record it."""
    old = TaskStatus(task.status)
    check_task_transition(old, new)
    values["updated_at"] = tx.now
    if new.terminal:
        values.update(deadline_at=None, next_attempt_at=None)
    releasing = task.holds_slot and new not in _KEEPS_SLOT
    if releasing:
        values["holds_slot"] = False
    if failure is not None:
        values.update(
            last_error=failure.message,
            error_class=failure.error_class,
            recoverable=failure.recoverable,
        )
    result = await tx.session.execute(
        update(Task)
        .where(Task.id == task.id, Task.status == task.status, Task.attempt == task.attempt)
        .values(status=new, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleTask(f"task {task.id} changed concurrently")
    _refresh(task, status=new, **values)
    if releasing:
        await release_slots(tx, SLOT_PROVIDER[task.kind], 1)
    event = EventDraft(
        EventType.TASK_STATUS,
        message=message,
        task_index=task.index,
        task_status=new,
        error_class=failure.error_class if failure else "",
        details={"attempt": values.get("attempt", task.attempt), **(details or {})},
    )
    opened = -1 if new.terminal and not old.terminal else 0
    head = await tx.emit(task.job_id, event, open_delta=opened)
    return await tx.after_task_change(head, new)


async def note(tx: Tx, task: Task, event: EventDraft | None, **values: Any) -> JobHead | None:
    """Record an event about `task` (progress, deferral) and/or update columns that are not its
    status (deadline, poll chain), if the task is still in the state and attempt we read."""
    if values:
        result = await tx.session.execute(
            update(Task)
            .where(Task.id == task.id, Task.status == task.status, Task.attempt == task.attempt)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise StaleTask(f"task {task.id} changed concurrently")
        _refresh(task, **values)
    if event is None:
        return None
    return await tx.emit(task.job_id, event)


def _refresh(task: Task, **values: Any) -> None:
    """Mirror what was written onto the in-memory task, without marking it dirty (an attached
    object must not be flushed again, unconditionally, at commit)."""
    for key, value in values.items():
        set_committed_value(task, key, value)


async def ensure_slots(session: AsyncSession, provider: str, capacity: int) -> None:
    """Create the provider's slot row, or set its capacity (from the workers' settings)."""
    dialect = session.get_bind().dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(ProviderSlots).values(
        name=provider, in_flight=0, capacity=capacity
    )
    await session.execute(
        stmt.on_conflict_do_update(index_elements=["name"], set_={"capacity": capacity})
    )


async def _lock_slots(tx: Tx, provider: str) -> tuple[int, int]:
    """(in_flight, capacity) of `provider`, row-locked until the transaction ends.

    FOR UPDATE on PostgreSQL; SQLite write transactions are exclusive already (BEGIN IMMEDIATE).
    """
    row = (
        await tx.session.execute(
            select(ProviderSlots.in_flight, ProviderSlots.capacity)
            .where(ProviderSlots.name == provider)
            .with_for_update()
        )
    ).one_or_none()
    if row is None:
        raise LookupError(f"no slot row for provider {provider!r}; ensure_slots() at start")
    return row.in_flight, row.capacity


async def try_acquire_slot(tx: Tx, provider: str) -> bool:
    """Take one of `provider`'s slots if one is free."""
    in_flight, capacity = await _lock_slots(tx, provider)
    if in_flight >= capacity:
        return False
    await tx.session.execute(
        update(ProviderSlots)
        .where(ProviderSlots.name == provider)
        .values(in_flight=in_flight + 1)
        .execution_options(synchronize_session=False)
    )
    return True


async def release_slots(tx: Tx, provider: str, count: int) -> int:
    """Give back `count` slots and hand free slots to waiting tasks (oldest first by priority).

    With count=0 this only hands out slots that are free (the sweeper's safety net). Returns
    the number of tasks granted a slot.
    """
    in_flight, capacity = await _lock_slots(tx, provider)
    in_flight = max(0, in_flight - count)
    free = capacity - in_flight
    granted = 0
    if free > 0:
        kinds = [k for k, p in SLOT_PROVIDER.items() if p == provider]
        waiting = (
            await tx.session.scalars(
                select(Task)
                .where(Task.status == TaskStatus.WAITING, Task.kind.in_(kinds))
                .order_by(Task.priority.desc(), Task.id)
                .limit(free)
            )
        ).all()
        for task in waiting:
            await change(
                tx,
                task,
                TaskStatus.QUEUED,
                message="provider slot granted",
                holds_slot=True,
                deadline_at=tx.now + tx.timings.stale_after,
            )
            run = TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt)
            tx.outgoing.append(outgoing(run, task.kind, job_priority=task.priority, boost=True))
        granted = len(waiting)
    await tx.session.execute(
        update(ProviderSlots)
        .where(ProviderSlots.name == provider)
        .values(in_flight=in_flight + granted)
        .execution_options(synchronize_session=False)
    )
    return granted
