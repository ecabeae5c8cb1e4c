"""One write transaction (`Tx`) and the job-level bookkeeping every state change goes through.

Every change appends its events in the same transaction, numbered from the job's `last_seq`;
bumping that counter locks the job row, so one job's events commit in cursor order. When a
change finishes a job's last open task, the job's outcome is computed and recorded here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.broker import Outgoing
from common.domain.events import EventDraft, EventType
from common.domain.states import (
    JobStatus,
    TaskKind,
    TaskStatus,
    check_job_transition,
    job_outcome,
)
from common.errors import NotFound
from common.store.tables import Event, Job, Task


class StaleTask(Exception):
    """The task changed under us (another worker, a cancel, a newer attempt): drop the work."""


@dataclass(frozen=True)
class StoreTimings:
    """Deadlines the store writes: after `stale_after` seconds of silence a task's next message
    is presumed lost and the sweeper re-issues it."""

    stale_after: float = 60.0


@dataclass(frozen=True)
class JobHead:
    """The job row's bookkeeping columns as left by the last `Tx.emit`."""

    id: str
    kind: str
    status: JobStatus
    open_tasks: int
    last_seq: int
    cancel_requested: bool


@dataclass
class Tx:
    """A write transaction plus what must happen once it commits (publish, notify)."""

    session: AsyncSession
    now: float
    timings: StoreTimings = field(default_factory=StoreTimings)
    # job id -> newest cursor written: progress notes for watchers.
    notes: dict[str, int] = field(default_factory=dict)
    # Messages owed once committed (granted slots, unblocked story sets, ...).
    outgoing: list[Outgoing] = field(default_factory=list)
    # Jobs this transaction finished (their terminal status is committed with it).
    finished: list[JobHead] = field(default_factory=list)

    async def emit(self, job_id: str, *events: EventDraft, open_delta: int = 0) -> JobHead:
        """Append `events` with the job's next cursors and adjust its open-task count."""
        row = (
            await self.session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    last_seq=Job.last_seq + len(events),
                    open_tasks=Job.open_tasks + open_delta,
                    updated_at=self.now,
                )
                .returning(Job.kind, Job.status, Job.open_tasks, Job.last_seq, Job.cancel_requested)
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        head = JobHead(
            id=job_id,
            kind=row.kind,
            status=JobStatus(row.status),
            open_tasks=row.open_tasks,
            last_seq=row.last_seq,
            cancel_requested=row.cancel_requested,
        )
        if events:
            first = head.last_seq - len(events) + 1
            await self.session.execute(
                insert(Event),
                [_event_row(job_id, first + i, e, self.now) for i, e in enumerate(events)],
            )
            self.notes[job_id] = head.last_seq
        return head

    async def set_job_status(
        self, head: JobHead, status: JobStatus, message: str, **values: Any
    ) -> JobHead:
        check_job_transition(head.status, status)
        await self.session.execute(
            update(Job).where(Job.id == head.id).values(status=status, message=message, **values)
        )
        head = await self.emit(
            head.id, EventDraft(EventType.JOB_STATUS, message=message, job_status=status)
        )
        return JobHead(
            id=head.id,
            kind=head.kind,
            status=status,
            open_tasks=head.open_tasks,
            last_seq=head.last_seq,
            cancel_requested=head.cancel_requested,
        )

    async def after_task_change(self, head: JobHead, new: TaskStatus) -> JobHead:
        """Job-level consequences of a task change: the job starts, or finishes."""
        if head.status is JobStatus.QUEUED and not new.terminal:
            head = await self.set_job_status(head, JobStatus.RUNNING, "started")
        if head.open_tasks == 0 and not head.status.terminal:
            head = await self._finish(head)
        return head

    async def _finish(self, head: JobHead) -> JobHead:
        output = (Task.job_id == head.id, Task.kind != TaskKind.STORY_PLAN)
        counts = dict(
            (
                await self.session.execute(
                    select(Task.status, func.count()).where(*output).group_by(Task.status)
                )
            ).all()
        )
        not_done = (
            await self.session.scalars(
                select(Task.index)
                .where(*output, Task.status != TaskStatus.SUCCEEDED)
                .order_by(Task.index)
                .limit(21)
            )
        ).all()
        succeeded = counts.get(TaskStatus.SUCCEEDED, 0)
        total = sum(counts.values())
        outcome = job_outcome(
            succeeded=succeeded, unsuccessful=total - succeeded, cancelled=head.cancel_requested
        )
        noun = "sets" if head.kind == "story" else "segments"
        message = f"{succeeded} of {total} {noun} succeeded"
        if not_done:
            shown = ", ".join(str(i) for i in not_done[:20])
            message += f"; not done: {shown}{'…' if len(not_done) > 20 else ''}"
        head = await self.set_job_status(head, outcome, message, finished_at=self.now)
        self.finished.append(head)
        return head


def _event_row(job_id: str, seq: int, e: EventDraft, now: float) -> dict[str, Any]:
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
