"""The job and task state machines: one enum each, one table of allowed transitions.

Task lifecycle (video segment; story tasks skip WAITING/SUBMITTING)::

    BLOCKED ──plan done──▶ QUEUED ──slot full──▶ WAITING ──slot granted──▶ QUEUED
                              │                                             │
                              └──────────────▶ SUBMITTING ◀─────────────────┘
                                                   │ request id committed
                                                   ▼
                      RETRYING ◀──transient── RUNNING ──▶ SUCCEEDED
                          │                        │
                          └──next attempt──▶ SUBMITTING / RUNNING
                                                   └──▶ FAILED (permanent, or retries exhausted)

Any unfinished task can be CANCELLED; a BLOCKED set is SKIPPED when its plan fails. FAILED,
CANCELLED and SKIPPED tasks go back to QUEUED (or BLOCKED) only through RetryFailed.
"""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    VIDEO = "video"
    STORY = "story"


class TaskKind(StrEnum):
    VIDEO_SEGMENT = "video.segment"
    STORY_PLAN = "story.plan"
    STORY_SET = "story.set"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIALLY_FAILED = "partially_failed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_JOB


class TaskStatus(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"
    BLOCKED = "blocked"
    SUBMITTING = "submitting"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_TASK


class IllegalTransition(Exception):
    """A state change the transition table does not allow: a bug, never user input."""

    def __init__(self, machine: str, old: str, new: str) -> None:
        super().__init__(f"illegal {machine} transition {old} -> {new}")
        self.old = old
        self.new = new


T = TaskStatus
TERMINAL_TASK = frozenset({T.SUCCEEDED, T.FAILED, T.CANCELLED, T.SKIPPED})
# Terminal outcomes RetryFailed re-runs.
RETRIABLE_TASK = frozenset({T.FAILED, T.CANCELLED, T.SKIPPED})

TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    T.BLOCKED: frozenset({T.QUEUED, T.SKIPPED, T.FAILED, T.CANCELLED}),
    # QUEUED/RETRYING -> SUCCEEDED: an identical earlier result reused; -> FAILED: the job's
    # deadline came first.
    T.QUEUED: frozenset({T.WAITING, T.SUBMITTING, T.RUNNING, T.SUCCEEDED, T.FAILED, T.CANCELLED}),
    T.WAITING: frozenset({T.QUEUED, T.FAILED, T.CANCELLED}),
    T.SUBMITTING: frozenset({T.RUNNING, T.RETRYING, T.FAILED, T.CANCELLED}),
    T.RUNNING: frozenset({T.SUCCEEDED, T.RETRYING, T.FAILED, T.CANCELLED}),
    T.RETRYING: frozenset({T.WAITING, T.SUBMITTING, T.RUNNING, T.SUCCEEDED, T.FAILED, T.CANCELLED}),
    # Only RetryFailed with `regenerate` re-runs a succeeded task.
    T.SUCCEEDED: frozenset({T.QUEUED, T.BLOCKED}),
    T.FAILED: frozenset({T.QUEUED, T.BLOCKED}),
    T.CANCELLED: frozenset({T.QUEUED, T.BLOCKED}),
    T.SKIPPED: frozenset({T.QUEUED, T.BLOCKED}),
}

J = JobStatus
_TERMINAL_JOB = frozenset({J.COMPLETED, J.PARTIALLY_FAILED, J.FAILED, J.CANCELLED})

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    J.QUEUED: frozenset({J.RUNNING, J.CANCELLED, J.COMPLETED, J.PARTIALLY_FAILED, J.FAILED}),
    J.RUNNING: frozenset({J.COMPLETED, J.PARTIALLY_FAILED, J.FAILED, J.CANCELLED}),
    J.COMPLETED: frozenset({J.RUNNING}),  # RetryFailed regenerating chosen tasks
    J.PARTIALLY_FAILED: frozenset({J.RUNNING}),
    J.FAILED: frozenset({J.RUNNING}),
    J.CANCELLED: frozenset({J.RUNNING}),
}


def check_task_transition(old: TaskStatus, new: TaskStatus) -> None:
    if new not in TASK_TRANSITIONS[old]:
        raise IllegalTransition("task", old, new)


def check_job_transition(old: JobStatus, new: JobStatus) -> None:
    if new not in JOB_TRANSITIONS[old]:
        raise IllegalTransition("job", old, new)


def job_outcome(*, succeeded: int, unsuccessful: int, cancelled: bool) -> JobStatus:
    """The terminal status of a job whose output tasks are all finished."""
    if cancelled:
        return JobStatus.CANCELLED
    if unsuccessful == 0:
        return JobStatus.COMPLETED
    if succeeded == 0:
        return JobStatus.FAILED
    return JobStatus.PARTIALLY_FAILED
