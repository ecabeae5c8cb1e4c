"""Changes every kind records the same way: a failed attempt, and a deferral.

A failed attempt goes through the kind's retry policy: RETRYING with the next attempt's message
scheduled after the backoff delay (through RabbitMQ's delay tiers), or FAILED with its error,
error class and whether a later RetryFailed may help. A deferral (the circuit is open) puts the
same message off without spending an attempt, and moves the task's deadline past the delay so
the sweeper does not mistake the wait for a lost message.
"""

from __future__ import annotations

from common.domain.changes import ChangeSet, Failure
from common.domain.events import EventDraft, EventType
from common.domain.messages import MessageKind, TaskMessage
from common.domain.records import TaskRecord
from common.domain.states import TaskStatus
from common.resilience import Decision, ErrorClass, ProviderError, Retry, RetryPolicy


def fail_attempt(
    cs: ChangeSet, task: TaskRecord, error: ProviderError, policy: RetryPolicy
) -> Decision:
    """Record that `task`'s current attempt failed with `error`; retry or give up."""
    decision = policy.decide(error, task.attempt, max_attempts=task.max_attempts)
    what = f"attempt {task.attempt} failed ({error.error_class})"
    if error.error_class is ErrorClass.TIMEOUT and task.request_id is None:
        # The provider may have accepted the request before the answer was lost.
        what += "; the provider may still have run it"
    if isinstance(decision, Retry):
        attempt = task.attempt + 1
        cs.change(
            task,
            TaskStatus.RETRYING,
            message=f"{what}; attempt {attempt} in {decision.delay:.1f}s",
            failure=Failure(error.message, error.error_class, recoverable=True),
            details={"retry_in": round(decision.delay, 3), "error": error.message},
            attempt=attempt,
            request_id=None,
            handle=None,
            next_attempt_at=cs.now + decision.delay,
            deadline_at=cs.now + decision.delay + cs.timings.stale_after,
        )
        run = TaskMessage(task.id, task.job_id, MessageKind.RUN, attempt)
        cs.send(task, run, delay=decision.delay)
    else:
        cs.change(
            task,
            TaskStatus.FAILED,
            message=f"{what}; failed: {decision.reason}",
            failure=Failure(error.message, error.error_class, decision.recoverable),
            details={"error": error.message},
        )
    return decision


def defer(
    cs: ChangeSet, task: TaskRecord, message: TaskMessage, delay: float, breaker: str
) -> None:
    """The circuit is open: send the same message again after `delay`, attempt unspent."""
    cs.note(
        task,
        EventDraft(
            EventType.TASK_DEFERRED,
            message=f"{breaker} circuit open; deferred {delay:.1f}s",
            task_index=task.index,
            task_status=task.status,
            details={"retry_in": round(delay, 3), "breaker": breaker},
        ),
        deadline_at=cs.now + delay + cs.timings.stale_after,
    )
    cs.send(task, message, delay=delay)


def progress(task: TaskRecord, message: str, **details: object) -> EventDraft:
    """A progress event about `task` (no status change)."""
    return EventDraft(
        EventType.TASK_PROGRESS,
        message=message,
        task_index=task.index,
        task_status=task.status,
        details=dict(details),
    )
