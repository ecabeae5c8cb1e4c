"""Scheduling rules, as pure functions: who gets a provider slot, how a job's status follows its
tasks, and how a finished job is summed up.

The batch applier (common.domain.batch) calls these while it applies change sets to the rows the
store loaded; they see only immutable values, so they are unit-tested without a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.domain.states import JobStatus, TaskStatus, job_outcome

# A task keeps its provider slot in these statuses (QUEUED: granted, its run message on the way).
KEEPS_SLOT = frozenset({TaskStatus.QUEUED, TaskStatus.SUBMITTING, TaskStatus.RUNNING})
# A job with a task in one of these has started.
ACTIVE = frozenset({TaskStatus.WAITING, TaskStatus.SUBMITTING, TaskStatus.RUNNING})
# How many not-done task indices a finished job's message names.
SHOWN_NOT_DONE = 20


@dataclass(frozen=True)
class Candidate:
    """A WAITING task that could be handed a free slot."""

    task_id: int
    job_id: str
    priority: int


def may_take_slot(*, holds_slot: bool, in_flight: int, capacity: int) -> bool:
    """An attempt starts when its task already holds a slot or one of the pool is free."""
    return holds_slot or in_flight < capacity


def releases_slot(*, holds_slot: bool, new: TaskStatus) -> bool:
    return holds_slot and new not in KEEPS_SLOT


def grant_order(candidates: Sequence[Candidate], free: int) -> list[Candidate]:
    """The WAITING tasks that get the `free` slots: highest job priority first, then the
    oldest task (smallest id)."""
    if free <= 0:
        return []
    return sorted(candidates, key=lambda c: (-c.priority, c.task_id))[:free]


def started_status(status: JobStatus, *, active: bool) -> JobStatus | None:
    """A QUEUED job becomes RUNNING once one of its tasks is active; None: unchanged."""
    if status is JobStatus.QUEUED and active:
        return JobStatus.RUNNING
    return None


def finishes(*, open_tasks: int, touched: bool, status: JobStatus) -> bool:
    """A job finishes when a change left none of its tasks open (and it is not finished)."""
    return open_tasks == 0 and touched and not status.terminal


def outcome(
    counts: Mapping[TaskStatus, int],
    not_done: Sequence[int],
    *,
    plural: str,
    cancelled: bool,
) -> tuple[JobStatus, str]:
    """A finished job's status and message, from its output tasks per status and the indices
    of those that did not succeed (in order; more than SHOWN_NOT_DONE are elided)."""
    succeeded = counts.get(TaskStatus.SUCCEEDED, 0)
    total = sum(counts.values())
    status = job_outcome(succeeded=succeeded, unsuccessful=total - succeeded, cancelled=cancelled)
    message = f"{succeeded} of {total} {plural} succeeded"
    if not_done:
        shown = ", ".join(str(i) for i in not_done[:SHOWN_NOT_DONE])
        message += f"; not done: {shown}{'…' if len(not_done) > SHOWN_NOT_DONE else ''}"
    return status, message
