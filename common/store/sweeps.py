"""The outbox side of the store: which task messages are owed, and clean-up of old jobs.

A task that is owed a message carries a deadline. The process that made the change publishes
the message right after commit; if it dies first, the deadline passes and the sweeper re-issues
the message (`claim_overdue`). Messages are idempotent, so a re-issue that races the original
is harmless. Freshly created tasks lose their deadline once their message is confirmed
(`mark_published`): from then on RabbitMQ holds them durably.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from common.broker import Outgoing
from common.domain.states import JobStatus, TaskStatus
from common.messages import MessageKind, TaskMessage, outgoing
from common.store.ledger import Tx
from common.store.tables import Job, Task

_TERMINAL_JOB = [s for s in JobStatus if s.terminal]
CLAIM_LIMIT = 500


def message_for(task: Task, *, reissued: bool) -> Outgoing | None:
    """The message a task in its current state needs next (None when it waits on nothing)."""
    status = TaskStatus(task.status)
    if status in (TaskStatus.QUEUED, TaskStatus.RETRYING, TaskStatus.SUBMITTING):
        run = TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt, reissued=reissued)
        return outgoing(run, task.kind, job_priority=task.priority, boost=task.holds_slot)
    if status is TaskStatus.RUNNING:
        poll = TaskMessage(
            task.id, task.job_id, MessageKind.POLL, task.attempt, chain=task.poll_chain
        )
        return outgoing(poll, task.kind, job_priority=task.priority)
    return None


async def claim_overdue(tx: Tx, limit: int = CLAIM_LIMIT) -> list[Outgoing]:
    """Tasks whose deadline passed: push the deadline on and return their messages.

    A RUNNING task gets a new poll chain, so a poll chain that is merely slow dies out instead of
    doubling the polling.
    """
    overdue = (
        await tx.session.scalars(
            select(Task)
            .where(Task.deadline_at < tx.now)
            .order_by(Task.deadline_at)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
    ).all()
    messages: list[Outgoing] = []
    deadline = tx.now + tx.timings.stale_after
    for task in overdue:
        chain = task.poll_chain + 1 if task.status == TaskStatus.RUNNING else task.poll_chain
        claimed = await tx.session.execute(
            update(Task)
            # Re-check the deadline: another sweeper may have claimed the row meanwhile.
            .where(Task.id == task.id, Task.deadline_at < tx.now)
            .values(deadline_at=deadline, poll_chain=chain)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            continue
        set_committed_value(task, "poll_chain", chain)
        message = message_for(task, reissued=True)
        if message is not None:
            messages.append(message)
    return messages


async def unpublished(session: AsyncSession, job_id: str) -> Sequence[Task]:
    """A job's QUEUED tasks still owed their first message (just created or re-queued)."""
    return (
        await session.scalars(
            select(Task)
            .where(
                Task.job_id == job_id,
                Task.status == TaskStatus.QUEUED,
                Task.deadline_at.is_not(None),
                Task.holds_slot.is_(False),
            )
            .order_by(Task.index)
        )
    ).all()


async def mark_published(tx: Tx, task_ids: Sequence[int]) -> None:
    """The messages of these QUEUED tasks are confirmed by the broker: clear their deadline."""
    await tx.session.execute(
        update(Task)
        .where(
            Task.id.in_(task_ids),
            Task.status == TaskStatus.QUEUED,
            Task.holds_slot.is_(False),
        )
        .values(deadline_at=None)
        .execution_options(synchronize_session=False)
    )


async def delete_finished_before(tx: Tx, cutoff: float, limit: int = 100) -> int:
    """Delete up to `limit` finished jobs older than `cutoff`, with their tasks and events."""
    ids = (
        await tx.session.scalars(
            select(Job.id)
            .where(Job.finished_at < cutoff, Job.status.in_(_TERMINAL_JOB))
            .limit(limit)
        )
    ).all()
    if ids:
        # Tasks and events go by ON DELETE CASCADE (SQLite connections enable foreign keys).
        await tx.session.execute(delete(Job).where(Job.id.in_(ids)))
    return len(ids)
