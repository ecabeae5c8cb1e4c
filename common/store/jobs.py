"""Job-level operations the gateway runs (each alone in its transaction, via
`GroupCommitter.exclusive`): create (idempotent), retry what failed, cancel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.changes import ChangeSet
from common.domain.events import EventDraft, EventType
from common.domain.kinds import KindRegistry
from common.domain.messages import MessageKind, TaskMessage
from common.domain.records import JobRecord, TaskRecord
from common.domain.states import RETRIABLE_TASK, TERMINAL_TASK, JobStatus, TaskStatus
from common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from common.store.records import load_job, load_tasks
from common.store.tables import Job, Task

# The error class of a task the job's deadline stopped (common.resilience.ErrorClass).
DEADLINE_EXCEEDED = "deadline_exceeded"


@dataclass(frozen=True)
class NewTask:
    index: int
    kind: str
    payload: dict[str, Any]
    # BLOCKED for tasks that wait for another (story sets for their plan); QUEUED otherwise.
    status: TaskStatus = TaskStatus.QUEUED
    # The identity of its provider input, for kinds whose results may be reused.
    payload_hash: str | None = None


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
    # What the job's output tasks are called, for its first event ("segments").
    plural: str = "tasks"
    # What the job knows from the start (usually nothing; see Job.meta).
    meta: dict[str, Any] = field(default_factory=dict)
    # Whose job it is (the token's name; "" when the service is anonymous).
    owner: str = ""
    max_concurrency: int = 0
    deadline_at: float | None = None
    reuse_results: bool = False


async def create_job(session: AsyncSession, tx: ChangeSet, job: NewJob) -> tuple[str, bool]:
    """Record `job` and its tasks; with a known idempotency key return the existing job.

    Returns (job id, created). Tasks start QUEUED with a deadline, so that if the caller dies
    before publishing them, the sweeper does.
    """
    if job.idempotency_key:
        found = (
            await session.execute(
                select(Job.id, Job.request_hash).where(
                    Job.owner == job.owner, Job.idempotency_key == job.idempotency_key
                )
            )
        ).one_or_none()
        if found is not None:
            if found.request_hash != job.request_hash:
                raise AlreadyExists(
                    f"idempotency_key: {job.idempotency_key!r} was used for a different request"
                    f" (job {found.id})"
                )
            return found.id, False
    await session.execute(
        insert(Job).values(
            id=job.id,
            kind=job.kind,
            status=JobStatus.QUEUED,
            priority=job.priority,
            owner=job.owner,
            max_concurrency=job.max_concurrency,
            deadline_at=job.deadline_at,
            reuse_results=job.reuse_results,
            idempotency_key=job.idempotency_key,
            request_hash=job.request_hash,
            params=job.params,
            meta=job.meta,
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
    await session.execute(
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
                "payload_hash": t.payload_hash,
                "expires_at": job.deadline_at,
                "deadline_at": deadline if t.status is TaskStatus.QUEUED else None,
                "updated_at": tx.now,
            }
            for t in job.tasks
        ],
    )
    tx.emit(
        job.id,
        EventDraft(
            EventType.JOB_CREATED,
            message=f"job created with {len(job.tasks)} tasks ({job.plural})",
            job_status=JobStatus.QUEUED,
            details={"total_tasks": len(job.tasks)},
        ),
    )
    return job.id, True


async def _job(session: AsyncSession, job_id: str) -> JobRecord:
    job = await load_job(session, job_id)
    if job is None:
        raise NotFound(f"job_id: no job {job_id!r}")
    return job


async def retry_failed(
    session: AsyncSession,
    tx: ChangeSet,
    kinds: KindRegistry,
    job_id: str,
    max_retries: int,
    *,
    indices: Sequence[int] = (),
    regenerate: bool = False,
) -> list[int]:
    """Re-queue tasks of a finished job; return their indices.

    Without `indices`: every failed, skipped and cancelled task. With them: those tasks (each
    must be one of those, or succeeded when `regenerate` asks to run it again; its result is
    kept in its history). A task whose blocking task is re-run too (a story set and its plan)
    goes back to BLOCKED and follows it again, so a retried set is generated from the same
    title and roster; a task others depend on (a plan) is never regenerated. The job's
    deadline no longer holds for re-run tasks it stopped, nor for any once it has passed.
    """
    job = await _job(session, job_id)
    status = JobStatus(job.status)
    if not status.terminal:
        raise FailedPrecondition(
            f"job {job_id} is {status.value}: RetryFailed needs a finished job (watch it first)"
        )
    if regenerate and not indices:
        raise InvalidArgument("task_indices", "required with regenerate (which tasks to re-run)")
    tasks = await _chosen(session, kinds, job_id, indices, regenerate=regenerate)
    if not tasks:
        return []
    rerun_kinds = {t.kind for t in tasks}
    chosen = [t.index for t in tasks]
    verb = "regenerating" if regenerate else "retrying"
    tx.emit(
        job_id,
        EventDraft(
            EventType.RETRY_REQUESTED,
            message=f"{verb} {len(tasks)} tasks with up to {max_retries} retries each",
            details={"tasks": chosen, "max_retries": max_retries, "regenerate": regenerate},
        ),
    )
    round_ = {"requested_at": tx.now, "tasks": chosen, "max_retries": max_retries}
    tx.update_job(
        job_id, retry_history=[*job.retry_history, round_], cancel_requested=False, warning=""
    )
    tx.reopen_job(job_id, f"{verb} {len(tasks)} tasks")
    for task in tasks:
        blocked = kinds[task.kind].blocked_by in rerun_kinds
        attempt = task.attempt + 1
        history = task.history
        if task.status == TaskStatus.SUCCEEDED:
            earlier = {"result": task.result, "attempt": task.attempt, "at": task.updated_at}
            history = [*(task.history or []), earlier]
        # A task the job's deadline stopped is re-run without it (asking for it is the
        # override: with it, it would stop again at once), and so is every task once the
        # deadline has passed; the others keep the deadline that still lies ahead.
        expires_at = task.expires_at
        stopped = task.error_class == DEADLINE_EXCEEDED
        if expires_at is not None and (stopped or expires_at <= tx.now):
            expires_at = None
        tx.change(
            task,
            TaskStatus.BLOCKED if blocked else TaskStatus.QUEUED,
            message="regenerated by RetryFailed" if regenerate else "re-queued by RetryFailed",
            attempt=attempt,
            max_attempts=attempt + max_retries,
            request_id=None,
            handle=None,
            result=None if task.status == TaskStatus.SUCCEEDED else task.result,
            history=history,
            recoverable=False,
            deadline_at=None if blocked else tx.now + tx.timings.stale_after,
            next_attempt_at=None,
            expires_at=expires_at,
        )
    return chosen


async def _chosen(
    session: AsyncSession,
    kinds: KindRegistry,
    job_id: str,
    indices: Sequence[int],
    *,
    regenerate: bool,
) -> list[TaskRecord]:
    if not indices:
        return await load_tasks(session, Task.job_id == job_id, Task.status.in_(RETRIABLE_TASK))
    wanted = sorted(set(indices))
    tasks = await load_tasks(session, Task.job_id == job_id, Task.index.in_(wanted))
    missing = sorted(set(wanted) - {t.index for t in tasks})
    if missing:
        raise InvalidArgument("task_indices", f"the job has no task {missing[0]}")
    for task in tasks:
        if task.status == TaskStatus.SUCCEEDED:
            if not regenerate:
                raise FailedPrecondition(
                    f"task {task.index} succeeded: set regenerate to run it again"
                )
            if kinds.dependents(task.kind):
                raise InvalidArgument(
                    "task_indices",
                    f"task {task.index} ({kinds[task.kind].noun}) is what others are built on;"
                    " it cannot be regenerated",
                )
        elif task.status not in RETRIABLE_TASK:
            raise FailedPrecondition(f"task {task.index} is {task.status}")
    return tasks


async def cancel_job(session: AsyncSession, tx: ChangeSet, job_id: str) -> int:
    """Cancel every unfinished task; owe a provider cancel for requests in flight.

    Returns the number of tasks cancelled. Cancelling a cancelled job is a no-op; cancelling a
    job that finished otherwise is FailedPrecondition.
    """
    job = await _job(session, job_id)
    status = JobStatus(job.status)
    if status is JobStatus.CANCELLED:
        return 0
    if status.terminal:
        raise FailedPrecondition(f"job {job_id} already finished as {status.value}")
    tasks = await load_tasks(session, Task.job_id == job_id, Task.status.not_in(TERMINAL_TASK))
    tx.update_job(job_id, cancel_requested=True)
    tx.emit(job_id, EventDraft(EventType.CANCEL_REQUESTED, message="cancel requested"))
    for task in tasks:
        tx.change(task, TaskStatus.CANCELLED, message="cancelled")
        if task.request_id:
            tx.send(task, TaskMessage(task.id, job_id, MessageKind.CANCEL, task.attempt))
    return len(tasks)
