"""Change sets applied, in order, to an in-memory view of the rows a batch locked.

The store (common.store.apply) loads and locks the rows a batch of change sets names, hands
them to a `BatchState`, and writes back what the state computed: task updates, slot counts,
job rows and numbered events, and the messages owed. Everything in between happens here,
without I/O: checking each change set against the rows as they are now (a stale one is
rejected alone), applying it (so two change sets of one batch see each other), handing freed
slots to waiting tasks, and moving jobs along (by the rules in common.domain.scheduling).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from common.domain import scheduling
from common.domain.changes import (
    Accepted,
    BudgetOp,
    ChangeSet,
    ChargeRetry,
    Failure,
    JobHead,
    JobTasksChange,
    Learn,
    Pause,
    StaleTask,
    StoreTimings,
    Tally,
    TaskChange,
)
from common.domain.events import EventDraft, EventType
from common.domain.kinds import KindRegistry
from common.domain.live import JobWrite, LiveJob, LiveTask, Slots
from common.domain.messages import MessageKind, Send, TaskMessage
from common.domain.states import (
    IllegalTransition,
    JobStatus,
    TaskStatus,
    check_job_transition,
    check_task_transition,
)
from common.errors import NotFound


class BatchState:
    """The rows one batch locked and what its change sets did to them."""

    def __init__(
        self,
        now: float,
        timings: StoreTimings,
        kinds: KindRegistry,
        policy: scheduling.BudgetPolicy | None = None,
    ) -> None:
        self.now = now
        self.timings = timings
        self.kinds = kinds
        self.policy = policy or scheduling.BudgetPolicy()
        self.tasks: dict[int, LiveTask] = {}
        self.jobs: dict[str, LiveJob] = {}
        self.slots: dict[str, Slots] = {}
        # Per pool: slots held per job and owner, and the jobs' caps (fair shares).
        self.shares: dict[str, scheduling.Shares] = {}
        self.budgets: dict[str, scheduling.Budget] = {}
        # Attempt durations per model, for the store's moving averages.
        self.durations: list[tuple[str, float]] = []
        self.updates: dict[int, dict[str, Any]] = defaultdict(dict)
        # (job id, kind, status) -> ids of the job's tasks the store found in that state.
        self.groups: dict[tuple[str, str, TaskStatus], list[int]] = {}
        self.sends: list[Send] = []
        self.rebalance: set[str] = set()
        self.clear_warnings: list[str] = []
        # Job id -> newest cursor written in this batch: progress notes for watchers.
        self.notes: dict[str, int] = {}

    # What the store must load ---------------------------------------------------------------

    def pools_named(self, change_sets: Sequence[ChangeSet]) -> set[str]:
        """Slot pools whose row the batch must lock: those a start may take a slot of, or a
        change may free one of. A change that keeps its task's slot (a submitted request's id
        recorded, a note) leaves the pool's row alone, so it neither reads it nor waits for
        another process's lock on it."""
        pools: set[str] = set()
        for cs in change_sets:
            pools |= cs.rebalance
            for op in cs.ops:
                if isinstance(op, TaskChange) and (op.start or _may_free_slot(op)):
                    pool = self.kinds.pool_of(op.seen.kind)
                    if pool is not None:
                        pools.add(pool)
        return pools

    def budgets_named(self, change_sets: Sequence[ChangeSet]) -> set[str]:
        """Provider budgets whose rows the batch must lock."""
        names = {op.budget for cs in change_sets for op in cs.budget_ops}
        for cs in change_sets:
            for op in cs.ops:
                if isinstance(op, TaskChange) and op.start and op.start.budget:
                    names.add(op.start.budget)
        return names

    def add_task(self, task: LiveTask) -> None:
        self.tasks.setdefault(task.id, task)

    def add_job(self, job: LiveJob) -> None:
        self.jobs.setdefault(job.id, job)

    # Applying change sets, in order ---------------------------------------------------------

    def apply(self, cs: ChangeSet) -> None:
        """Apply `cs` whole, or set `cs.error` and leave everything as it was."""
        try:
            self._check(cs)
        except (StaleTask, NotFound, IllegalTransition, ValueError) as exc:
            cs.error = exc  # this change set only: the rest of the batch goes on
            return
        self.rebalance |= cs.rebalance
        self.clear_warnings += cs.clear_warnings
        for job_id in cs.job_ids:
            self.jobs[job_id].change_sets.append(cs)
        for op in cs.ops:
            if isinstance(op, TaskChange):
                self._change(cs, op)
            elif isinstance(op, JobTasksChange):
                self._change_group(cs, op)
            else:
                self.jobs[op.job_id].events.append(op.event)
        for job_id, values in cs.job_values.items():
            self.jobs[job_id].values.update(values)
        for job_id, message in cs.reopen.items():
            self.jobs[job_id].reopen = message
        sends = list(cs.sends)
        for budget_op in cs.budget_ops:
            sends = self._budget_op(cs, budget_op, sends)
        self.durations += cs.durations
        self.sends += sends

    def _check(self, cs: ChangeSet) -> None:
        """Every task `cs` names still looks as its author read it (or StaleTask)."""
        seen_ids: set[int] = set()
        for op in cs.ops:
            if isinstance(op, JobTasksChange):
                check_task_transition(op.old, op.new)
                continue
            if not isinstance(op, TaskChange):
                continue
            seen = op.seen
            if seen.task_id in seen_ids:
                raise ValueError(f"one change set changes task {seen.task_id} twice")
            seen_ids.add(seen.task_id)
            live = self.tasks.get(seen.task_id)
            if live is None or (live.status, live.attempt, live.holds_slot) != (
                seen.status,
                seen.attempt,
                seen.holds_slot,
            ):
                raise StaleTask(f"task {seen.task_id} changed since it was read")
            if op.start is not None:  # either outcome must be allowed
                check_task_transition(live.status, self._in_flight(live))
                check_task_transition(live.status, TaskStatus.WAITING)
            elif op.new is not None:
                check_task_transition(live.status, op.new)
        for job_id in cs.job_ids:
            if job_id not in self.jobs:
                raise NotFound(f"job_id: no job {job_id!r}")

    def _budget_op(self, cs: ChangeSet, op: BudgetOp, sends: list[Send]) -> list[Send]:
        budget = self.budgets[op.budget]
        if isinstance(op, Pause):
            # The change set's time: when its author saw the 429, before the batch's wait.
            scheduling.pause(budget, op.until, self.now, refused_at=cs.now)
        elif isinstance(op, Accepted):
            scheduling.accepted(budget, op.at, self.now)
        elif isinstance(op, Learn):
            scheduling.learn(budget, rpm=op.rpm, tpm=op.tpm, used_requests=op.used_requests)
        elif isinstance(op, Tally):
            scheduling.tally(budget, self.now, op.calls)
        else:
            wait = scheduling.retry_wait(budget, self.now, self.policy)
            # The retry holds its place in the budget, waiting or not: retries queued behind
            # it wait for their own room.
            budget.retries += 1
            budget.changed = True
            if wait > 0:  # over the retry budget: the retry waits until it fits
                sends = self._retry_later(cs, op, wait, sends)
        return sends

    def _retry_later(
        self, cs: ChangeSet, op: ChargeRetry, wait: float, sends: list[Send]
    ) -> list[Send]:
        """The retry of `op.task_id` is sent `wait` seconds later than its backoff said, at
        least (an event says why)."""
        live = self.tasks[op.task_id]
        sends = [
            replace(s, delay=max(s.delay, wait)) if s.message.task_id == op.task_id else s
            for s in sends
        ]
        delay = max(s.delay for s in sends if s.message.task_id == op.task_id)
        values = {
            "next_attempt_at": self.now + delay,
            "deadline_at": self.now + delay + self.timings.stale_after,
        }
        self._write(cs, live, values)
        text = f"retry budget of {op.budget} spent: the retry waits {delay:.1f}s"
        self._deferred(cs, live, op.budget, delay, text)
        return sends

    def _defer_start(self, cs: ChangeSet, live: LiveTask, op: TaskChange, wait: float) -> None:
        """A start the provider's budget does not allow yet: its message comes back later."""
        start = op.start
        assert start is not None and start.budget is not None
        budget = self.budgets[start.budget]
        why = "paused" if budget.paused_until > self.now else "per-minute budget spent"
        over = scheduling.held_spread(budget, self.now, wait)
        wait += scheduling.release_spread(live.id, over, self.now + wait)
        self._write(cs, live, {"deadline_at": self.now + wait + self.timings.stale_after})
        self._deferred(cs, live, start.budget, wait, f"{start.budget} {why}; deferred {wait:.1f}s")
        if start.resend is not None:
            self.sends.append(Send(start.resend, live.kind, live.priority, delay=wait))

    def _deferred(
        self, cs: ChangeSet, live: LiveTask, budget: str, seconds: float, message: str
    ) -> None:
        """A budget put the task off for `seconds`: the event, and what its author learns."""
        self.jobs[live.job_id].events.append(
            EventDraft(
                EventType.TASK_DEFERRED,
                message=message,
                task_index=live.index,
                task_status=live.status,
                details={"retry_in": round(seconds, 3), "budget": budget},
            )
        )
        cs.deferred[live.id] = seconds

    def _in_flight(self, task: LiveTask) -> TaskStatus:
        return TaskStatus(self.kinds[task.kind].in_flight_status)

    def _change(self, cs: ChangeSet, op: TaskChange) -> None:
        live = self.tasks[op.seen.task_id]
        job = self.jobs[live.job_id]
        values = dict(op.values)
        new, message = op.new, op.message
        if op.start is not None:
            budget: scheduling.Budget | None = None
            if op.start.budget is not None:
                budget = self.budgets[op.start.budget]
                wait = scheduling.budget_wait(budget, self.now, op.start.tokens)
                if wait > 0:
                    self._defer_start(cs, live, op, wait)
                    return
            new = self._in_flight(live)
            pool = self.kinds.pool_of(live.kind)
            slots = self.slots[pool] if pool is not None else None
            shares = self.shares.get(pool) if pool is not None else None
            under_cap = shares is None or shares.under_cap(live.job_id)
            if slots is None:
                values["deadline_at"] = op.start.deadline_at
            elif scheduling.may_take_slot(
                holds_slot=live.holds_slot,
                in_flight=slots.in_flight,
                capacity=slots.capacity,
                under_cap=under_cap,
            ):
                if not live.holds_slot:
                    slots.in_flight += 1
                    slots.changed = True
                    self._served(job)
                    if shares is not None:
                        shares.take(live.job_id, job.owner)
                values.update(holds_slot=True, deadline_at=op.start.deadline_at)
            else:
                new, message = TaskStatus.WAITING, op.start.waiting_message
                values = {"deadline_at": None}
            if budget is not None and new is not TaskStatus.WAITING:
                # Only a call that starts spends the budget (one waiting for a slot spends
                # it when it is handed the slot and starts).
                scheduling.spend(budget, op.start.tokens)
        if new is None:  # a note
            if op.release_slot and live.holds_slot:
                self._release(live)
                values["holds_slot"] = False
            self._write(cs, live, values)
            if op.event is not None:
                job.events.append(op.event)
            return
        self._move(
            cs, live, new, message=message, values=values, failure=op.failure, details=op.details
        )

    def _change_group(self, cs: ChangeSet, op: JobTasksChange) -> None:
        for task_id in self.groups.get((op.job_id, op.kind, op.old), []):
            live = self.tasks[task_id]
            if live.status is not op.old:
                continue  # an earlier change set in this batch moved it
            self._move(
                cs, live, op.new, message=op.message, values=dict(op.values), failure=op.failure
            )
            if op.send_run:
                run = TaskMessage(live.id, live.job_id, MessageKind.RUN, live.attempt)
                self.sends.append(Send(run, live.kind, live.priority))

    def _move(
        self,
        cs: ChangeSet,
        live: LiveTask,
        new: TaskStatus,
        *,
        message: str,
        values: dict[str, Any],
        failure: Failure | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        check_task_transition(live.status, new)
        job = self.jobs[live.job_id]
        if new.terminal:
            values.update(deadline_at=None, next_attempt_at=None)
        if scheduling.releases_slot(holds_slot=live.holds_slot, new=new):
            self._release(live)
            values["holds_slot"] = False
        if failure is not None:
            values.update(
                last_error=failure.message,
                error_class=failure.error_class,
                recoverable=failure.recoverable,
            )
        values.update(status=new, updated_at=self.now)
        job.open_delta += int(live.status.terminal) - int(new.terminal)
        job.active |= new in scheduling.ACTIVE
        job.touched = True
        job.events.append(
            EventDraft(
                EventType.TASK_STATUS,
                message=message,
                task_index=live.index,
                task_status=new,
                error_class=failure.error_class if failure is not None else "",
                details={"attempt": values.get("attempt", live.attempt), **(details or {})},
            )
        )
        self._write(cs, live, values)
        cs.applied[live.id] = new

    def _release(self, live: LiveTask) -> None:
        """`live`'s provider slot goes back to its pool (handed out after the change sets)."""
        pool = self.kinds.pool_of(live.kind)
        if pool is not None and pool in self.slots:
            slots = self.slots[pool]
            slots.in_flight = max(0, slots.in_flight - 1)
            slots.changed = slots.released = True
            if pool in self.shares:
                self.shares[pool].give_back(live.job_id, self.jobs[live.job_id].owner)

    def _write(self, cs: ChangeSet, live: LiveTask, values: dict[str, Any]) -> None:
        self.updates[live.id].update(values)
        cs.written.setdefault(live.id, {}).update(values)
        live.status = TaskStatus(values.get("status", live.status))
        live.attempt = values.get("attempt", live.attempt)
        live.holds_slot = values.get("holds_slot", live.holds_slot)

    # Provider slots -------------------------------------------------------------------------

    def pools_to_grant(self) -> list[str]:
        """Pools that may have free slots to hand out: a slot was released, or a recount."""
        return [p for p, s in self.slots.items() if s.released or p in self.rebalance]

    def recount(self, pool: str, held: int) -> None:
        slots = self.slots[pool]
        slots.in_flight, slots.changed = held, True

    def free(self, pool: str) -> int:
        slots = self.slots[pool]
        return max(0, slots.capacity - slots.in_flight)

    def grant(self, pool: str) -> None:
        """Hand `pool`'s free slots to the WAITING tasks this batch holds, by the grant rule."""
        kinds = set(self.kinds.in_pool(pool))
        waiting = {
            t.id: t
            for t in self.tasks.values()
            if t.status is TaskStatus.WAITING and t.kind in kinds
        }
        shares = self.shares.setdefault(pool, scheduling.Shares({}, {}, {}, now=self.now))
        for job in self.jobs.values():
            shares.caps[job.id] = job.cap
            shares.seen(job.id, job.owner, job.slot_at)
        candidates = [
            scheduling.Candidate(t.id, t.job_id, t.priority, self.jobs[t.job_id].owner)
            for t in waiting.values()
            if t.job_id in self.jobs
        ]
        chosen = scheduling.grant_order(candidates, self.free(pool), shares)
        slots = self.slots[pool]
        grant = ChangeSet(now=self.now)
        for candidate in chosen:
            task = waiting[candidate.task_id]
            self._move(
                grant,
                task,
                TaskStatus.QUEUED,
                message="provider slot granted",
                values={"holds_slot": True, "deadline_at": self.now + self.timings.stale_after},
            )
            slots.in_flight += 1
            slots.changed = True
            self._served(self.jobs[task.job_id])
            run = TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt)
            self.sends.append(Send(run, task.kind, task.priority, boost=True))

    def _served(self, job: LiveJob) -> None:
        """One of `job`'s tasks took a slot now (stored: later batches serve others first)."""
        job.slot_at = job.values["slot_at"] = self.now

    # Jobs -----------------------------------------------------------------------------------

    def advance_jobs(self) -> list[str]:
        """Reopen and start jobs as their tasks say; the ids of the jobs that now finish."""
        finishing: list[str] = []
        for job in self.jobs.values():
            if job.reopen is not None:
                job.status = self._job_status(job, JobStatus.RUNNING, job.reopen)
                job.values["finished_at"] = None
            elif (started := scheduling.started_status(job.status, active=job.active)) is not None:
                job.status = self._job_status(job, started, "started")
            job.finishing = scheduling.finishes(
                open_tasks=job.open_tasks + job.open_delta, touched=job.touched, status=job.status
            )
            if job.finishing:
                finishing.append(job.id)
        return finishing

    def finish_jobs(
        self, outputs: Mapping[str, tuple[Mapping[TaskStatus, int], Sequence[int]]]
    ) -> list[JobWrite]:
        """Finish the jobs `advance_jobs` named, from their output tasks (per status, and the
        indices not done), then every job's row update and numbered events."""
        writes: list[JobWrite] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            cancelled = bool(job.values.get("cancel_requested", job.cancel_requested))
            if job.finishing:
                counts, not_done = outputs.get(job.id, ({}, []))
                status, message = scheduling.outcome(
                    counts, not_done, plural=self.kinds.output_plural(job.kind), cancelled=cancelled
                )
                job.status = self._job_status(job, status, message)
                job.values["finished_at"] = self.now
            if not job.events and not job.values and job.open_delta == 0:
                continue
            open_tasks = job.open_tasks + job.open_delta
            first = job.last_seq + 1
            last = job.last_seq + len(job.events)
            values = {**job.values, "last_seq": last, "open_tasks": open_tasks}
            values["updated_at"] = self.now
            writes.append(JobWrite(job.id, values, first, list(job.events)))
            head = JobHead(
                job.id, job.kind, job.status, open_tasks, last, cancelled, job.created_at
            )
            if job.events:
                self.notes[job.id] = last
            for cs in job.change_sets:
                if job.events:
                    cs.notes[job.id] = last
                if job.finishing:
                    cs.finished.append(head)
        return writes

    def _job_status(self, job: LiveJob, new: JobStatus, message: str) -> JobStatus:
        check_job_transition(job.status, new)
        job.values.update(status=new, message=message)
        job.events.append(EventDraft(EventType.JOB_STATUS, message=message, job_status=new))
        return new


def _may_free_slot(op: TaskChange) -> bool:
    """Whether `op`, applied to the task as its author saw it, hands the task's slot back."""
    if not op.seen.holds_slot:
        return False
    if op.new is None:
        return op.release_slot
    return scheduling.releases_slot(holds_slot=True, new=op.new)
