"""A change set: what one handler wants changed, applied later together with others.

A handler does not talk to the database while it decides. It records its changes on a
`ChangeSet` — "move task T from the state I read to RUNNING", "start an attempt if a provider
slot is free", "emit this event", "send this message once committed" — and the group committer
(common.committer) applies many change sets in one database transaction. Each change set is
all-or-nothing: if a task it names is no longer in the state (status, attempt, slot) the handler
read, none of its changes apply and its commit raises StaleTask.

Every task change appends its event in the same transaction, numbered from the job's
`last_seq` under the job row's lock, so one job's events commit in cursor order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from common.domain.events import EventDraft
from common.domain.messages import Send, TaskMessage
from common.domain.records import TaskRecord
from common.domain.states import JobStatus, TaskStatus


class StaleTask(Exception):
    """The task changed under us (another worker, a cancel, a newer attempt): drop the work."""


@dataclass(frozen=True)
class StoreTimings:
    """Deadlines the store writes: after `stale_after` seconds of silence a task's next message
    is presumed lost and the sweeper re-issues it. A QUEUED task whose message RabbitMQ holds is
    re-issued only after `queued_stale_after` (RabbitMQ keeps it durably; this only covers a
    message dead-lettered by an outage)."""

    stale_after: float = 60.0
    queued_stale_after: float = 600.0


@dataclass(frozen=True)
class Seen:
    """A task as the caller read it; a change applies only while the row still looks so."""

    task_id: int
    job_id: str
    index: int
    kind: str
    status: TaskStatus
    attempt: int
    holds_slot: bool
    priority: int

    @classmethod
    def of(cls, task: TaskRecord) -> Seen:
        return cls(
            task.id,
            task.job_id,
            task.index,
            task.kind,
            TaskStatus(task.status),
            task.attempt,
            task.holds_slot,
            task.priority,
        )


@dataclass(frozen=True)
class Failure:
    """Why a task failed, as recorded on the task and its event."""

    message: str
    error_class: str
    recoverable: bool


@dataclass(frozen=True)
class Start:
    """Start an attempt: the kind's in-flight status, with one of its pool's slots (kept if the
    task holds one), or WAITING if none is free; and, when `budget` names a provider budget,
    only if that budget allows a call of `tokens` now; otherwise `resend` is sent again once it
    will (a deferral: no attempt spent)."""

    deadline_at: float
    waiting_message: str = "waiting for a provider slot"
    budget: str | None = None
    tokens: int = 0
    resend: TaskMessage | None = None


@dataclass(frozen=True)
class Pause:
    """Every worker waits for `budget` until `until` (a provider's 429 with Retry-After)."""

    budget: str
    until: float


@dataclass(frozen=True)
class Learn:
    """What the provider's headers said of `budget`: limits per minute and how much is used."""

    budget: str
    rpm: int | None = None
    tpm: int | None = None
    used_requests: int | None = None


@dataclass(frozen=True)
class ChargeRetry:
    """A retry of `task_id` spends `budget`'s retry budget; over it, the retry waits for the
    minute to end (a deferral, visible as an event)."""

    budget: str
    task_id: int


@dataclass(frozen=True)
class Tally:
    """Provider calls made besides attempt starts (status checks, results): they count towards
    `budget`'s calls of the minute."""

    budget: str
    calls: int


@dataclass(frozen=True)
class Accepted:
    """The provider accepted a submit of `budget` answered at `at` (see scheduling.accepted)."""

    budget: str
    at: float


BudgetOp = Pause | Learn | ChargeRetry | Tally | Accepted


@dataclass(frozen=True)
class TaskChange:
    seen: Seen
    # None: no status change (a note: an event and/or other columns), or decided by `start`.
    new: TaskStatus | None
    message: str = ""
    event: EventDraft | None = None
    failure: Failure | None = None
    details: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    start: Start | None = None
    # A note that hands the task's provider slot on (its request finished at the provider).
    release_slot: bool = False


@dataclass(frozen=True)
class JobTasksChange:
    """Every task of a job of kind `kind` in `old` status moves to `new` (e.g. story sets
    following their plan)."""

    job_id: str
    kind: str
    old: TaskStatus
    new: TaskStatus
    message: str
    failure: Failure | None = None
    values: dict[str, Any] = field(default_factory=dict)
    # Owe each moved task its run message.
    send_run: bool = False


@dataclass(frozen=True)
class JobHead:
    """A job's bookkeeping columns after a commit."""

    id: str
    kind: str
    status: JobStatus
    open_tasks: int
    last_seq: int
    cancel_requested: bool
    created_at: float = 0.0


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    event: EventDraft


Op = TaskChange | JobTasksChange | JobEvent


@dataclass
class ChangeSet:
    """What one handler wants done, in order, and, once committed, what happened."""

    now: float
    timings: StoreTimings = field(default_factory=StoreTimings)
    ops: list[Op] = field(default_factory=list)
    job_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Jobs to move from a terminal status back to RUNNING (RetryFailed), with the message.
    reopen: dict[str, str] = field(default_factory=dict)
    # Slot pools whose count is recomputed from the tasks, and free slots handed out.
    rebalance: set[str] = field(default_factory=set)
    # Clear the `warning` of every job whose warning starts with one of these.
    clear_warnings: list[str] = field(default_factory=list)
    # Messages owed once committed.
    sends: list[Send] = field(default_factory=list)
    # Changes to shared provider budgets, and attempt durations per model (deadlines).
    budget_ops: list[BudgetOp] = field(default_factory=list)
    durations: list[tuple[str, float]] = field(default_factory=list)
    # Run if the change set is rejected or its transaction fails (e.g. to put notes back).
    on_abort: list[Callable[[], None]] = field(default_factory=list)

    # Results, filled in by the applier.
    error: Exception | None = None
    applied: dict[int, TaskStatus] = field(default_factory=dict)
    written: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Tasks whose start or retry waits for a provider budget, and how long.
    deferred: dict[int, float] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    finished: list[JobHead] = field(default_factory=list)

    # Recording ---------------------------------------------------------------------------

    def change(
        self,
        task: TaskRecord,
        new: TaskStatus,
        *,
        message: str,
        failure: Failure | None = None,
        details: dict[str, Any] | None = None,
        **values: Any,
    ) -> None:
        """Move `task` from the state it was read in to `new`, with an event."""
        self.ops.append(
            TaskChange(Seen.of(task), new, message, None, failure, details or {}, values)
        )

    def start(
        self,
        task: TaskRecord,
        *,
        message: str,
        deadline_at: float,
        budget: str | None = None,
        tokens: int = 0,
        resend: TaskMessage | None = None,
        **values: Any,
    ) -> None:
        """The kind's in-flight status with a provider slot (kept if the task holds one, none
        needed if the kind has no pool), else WAITING, unless `budget` says wait (then
        `deferred[task.id]`); read `applied[task.id]` after the commit to know which. `values`:
        more columns, written only if the attempt starts."""
        start = Start(deadline_at=deadline_at, budget=budget, tokens=tokens, resend=resend)
        self.ops.append(TaskChange(Seen.of(task), None, message, values=values, start=start))

    def pause(self, budget: str, until: float) -> None:
        self.budget_ops.append(Pause(budget, until))

    def accepted(self, budget: str, at: float) -> None:
        self.budget_ops.append(Accepted(budget, at))

    def learn(self, budget: str, **limits: int | None) -> None:
        self.budget_ops.append(Learn(budget, **limits))

    def charge_retry(self, budget: str, task: TaskRecord) -> None:
        self.budget_ops.append(ChargeRetry(budget, task.id))

    def tally(self, budget: str, calls: int) -> None:
        self.budget_ops.append(Tally(budget, calls))

    def observe(self, model: str, seconds: float) -> None:
        """A successful attempt of `model` took `seconds` (learned for deadlines)."""
        self.durations.append((model, seconds))

    def note(
        self,
        task: TaskRecord,
        event: EventDraft | None = None,
        *,
        release_slot: bool = False,
        **values: Any,
    ) -> None:
        """An event about `task` and/or columns other than its status, if it is unchanged;
        `release_slot`: its provider slot (if it holds one) goes to a waiting task."""
        self.ops.append(
            TaskChange(Seen.of(task), None, event=event, values=values, release_slot=release_slot)
        )

    def change_job_tasks(self, change: JobTasksChange) -> None:
        self.ops.append(change)

    def emit(self, job_id: str, event: EventDraft) -> None:
        self.ops.append(JobEvent(job_id, event))

    def update_job(self, job_id: str, **values: Any) -> None:
        self.job_values.setdefault(job_id, {}).update(values)

    def reopen_job(self, job_id: str, message: str) -> None:
        self.reopen[job_id] = message

    def send(
        self,
        task: TaskRecord,
        message: TaskMessage,
        *,
        delay: float = 0.0,
        boost: bool = False,
        slack: float = 0.0,
    ) -> None:
        """Owe `message` about `task` once this change set is committed (see `Send`)."""
        send = Send(message, task.kind, task.priority, max(0.0, delay), boost, slack=slack)
        self.sends.append(send)

    def after(self, task: TaskRecord) -> TaskRecord:
        """`task` as this committed change set left it."""
        written = self.written.get(task.id)
        return replace(task, **written) if written else task

    @property
    def job_ids(self) -> set[str]:
        ids = {op.seen.job_id if isinstance(op, TaskChange) else op.job_id for op in self.ops}
        return ids | set(self.job_values) | set(self.reopen)

    @property
    def first_job(self) -> str | None:
        """The job this change set is mainly about (the first it names), if any."""
        for op in self.ops:
            return op.seen.job_id if isinstance(op, TaskChange) else op.job_id
        return next(iter(self.job_values), None)

    def reset_results(self) -> None:
        """Forget the results of an application that was rolled back."""
        self.error = None
        self.applied.clear()
        self.written.clear()
        self.deferred.clear()
        self.notes.clear()
        self.finished.clear()
