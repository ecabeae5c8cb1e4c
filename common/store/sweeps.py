"""The outbox side of the store: which task messages are owed, and clean-up of old jobs.

A task that is owed a message carries a deadline. The process that made the change publishes
the message right after commit; if it dies first, the deadline passes and the sweeper re-issues
the message (`claim_overdue`). Messages are idempotent, so a re-issue that races the original is
harmless. Once RabbitMQ confirmed a fresh task's message (`mark_published`) its deadline moves
far out: RabbitMQ holds it durably, and the long deadline only covers a message that an outage
dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.changes import ChangeSet, Failure
from common.domain.kinds import KindRegistry
from common.domain.messages import MessageKind, Send, TaskMessage
from common.domain.records import TaskRecord
from common.domain.states import JobStatus, TaskStatus
from common.store.records import TASK_COLUMNS, load_tasks
from common.store.tables import Job, Task

_TERMINAL_JOB = [s for s in JobStatus if s.terminal]
CLAIM_LIMIT = 500
_OWED_RUN = frozenset(
    {TaskStatus.QUEUED, TaskStatus.RETRYING, TaskStatus.SUBMITTING, TaskStatus.RUNNING}
)


def message_for(task: TaskRecord, kinds: KindRegistry, *, reissued: bool) -> Send | None:
    """The message a task in its current state needs next (None when it waits on nothing).

    A re-issued message says the sweeper found the task silent past its deadline: the work of
    its previous message is lost, so the handler may redo it.
    """
    status = TaskStatus(task.status)
    if kinds[task.kind].polled and status is TaskStatus.RUNNING:
        poll = TaskMessage(
            task.id, task.job_id, MessageKind.POLL, task.attempt, chain=task.poll_chain
        )
        return Send(poll, task.kind, task.priority, boost=True)
    if status in _OWED_RUN:
        run = TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt, reissued=reissued)
        return Send(run, task.kind, task.priority, boost=task.holds_slot)
    return None


async def claim_overdue(
    session: AsyncSession, tx: ChangeSet, kinds: KindRegistry, limit: int = CLAIM_LIMIT
) -> int:
    """Tasks whose deadline passed: push the deadline on and owe their messages on `tx`.

    A RUNNING polled task gets a new poll chain, so a poll chain that is merely slow dies out
    instead of doubling the polling. Returns the number claimed.
    """
    overdue = (
        await session.execute(
            select(*TASK_COLUMNS)
            .where(Task.deadline_at < tx.now)
            .order_by(Task.deadline_at)
            .limit(limit)
        )
    ).all()
    deadline = tx.now + tx.timings.stale_after
    claimed = 0
    for row in overdue:
        task = TaskRecord.of(row)
        chain = task.poll_chain + 1 if task.status == TaskStatus.RUNNING else task.poll_chain
        result = await session.execute(
            update(Task)
            # Re-check the deadline: another sweeper may have claimed the row meanwhile.
            .where(Task.id == task.id, Task.deadline_at < tx.now)
            .values(deadline_at=deadline, poll_chain=chain)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            continue
        claimed += 1
        message = message_for(_with_chain(task, chain), kinds, reissued=True)
        if message is not None:
            tx.sends.append(message)
    return claimed


def _with_chain(task: TaskRecord, chain: int) -> TaskRecord:
    return replace(task, poll_chain=chain)


async def unpublished(session: AsyncSession, job_id: str) -> Sequence[TaskRecord]:
    """A job's QUEUED tasks still owed their first message (just created or re-queued)."""
    return await load_tasks(
        session,
        Task.job_id == job_id,
        Task.status == TaskStatus.QUEUED,
        Task.holds_slot.is_(False),
        Task.deadline_at.is_not(None),
    )


async def mark_published(session: AsyncSession, tx: ChangeSet, task_ids: Sequence[int]) -> None:
    """RabbitMQ confirmed the messages of these QUEUED tasks: push their deadline far out."""
    await session.execute(
        update(Task)
        .where(
            Task.id.in_(task_ids),
            Task.status == TaskStatus.QUEUED,
            Task.holds_slot.is_(False),
        )
        .values(deadline_at=tx.now + tx.timings.queued_stale_after)
    )


async def delete_finished_before(
    session: AsyncSession, tx: ChangeSet, cutoff: float, limit: int = 100
) -> int:
    """Delete up to `limit` finished jobs older than `cutoff`, with their tasks and events."""
    ids = (
        await session.scalars(
            select(Job.id)
            .where(Job.finished_at < cutoff, Job.status.in_(_TERMINAL_JOB))
            .limit(limit)
        )
    ).all()
    if ids:
        # Tasks and events go by ON DELETE CASCADE (SQLite connections enable foreign keys).
        await session.execute(delete(Job).where(Job.id.in_(ids)))
    return len(ids)


_NOT_STARTED = [TaskStatus.QUEUED, TaskStatus.WAITING, TaskStatus.BLOCKED, TaskStatus.RETRYING]


async def expire_past_deadline(
    session: AsyncSession, tx: ChangeSet, limit: int = CLAIM_LIMIT
) -> int:
    """Tasks not started whose job's deadline passed end FAILED with DEADLINE_EXCEEDED
    (recoverable: RetryFailed may run them). Returns how many."""
    tasks = await load_tasks(
        session,
        Task.expires_at < tx.now,
        Task.status.in_(_NOT_STARTED),
        Task.holds_slot.is_(False),
    )
    for task in tasks[:limit]:
        tx.change(
            task,
            TaskStatus.FAILED,
            message="not started: the job's deadline passed",
            failure=Failure("the job's deadline passed", "deadline_exceeded", recoverable=True),
        )
    return min(len(tasks), limit)
