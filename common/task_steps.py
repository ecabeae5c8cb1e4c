"""Steps both workers take the same way: a failed attempt, and a deferral.

A failed attempt goes through the shared retry policy: RETRYING with the next attempt's message
scheduled after the backoff delay (through RabbitMQ's delay tiers), or FAILED with its error,
error class and whether a later RetryFailed may help. A deferral (the circuit is open) puts the
same message off without spending an attempt, and moves the task's deadline past the delay so
the sweeper does not mistake the wait for a lost message.
"""

from __future__ import annotations

from common.domain.events import EventDraft, EventType
from common.domain.states import TaskStatus
from common.messages import MessageKind, TaskMessage, outgoing
from common.resilience import Decision, ErrorClass, ProviderError, Retry, RetryPolicy
from common.store.ledger import Failure, Tx
from common.store.records import TaskRecord


def fail_attempt(tx: Tx, task: TaskRecord, error: ProviderError, policy: RetryPolicy) -> Decision:
    """Record that `task`'s current attempt failed with `error`; retry or give up."""
    decision = policy.decide(error, task.attempt, max_attempts=task.max_attempts)
    what = f"attempt {task.attempt} failed ({error.error_class})"
    if error.error_class is ErrorClass.TIMEOUT and task.request_id is None:
        # The provider may have accepted the request before the answer was lost.
        what += "; the provider may still have run it"
    if isinstance(decision, Retry):
        attempt = task.attempt + 1
        tx.change(
            task,
            TaskStatus.RETRYING,
            message=f"{what}; attempt {attempt} in {decision.delay:.1f}s",
            failure=Failure(error.message, error.error_class, recoverable=True),
            details={"retry_in": round(decision.delay, 3), "error": error.message},
            attempt=attempt,
            request_id=None,
            next_attempt_at=tx.now + decision.delay,
            deadline_at=tx.now + decision.delay + tx.timings.stale_after,
        )
        run = TaskMessage(task.id, task.job_id, MessageKind.RUN, attempt)
        tx.outgoing.append(
            outgoing(run, task.kind, job_priority=task.priority, delay=decision.delay)
        )
    else:
        tx.change(
            task,
            TaskStatus.FAILED,
            message=f"{what}; failed: {decision.reason}",
            failure=Failure(error.message, error.error_class, decision.recoverable),
            details={"error": error.message},
        )
    return decision


def defer(tx: Tx, task: TaskRecord, message: TaskMessage, delay: float, breaker: str) -> None:
    """The circuit is open: send the same message again after `delay`, attempt unspent."""
    tx.note(
        task,
        EventDraft(
            EventType.TASK_DEFERRED,
            message=f"{breaker} circuit open; deferred {delay:.1f}s",
            task_index=task.index,
            task_status=task.status,
            details={"retry_in": round(delay, 3), "breaker": breaker},
        ),
        deadline_at=tx.now + delay + tx.timings.stale_after,
    )
    tx.outgoing.append(outgoing(message, task.kind, job_priority=task.priority, delay=delay))
