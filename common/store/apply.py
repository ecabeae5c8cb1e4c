"""Apply a batch of recorded units of work (`Tx`) in one transaction, with set-based SQL.

One pass costs a handful of statements whatever the batch size: lock the provider-slot rows,
the jobs and the tasks involved (in that order, everywhere, so PostgreSQL transactions queue
instead of deadlocking); check every record against the rows as they are now; apply the valid
ones in order to an in-memory view (so two records in one batch see each other, e.g. duplicate
deliveries of one message); hand freed provider slots to waiting tasks; then write all task
updates with executemany, one UPDATE per job (cursor, open-task count, status) and all events
with one executemany INSERT.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from common.broker import Outgoing
from common.domain.events import EventDraft, EventType
from common.domain.states import (
    IllegalTransition,
    JobStatus,
    TaskStatus,
    check_job_transition,
    check_task_transition,
)
from common.errors import NotFound
from common.messages import MessageKind, TaskMessage, outgoing
from common.store.ledger import (
    SLOT_PROVIDER,
    Failure,
    JobHead,
    JobTasksChange,
    StaleTask,
    StoreTimings,
    TaskChange,
    Tx,
)
from common.store.live import LiveJob, LiveTask, Slots, event_row, live_task
from common.store.outcome import finish
from common.store.tables import Base, Event, Job, ProviderSlots, Task

_tasks = Base.metadata.tables[Task.__tablename__]
_jobs = Base.metadata.tables[Job.__tablename__]
_events = Base.metadata.tables[Event.__tablename__]
_slots = Base.metadata.tables[ProviderSlots.__tablename__]

# A task keeps its provider slot in these statuses (QUEUED: granted, its run message on the way).
KEEPS_SLOT = frozenset({TaskStatus.QUEUED, TaskStatus.SUBMITTING, TaskStatus.RUNNING})
ACTIVE = frozenset({TaskStatus.WAITING, TaskStatus.SUBMITTING, TaskStatus.RUNNING})
_LIVE_COLUMNS = [
    _tasks.c.id,
    _tasks.c.job_id,
    _tasks.c.index,
    _tasks.c.kind,
    _tasks.c.status,
    _tasks.c.attempt,
    _tasks.c.holds_slot,
    _tasks.c.priority,
]
IN_CHUNK = 5000  # stay far below SQLite's limit on bound parameters


class Batch:
    """One application of a list of records; `run` returns the messages owed after commit."""

    def __init__(self, conn: AsyncConnection, now: float, timings: StoreTimings) -> None:
        self.conn = conn
        self.now = now
        self.timings = timings
        self.locking = conn.dialect.name == "postgresql"
        self.tasks: dict[int, LiveTask] = {}
        self.jobs: dict[str, LiveJob] = {}
        self.slots: dict[str, Slots] = {}
        self.updates: dict[int, dict[str, Any]] = defaultdict(dict)
        self.by_job_status: dict[tuple[str, TaskStatus], list[int]] = {}
        self.outgoing: list[Outgoing] = []
        # job id -> newest cursor written in this batch: progress notes for watchers.
        self.notes: dict[str, int] = {}
        self.rebalance: set[str] = set()
        self.clear_warnings: list[str] = []

    async def run(self, txs: Sequence[Tx]) -> list[Outgoing]:
        await self._load(txs)
        for tx in txs:
            self._apply(tx)
        await self._grant()
        await self._flush_tasks()
        await self._flush_slots()
        await self._flush_jobs()
        return self.outgoing

    # Loading (and locking) -----------------------------------------------------------------

    def _for_update(self, stmt: Any) -> Any:
        return stmt.with_for_update() if self.locking else stmt

    async def _load(self, txs: Sequence[Tx]) -> None:
        changes = [op for tx in txs for op in tx.ops if isinstance(op, TaskChange)]
        providers = {
            SLOT_PROVIDER[c.seen.kind]
            for c in changes
            if c.seen.kind in SLOT_PROVIDER and (c.start or c.seen.holds_slot)
        }
        for tx in txs:
            providers |= tx.rebalance
            self.rebalance |= tx.rebalance
            self.clear_warnings += tx.clear_warnings
        if providers:
            rows = await self.conn.execute(
                self._for_update(
                    select(_slots.c.name, _slots.c.in_flight, _slots.c.capacity)
                    .where(_slots.c.name.in_(sorted(providers)))
                    .order_by(_slots.c.name)
                )
            )
            self.slots = {r.name: Slots(r.in_flight, r.capacity) for r in rows}
        job_ids = sorted(set().union(*(tx.job_ids for tx in txs)))
        for chunk in _chunks(job_ids):
            rows = await self.conn.execute(
                self._for_update(select(_jobs).where(_jobs.c.id.in_(chunk)).order_by(_jobs.c.id))
            )
            for r in rows:
                self.jobs[r.id] = LiveJob(
                    r.id, r.kind, JobStatus(r.status), r.open_tasks, r.last_seq, r.cancel_requested
                )
        await self._load_tasks(
            _tasks.c.id.in_(c) for c in _chunks(sorted({c.seen.task_id for c in changes}))
        )
        for tx in txs:
            for op in tx.ops:
                if isinstance(op, JobTasksChange) and (op.job_id, op.old) not in self.by_job_status:
                    found = await self._load_tasks(
                        [(_tasks.c.job_id == op.job_id) & (_tasks.c.status == op.old)]
                    )
                    self.by_job_status[(op.job_id, op.old)] = found

    async def _load_tasks(self, conditions: Iterable[Any]) -> list[int]:
        found: list[int] = []
        for condition in conditions:
            rows = await self.conn.execute(
                self._for_update(select(*_LIVE_COLUMNS).where(condition).order_by(_tasks.c.id))
            )
            for r in rows:
                self.tasks.setdefault(r.id, live_task(r))
                found.append(r.id)
        return found

    # Applying records, in order ----------------------------------------------------------

    def _apply(self, tx: Tx) -> None:
        try:
            self._check(tx)
        except (StaleTask, NotFound, IllegalTransition, ValueError) as exc:
            tx.error = exc  # this record only: the rest of the batch goes on
            return
        for job_id in tx.job_ids:
            self.jobs[job_id].txs.append(tx)
        for op in tx.ops:
            if isinstance(op, TaskChange):
                self._change(tx, op)
            elif isinstance(op, JobTasksChange):
                self._change_job_tasks(tx, op)
            else:
                self.jobs[op.job_id].events.append(op.event)
        for job_id, values in tx.job_values.items():
            self.jobs[job_id].values.update(values)
        for job_id, message in tx.reopen.items():
            self.jobs[job_id].reopen = message
        self.outgoing += tx.outgoing

    def _check(self, tx: Tx) -> None:
        """Every task the record names still looks as its author read it (or StaleTask)."""
        seen_ids: set[int] = set()
        for op in tx.ops:
            if not isinstance(op, TaskChange):
                continue
            seen = op.seen
            if seen.task_id in seen_ids:
                raise ValueError(f"one record changes task {seen.task_id} twice")
            seen_ids.add(seen.task_id)
            live = self.tasks.get(seen.task_id)
            if live is None or (live.status, live.attempt, live.holds_slot) != (
                seen.status,
                seen.attempt,
                seen.holds_slot,
            ):
                raise StaleTask(f"task {seen.task_id} changed since it was read")
            if op.start is not None:  # either outcome must be allowed
                check_task_transition(live.status, TaskStatus.SUBMITTING)
                check_task_transition(live.status, TaskStatus.WAITING)
            elif op.new is not None:
                check_task_transition(live.status, op.new)
        for op in tx.ops:
            if isinstance(op, JobTasksChange):
                check_task_transition(op.old, op.new)
        for job_id in tx.job_ids:
            if job_id not in self.jobs:
                raise NotFound(f"job_id: no job {job_id!r}")

    def _change(self, tx: Tx, op: TaskChange) -> None:
        live = self.tasks[op.seen.task_id]
        job = self.jobs[live.job_id]
        values = dict(op.values)
        new, message = op.new, op.message
        if op.start is not None:
            slots = self.slots[op.start.provider]
            if live.holds_slot or slots.in_flight < slots.capacity:
                if not live.holds_slot:
                    slots.in_flight += 1
                    slots.changed = True
                values.update(holds_slot=True, deadline_at=op.start.deadline_at)
            else:
                new, message, values = (
                    TaskStatus.WAITING,
                    op.start.waiting_message,
                    {"deadline_at": None},
                )
            assert new is not None
            check_task_transition(live.status, new)
        if new is None:  # a note
            self._write(tx, live, values)
            if op.event is not None:
                job.events.append(op.event)
            return
        self._move(
            tx, live, new, message=message, values=values, failure=op.failure, details=op.details
        )

    def _change_job_tasks(self, tx: Tx, op: JobTasksChange) -> None:
        for task_id in self.by_job_status.get((op.job_id, op.old), []):
            live = self.tasks[task_id]
            if live.status is not op.old:
                continue  # an earlier record in this batch moved it
            self._move(
                tx, live, op.new, message=op.message, values=dict(op.values), failure=op.failure
            )
            if op.send_run:
                run = TaskMessage(live.id, live.job_id, MessageKind.RUN, live.attempt)
                self.outgoing.append(outgoing(run, live.kind, job_priority=live.priority))

    def _move(
        self,
        tx: Tx,
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
        if live.holds_slot and new not in KEEPS_SLOT:
            values["holds_slot"] = False
            slots = self.slots[SLOT_PROVIDER[live.kind]]
            slots.in_flight = max(0, slots.in_flight - 1)
            slots.changed = slots.released = True
        if failure is not None:
            values.update(
                last_error=failure.message,
                error_class=failure.error_class,
                recoverable=failure.recoverable,
            )
        values.update(status=new, updated_at=self.now)
        job.open_delta += int(live.status.terminal) - int(new.terminal)
        job.active |= new in ACTIVE
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
        self._write(tx, live, values)
        tx.applied[live.id] = new

    def _write(self, tx: Tx, live: LiveTask, values: dict[str, Any]) -> None:
        self.updates[live.id].update(values)
        tx.written.setdefault(live.id, {}).update(values)
        live.status = TaskStatus(values.get("status", live.status))
        live.attempt = values.get("attempt", live.attempt)
        live.holds_slot = values.get("holds_slot", live.holds_slot)

    # Provider slots -----------------------------------------------------------------------

    async def _grant(self) -> None:
        for provider, slots in self.slots.items():
            kinds = [k for k, p in SLOT_PROVIDER.items() if p == provider]
            if provider in self.rebalance:
                held = await self.conn.scalar(
                    select(func.count())
                    .select_from(_tasks)
                    .where(_tasks.c.holds_slot.is_(True), _tasks.c.kind.in_(kinds))
                )
                slots.in_flight, slots.changed = int(held or 0), True
            elif not slots.released:
                continue
            free = slots.capacity - slots.in_flight
            if free <= 0:
                continue
            # Candidates: WAITING tasks this batch holds, and the next ones in the store. The
            # store's are picked unlocked, then locked job first, task second (the order every
            # transaction takes), and kept only if still WAITING.
            waiting = [
                t for t in self.tasks.values() if t.status is TaskStatus.WAITING and t.kind in kinds
            ]
            picked = (
                await self.conn.scalars(
                    select(_tasks.c.id)
                    .where(
                        _tasks.c.status == TaskStatus.WAITING,
                        _tasks.c.kind.in_(kinds),
                        _tasks.c.id.not_in(list(self.tasks)),
                    )
                    .order_by(_tasks.c.priority.desc(), _tasks.c.id)
                    .limit(free)
                )
            ).all()
            if picked:
                job_ids = await self.conn.scalars(
                    select(_tasks.c.job_id).where(_tasks.c.id.in_(picked)).distinct()
                )
                await self._load_grant_jobs(set(job_ids))
                stmt = select(*_LIVE_COLUMNS).where(
                    _tasks.c.id.in_(picked), _tasks.c.status == TaskStatus.WAITING
                )
                if self.locking:
                    stmt = stmt.with_for_update(skip_locked=True)
                for r in await self.conn.execute(stmt):
                    self.tasks[r.id] = live_task(r)
                    waiting.append(self.tasks[r.id])
            chosen = sorted(waiting, key=lambda t: (-t.priority, t.id))[:free]
            grant = Tx(now=self.now)
            for task in chosen:
                self._move(
                    grant,
                    task,
                    TaskStatus.QUEUED,
                    message="provider slot granted",
                    values={"holds_slot": True, "deadline_at": self.now + self.timings.stale_after},
                )
                slots.in_flight += 1
                slots.changed = True
                run = TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt)
                self.outgoing.append(
                    outgoing(run, task.kind, job_priority=task.priority, boost=True)
                )

    async def _load_grant_jobs(self, job_ids: set[str]) -> None:
        missing = sorted(j for j in job_ids if j not in self.jobs)
        if missing:
            rows = await self.conn.execute(
                self._for_update(select(_jobs).where(_jobs.c.id.in_(missing)).order_by(_jobs.c.id))
            )
            for r in rows:
                self.jobs[r.id] = LiveJob(
                    r.id, r.kind, JobStatus(r.status), r.open_tasks, r.last_seq, r.cancel_requested
                )

    # Writing ------------------------------------------------------------------------------

    async def _flush_tasks(self) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for task_id, values in self.updates.items():
            if values:
                groups[tuple(sorted(values))].append({"_id": task_id, **values})
        for keys, params in groups.items():
            stmt = (
                update(_tasks)
                .where(_tasks.c.id == bindparam("_id"))
                .values({k: bindparam(k, type_=_tasks.c[k].type) for k in keys})
            )
            await self.conn.execute(stmt, params)

    async def _flush_slots(self) -> None:
        for name, slots in self.slots.items():
            if slots.changed:
                await self.conn.execute(
                    update(_slots).where(_slots.c.name == name).values(in_flight=slots.in_flight)
                )

    async def _flush_jobs(self) -> None:
        rows: list[dict[str, Any]] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            status = job.status
            values = dict(job.values)
            if job.reopen is not None:
                status = self._job_status(job, status, JobStatus.RUNNING, job.reopen, values)
                values["finished_at"] = None
            elif status is JobStatus.QUEUED and job.active:
                status = self._job_status(job, status, JobStatus.RUNNING, "started", values)
            open_tasks = job.open_tasks + job.open_delta
            finishing = open_tasks == 0 and job.touched and not status.terminal
            if finishing:
                cancelled = bool(values.get("cancel_requested", job.cancel_requested))
                outcome, message = await finish(self.conn, job.id, job.kind, cancelled=cancelled)
                status = self._job_status(job, status, outcome, message, values)
                values["finished_at"] = self.now
            if not job.events and not values and job.open_delta == 0:
                continue
            first = job.last_seq + 1
            last = job.last_seq + len(job.events)
            await self.conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job.id)
                .values(last_seq=last, open_tasks=open_tasks, updated_at=self.now, **values)
            )
            rows += [event_row(job.id, first + i, e, self.now) for i, e in enumerate(job.events)]
            head = JobHead(
                job.id,
                job.kind,
                status,
                open_tasks,
                last,
                bool(values.get("cancel_requested", job.cancel_requested)),
            )
            if job.events:
                self.notes[job.id] = last
            for tx in job.txs:
                if job.events:
                    tx.notes[job.id] = last
                if finishing:
                    tx.finished.append(head)
        if rows:
            await self.conn.execute(insert(_events), rows)
        for prefix in self.clear_warnings:
            await self.conn.execute(
                update(_jobs).where(_jobs.c.warning.startswith(prefix)).values(warning="")
            )

    def _job_status(
        self,
        job: LiveJob,
        old: JobStatus,
        new: JobStatus,
        message: str,
        values: dict[str, Any],
    ) -> JobStatus:
        check_job_transition(old, new)
        values.update(status=new, message=message)
        job.events.append(EventDraft(EventType.JOB_STATUS, message=message, job_status=new))
        return new


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + IN_CHUNK] for i in range(0, len(items), IN_CHUNK)]
