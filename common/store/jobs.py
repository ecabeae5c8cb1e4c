"""Job-level writes the gateway makes: create (idempotent), retry what failed, cancel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update

from common.domain.events import EventDraft, EventType
from common.domain.states import (
    RETRIABLE_TASK,
    TERMINAL_TASK,
    JobStatus,
    TaskKind,
    TaskStatus,
    check_task_transition,
)
from common.errors import AlreadyExists, FailedPrecondition, NotFound
from common.messages import MessageKind, TaskMessage, outgoing
from common.store.ledger import Tx
from common.store.tables import Job, Task
from common.store.tasks import SLOT_PROVIDER, release_slots


@dataclass(frozen=True)
class NewTask:
    index: int
    kind: TaskKind
    payload: dict[str, Any]
    # BLOCKED for story sets (they wait for the plan); QUEUED otherwise.
    status: TaskStatus = TaskStatus.QUEUED


@dataclass(frozen=True)
class NewJob:
    id: str
    kind: str
    priority: int
    idempotency_key: str | None
    request_hash: str
    params: dict[str, Any]
    max_attempts: int
    tasks: list[NewTask] = field(default_factory=list)


async def create_job(tx: Tx, job: NewJob) -> tuple[str, bool]:
    """Record `job` and its tasks; with a known idempotency key return the existing job.

    Returns (job id, created). Tasks start QUEUED with a deadline, so that if the caller dies
    before publishing them, the sweeper does.
    """
    if job.idempotency_key:
        found = (
            await tx.session.execute(
                select(Job.id, Job.request_hash).where(Job.idempotency_key == job.idempotency_key)
            )
        ).one_or_none()
        if found is not None:
            if found.request_hash != job.request_hash:
                raise AlreadyExists(
                    f"idempotency_key: {job.idempotency_key!r} was used for a different request"
                    f" (job {found.id})"
                )
            return found.id, False
    await tx.session.execute(
        insert(Job).values(
            id=job.id,
            kind=job.kind,
            status=JobStatus.QUEUED,
            priority=job.priority,
            idempotency_key=job.idempotency_key,
            request_hash=job.request_hash,
            params=job.params,
            meta={},
            retry_history=[],
            total_tasks=len(job.tasks),
            open_tasks=len(job.tasks),
            last_seq=0,
            cancel_requested=False,
            message="queued",
            warning="",
            created_at=tx.now,
            updated_at=tx.now,
        )
    )
    deadline = tx.now + tx.timings.stale_after
    await tx.session.execute(
        insert(Task),
        [
            {
                "job_id": job.id,
                "index": t.index,
                "kind": t.kind,
                "status": t.status,
                "priority": job.priority,
                "attempt": 1,
                "max_attempts": job.max_attempts,
                "payload": t.payload,
                "last_error": "",
                "error_class": "",
                "recoverable": False,
                "holds_slot": False,
                "poll_chain": 0,
                "deadline_at": deadline if t.status is TaskStatus.QUEUED else None,
                "updated_at": tx.now,
            }
            for t in job.tasks
        ],
    )
    noun = "sets" if job.kind == "story" else "segments"
    await tx.emit(
        job.id,
        EventDraft(
            EventType.JOB_CREATED,
            message=f"job created with {len(job.tasks)} tasks ({noun})",
            job_status=JobStatus.QUEUED,
            details={"total_tasks": len(job.tasks)},
        ),
    )
    return job.id, True


async def _job_for_update(tx: Tx, job_id: str) -> Job:
    job = (
        await tx.session.execute(
            select(Job)
            .where(Job.id == job_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if job is None:
        raise NotFound(f"job_id: no job {job_id!r}")
    return job


async def retry_failed(tx: Tx, job_id: str, max_retries: int) -> list[int]:
    """Re-queue the failed, skipped and cancelled tasks of a finished job; return their indices.

    Successful tasks are never touched. Story sets whose plan is re-run go back to BLOCKED and
    follow the plan again, so a retried set is generated from the same title and roster.
    """
    job = await _job_for_update(tx, job_id)
    status = JobStatus(job.status)
    if not status.terminal:
        raise FailedPrecondition(
            f"job {job_id} is {status.value}: RetryFailed needs a finished job (watch it first)"
        )
    tasks = (
        await tx.session.scalars(
            select(Task)
            .where(Task.job_id == job_id, Task.status.in_(RETRIABLE_TASK))
            .order_by(Task.index)
        )
    ).all()
    if not tasks:
        return []
    plan_pending = any(t.kind == TaskKind.STORY_PLAN for t in tasks)
    history = [*job.retry_history, _round(tx.now, tasks, max_retries)]
    await tx.session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            retry_history=history,
            cancel_requested=False,
            finished_at=None,
            warning="",
        )
    )
    head = await tx.emit(
        job_id,
        EventDraft(
            EventType.RETRY_REQUESTED,
            message=f"retrying {len(tasks)} tasks with up to {max_retries} retries each",
            details={"tasks": [t.index for t in tasks], "max_retries": max_retries},
        ),
        open_delta=len(tasks),
    )
    head = await tx.set_job_status(head, JobStatus.RUNNING, f"retrying {len(tasks)} tasks")
    deadline = tx.now + tx.timings.stale_after
    events = []
    for task in tasks:
        blocked = plan_pending and task.kind == TaskKind.STORY_SET
        new = TaskStatus.BLOCKED if blocked else TaskStatus.QUEUED
        check_task_transition(TaskStatus(task.status), new)
        attempt = task.attempt + 1
        await tx.session.execute(
            update(Task)
            .where(Task.id == task.id)
            .values(
                status=new,
                attempt=attempt,
                max_attempts=attempt + max_retries,
                request_id=None,
                status_url=None,
                response_url=None,
                cancel_url=None,
                recoverable=False,
                deadline_at=None if blocked else deadline,
                next_attempt_at=None,
                updated_at=tx.now,
            )
            .execution_options(synchronize_session=False)
        )
        events.append(
            EventDraft(
                EventType.TASK_STATUS,
                message="re-queued by RetryFailed",
                task_index=task.index,
                task_status=new,
                details={"attempt": attempt},
            )
        )
    await tx.emit(job_id, *events)
    return [t.index for t in tasks]


def _round(now: float, tasks: Sequence[Task], max_retries: int) -> dict[str, Any]:
    return {"requested_at": now, "tasks": [t.index for t in tasks], "max_retries": max_retries}


async def cancel_job(tx: Tx, job_id: str) -> int:
    """Cancel every unfinished task; owe a provider cancel for in-flight requests.

    Returns the number of tasks cancelled. Cancelling a cancelled job is a no-op; cancelling a
    job that finished otherwise is FailedPrecondition.
    """
    job = await _job_for_update(tx, job_id)
    status = JobStatus(job.status)
    if status is JobStatus.CANCELLED:
        return 0
    if status.terminal:
        raise FailedPrecondition(f"job {job_id} already finished as {status.value}")
    tasks = (
        await tx.session.scalars(
            select(Task).where(Task.job_id == job_id, Task.status.not_in(TERMINAL_TASK))
        )
    ).all()
    await tx.session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    await tx.emit(job_id, EventDraft(EventType.CANCEL_REQUESTED, message="cancel requested"))
    released: dict[str, int] = {}
    events = []
    for task in tasks:
        check_task_transition(TaskStatus(task.status), TaskStatus.CANCELLED)
        if task.holds_slot:
            provider = SLOT_PROVIDER[task.kind]
            released[provider] = released.get(provider, 0) + 1
        if task.request_id:
            cancel = TaskMessage(task.id, job_id, MessageKind.CANCEL, task.attempt)
            tx.outgoing.append(outgoing(cancel, task.kind))
        events.append(
            EventDraft(
                EventType.TASK_STATUS,
                message="cancelled",
                task_index=task.index,
                task_status=TaskStatus.CANCELLED,
                details={"attempt": task.attempt},
            )
        )
    await tx.session.execute(
        update(Task)
        .where(Task.job_id == job_id, Task.status.not_in(TERMINAL_TASK))
        .values(
            status=TaskStatus.CANCELLED,
            holds_slot=False,
            deadline_at=None,
            next_attempt_at=None,
            updated_at=tx.now,
        )
        .execution_options(synchronize_session=False)
    )
    head = await tx.emit(job_id, *events, open_delta=-len(tasks))
    await tx.after_task_change(head, TaskStatus.CANCELLED)
    for provider, count in released.items():
        await release_slots(tx, provider, count)
    return len(tasks)
