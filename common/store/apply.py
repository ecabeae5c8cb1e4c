"""Apply a batch of change sets in one transaction: load and lock, let the domain decide, flush.

One pass costs a handful of statements whatever the batch size: lock the slot-pool rows, the
jobs and the tasks involved (in that order, everywhere, so PostgreSQL transactions queue instead
of deadlocking); hand them to a `BatchState` (common.domain.batch), which applies the change sets
in order and hands out freed slots; then write all task updates with executemany, one UPDATE per
job and all events with one executemany INSERT. The store decides nothing: it loads, locks and
flushes, and returns the messages the batch owes.

Its statements are built once (module level, or cached per shape) with bound parameters:
building a SQLAlchemy statement and computing its cache key on every execution cost more than
SQLite running it (a one-row select 129 against 41 us, an update 79 against 15 us, measured on
this machine), and a batch runs a dozen of them.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import BindParameter, Double, Integer, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect

from common.domain.batch import BatchState
from common.domain.changes import ChangeSet, JobTasksChange, StoreTimings, TaskChange
from common.domain.events import EventDraft
from common.domain.kinds import KindRegistry
from common.domain.live import JobWrite, LiveJob, Slots, live_task
from common.domain.messages import Send
from common.domain.scheduling import SHOWN_NOT_DONE, Budget, BudgetPolicy, Shares
from common.domain.states import JobStatus, TaskStatus
from common.store import slots
from common.store.tables import (
    Base,
    Event,
    Job,
    ModelStats,
    ProviderBudget,
    ProviderSlots,
    Task,
)

_tasks = Base.metadata.tables[Task.__tablename__]
_jobs = Base.metadata.tables[Job.__tablename__]
_events = Base.metadata.tables[Event.__tablename__]
_slots = Base.metadata.tables[ProviderSlots.__tablename__]
_budgets = Base.metadata.tables[ProviderBudget.__tablename__]
_stats = Base.metadata.tables[ModelStats.__tablename__]
DURATION_WEIGHT = 0.2

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
_JOB_COLUMNS = [
    _jobs.c[name]
    for name in (
        "id", "kind", "status", "open_tasks", "last_seq", "cancel_requested", "created_at",
        "owner", "max_concurrency", "slot_at",
    )
]  # fmt: skip
# A budget row's columns besides its name: `scheduling.Budget`'s fields of the same names.
_BUDGET_FIELDS = (
    "paused_until", "rpm", "tpm", "window_start", "requests", "tokens", "retries",
    "prev_requests", "prev_retries", "checks", "prev_checks", "paused_at", "pause_streak",
)  # fmt: skip
IN_CHUNK = 5000  # stay far below SQLite's limit on bound parameters


def _many(name: str) -> BindParameter[Any]:
    """A list parameter (`IN (...)`), expanded when the statement runs."""
    return bindparam(name, expanding=True)


def _lockable(stmt: Any, **lock: Any) -> tuple[Any, Any]:
    """A select as it is (SQLite) and locking its rows (PostgreSQL)."""
    return stmt, stmt.with_for_update(**lock)


_SLOTS = _lockable(
    select(_slots.c.name, _slots.c.in_flight, _slots.c.capacity)
    .where(_slots.c.name.in_(_many("names")))
    .order_by(_slots.c.name)
)
_BUDGETS = _lockable(
    select(_budgets).where(_budgets.c.name.in_(_many("names"))).order_by(_budgets.c.name)
)
_JOBS = _lockable(select(*_JOB_COLUMNS).where(_jobs.c.id.in_(_many("ids"))).order_by(_jobs.c.id))
_TASKS = _lockable(
    select(*_LIVE_COLUMNS).where(_tasks.c.id.in_(_many("ids"))).order_by(_tasks.c.id)
)
_TASK_GROUP = _lockable(
    select(*_LIVE_COLUMNS)
    .where(
        _tasks.c.job_id == bindparam("job_id"),
        _tasks.c.kind == bindparam("kind"),
        _tasks.c.status == bindparam("status"),
    )
    .order_by(_tasks.c.id)
)
# Candidates another transaction holds are skipped (PostgreSQL), not waited for.
_STILL_WAITING = _lockable(
    select(*_LIVE_COLUMNS).where(
        _tasks.c.id.in_(_many("ids")), _tasks.c.status == TaskStatus.WAITING
    ),
    skip_locked=True,
)
_SLOTS_UPDATE = (
    update(_slots).where(_slots.c.name == bindparam("_name")).values(in_flight=bindparam("_n"))
)
_BUDGET_UPDATE = (
    update(_budgets)
    .where(_budgets.c.name == bindparam("_name"))
    .values({f: bindparam(f"_{f}", type_=_budgets.c[f].type) for f in _BUDGET_FIELDS})
)
_INSERT_EVENTS = insert(_events)


@functools.cache
def _update_by_id(table: str, keys: tuple[str, ...]) -> Any:
    """`UPDATE table SET keys... WHERE id = :_id`, one per table and set of columns."""
    t = Base.metadata.tables[table]
    return (
        update(t)
        .where(t.c.id == bindparam("_id"))
        .values({k: bindparam(k, type_=t.c[k].type) for k in keys})
    )


@functools.cache
def _held_by(kinds: tuple[str, ...], excluded_chunks: int) -> Any:
    """Slots of `kinds` held per job and owner, the tasks of `exclude_0..` left out."""
    return (
        select(_tasks.c.job_id, _jobs.c.owner, func.count())
        .select_from(_tasks.join(_jobs, _jobs.c.id == _tasks.c.job_id))
        .where(
            _tasks.c.holds_slot.is_(True),
            _tasks.c.kind.in_(kinds),
            *(_tasks.c.id.not_in(_many(f"exclude_{i}")) for i in range(excluded_chunks)),
        )
        .group_by(_tasks.c.job_id, _jobs.c.owner)
    )


@functools.cache
def _held_count(kinds: tuple[str, ...]) -> Any:
    return (
        select(func.count())
        .select_from(_tasks)
        .where(_tasks.c.holds_slot.is_(True), _tasks.c.kind.in_(kinds))
    )


@functools.cache
def _stats_upsert(dialect: str) -> Any:
    """Fold a model's attempt durations into its moving average (see `_moving_averages`)."""
    upsert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        upsert(_stats)
        .values(
            name=bindparam("_model"),
            mean_seconds=bindparam("_fresh", type_=Double),
            samples=bindparam("_samples", type_=Integer),
        )
        .on_conflict_do_update(
            index_elements=["name"],
            set_={
                "mean_seconds": _stats.c.mean_seconds * bindparam("_decay", type_=Double)
                + bindparam("_added", type_=Double),
                "samples": _stats.c.samples + bindparam("_samples", type_=Integer),
            },
        )
    )


class Connection(Protocol):
    """What a batch needs of its connection: an `AsyncConnection`, or a synchronous one on the
    writer thread (common.store.threaded.SyncConnection)."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: Any, parameters: Any = None) -> Any: ...

    async def scalar(self, statement: Any, parameters: Any = None) -> Any: ...

    async def scalars(self, statement: Any, parameters: Any = None) -> Any: ...


class Batch:
    """One application of a list of change sets; `run` returns the messages owed."""

    def __init__(
        self,
        conn: Connection,
        now: float,
        timings: StoreTimings,
        kinds: KindRegistry,
        *,
        policy: BudgetPolicy | None = None,
        budget_limits: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.conn = conn
        self.kinds = kinds
        self.state = BatchState(now, timings, kinds, policy)
        # Provider -> configured (requests, tokens) per minute, for budget rows made here.
        self.budget_limits = budget_limits or {}
        self.locking = conn.dialect.name == "postgresql"

    @property
    def notes(self) -> dict[str, int]:
        return self.state.notes

    async def run(self, change_sets: Sequence[ChangeSet]) -> list[Send]:
        await self._load(change_sets)
        for cs in change_sets:
            self.state.apply(cs)
        await self._grant()
        await self._flush_tasks()
        await self._flush_slots()
        await self._flush_budgets()
        finishing = self.state.advance_jobs()
        outputs = {job_id: await self._outputs(job_id) for job_id in finishing}
        await self._flush_jobs(self.state.finish_jobs(outputs))
        return self.state.sends

    # Loading (and locking) ------------------------------------------------------------------

    def _select(self, statement: tuple[Any, Any]) -> Any:
        """The statement as it is, or locking its rows (PostgreSQL)."""
        return statement[1] if self.locking else statement[0]

    async def _load(self, change_sets: Sequence[ChangeSet]) -> None:
        pools = self.state.pools_named(change_sets)
        if pools:
            rows = await self.conn.execute(self._select(_SLOTS), {"names": sorted(pools)})
            self.state.slots = {r.name: Slots(r.in_flight, r.capacity) for r in rows}
        await self._load_budgets(self.state.budgets_named(change_sets))
        job_ids = sorted(set().union(*(cs.job_ids for cs in change_sets)))
        await self._load_jobs(job_ids)
        if any(job.cap > 0 for job in self.state.jobs.values()):
            for pool in self.state.slots:  # starts must see the capped jobs' shares
                await self._load_shares(pool)
        changed = {
            op.seen.task_id for cs in change_sets for op in cs.ops if isinstance(op, TaskChange)
        }
        for chunk in _chunks(sorted(changed)):
            await self._load_tasks(_TASKS, {"ids": chunk})
        for cs in change_sets:
            for op in cs.ops:
                if isinstance(op, JobTasksChange):
                    key = (op.job_id, op.kind, op.old)
                    if key not in self.state.groups:
                        self.state.groups[key] = await self._load_tasks(
                            _TASK_GROUP, {"job_id": op.job_id, "kind": op.kind, "status": op.old}
                        )

    async def _load_jobs(self, job_ids: Iterable[str]) -> None:
        missing = sorted(j for j in job_ids if j not in self.state.jobs)
        for chunk in _chunks(missing):
            rows = await self.conn.execute(self._select(_JOBS), {"ids": chunk})
            for r in rows:
                self.state.add_job(
                    LiveJob(
                        r.id,
                        r.kind,
                        JobStatus(r.status),
                        r.open_tasks,
                        r.last_seq,
                        r.cancel_requested,
                        r.created_at,
                        r.owner,
                        r.max_concurrency,
                        r.slot_at,
                    )
                )
                for shares in self.state.shares.values():
                    shares.caps[r.id] = r.max_concurrency
                    shares.seen(r.id, r.owner, r.slot_at)

    async def _load_shares(self, pool: str) -> None:
        """Slots of `pool` held per job and owner (the fair-share and cap rules need them).

        The tasks this batch holds count as the batch left them so far (a slot released by an
        earlier change set is not held any more), the others as the store has them."""
        if pool in self.state.shares:
            return
        kinds = self.kinds.in_pool(pool)
        chunks = _chunks(list(self.state.tasks))
        rows = await self.conn.execute(
            _held_by(tuple(kinds), len(chunks)),
            {f"exclude_{i}": chunk for i, chunk in enumerate(chunks)},
        )
        jobs = self.state.jobs.values()
        shares = Shares({}, {}, {job.id: job.cap for job in jobs}, now=self.state.now)
        for job in jobs:
            shares.seen(job.id, job.owner, job.slot_at)
        held = [(job_id, owner, n) for job_id, owner, n in rows]
        for task in self.state.tasks.values():
            holder = self.state.jobs.get(task.job_id)
            if task.holds_slot and task.kind in kinds and holder is not None:
                held.append((task.job_id, holder.owner, 1))
        for job_id, owner, n in held:
            shares.by_job[job_id] = shares.by_job.get(job_id, 0) + n
            shares.by_owner[owner] = shares.by_owner.get(owner, 0) + n
        self.state.shares[pool] = shares

    async def _load_budgets(self, names: set[str]) -> None:
        """Lock (making them if new) the budget rows the batch spends."""
        if not names:
            return
        locked, params = self._select(_BUDGETS), {"names": sorted(names)}
        rows = list(await self.conn.execute(locked, params))
        missing = names - {r.name for r in rows}
        for name in sorted(missing):
            rpm, tpm = self.budget_limits.get(name.split(":")[0], (0, 0))
            await self.conn.execute(
                _upsert(self.conn)(_budgets)
                .values(
                    name=name, paused_until=0.0, rpm=rpm, tpm=tpm, window_start=0.0,
                    requests=0, tokens=0, retries=0, prev_requests=0, prev_retries=0,
                    checks=0, prev_checks=0, paused_at=0.0, pause_streak=0,
                )
                .on_conflict_do_nothing(index_elements=["name"])
            )  # fmt: skip
        if missing:  # made just now: read (and lock) them all again
            rows = list(await self.conn.execute(locked, params))
        for r in rows:
            self.state.budgets[r.name] = Budget(
                r.name, **{f: r._mapping[f] for f in _BUDGET_FIELDS}
            )

    async def _load_tasks(self, statement: tuple[Any, Any], params: dict[str, Any]) -> list[int]:
        found: list[int] = []
        for r in await self.conn.execute(self._select(statement), params):
            self.state.add_task(live_task(r))
            found.append(r.id)
        return found

    # Provider slots -------------------------------------------------------------------------

    async def _grant(self) -> None:
        for pool in self.state.pools_to_grant():
            kinds = self.kinds.in_pool(pool)
            if pool in self.state.rebalance:
                held = await self.conn.scalar(_held_count(tuple(kinds)))
                self.state.recount(pool, int(held or 0))
            free = self.state.free(pool)
            if free <= 0:
                continue
            await self._load_shares(pool)
            # Candidates from the store besides those this batch holds: each job's oldest
            # `free` waiting tasks (the fair-share rule picks among jobs). They are picked
            # unlocked, then locked job first, task second (the order every transaction
            # takes), and kept only if still WAITING.
            candidates = (
                await self.conn.execute(
                    slots.oldest_waiting(tuple(kinds), self.conn.dialect.name),
                    {"per_job": free, "exclude": list(self.state.tasks)},
                )
            ).all()
            picked = [task_id for task_id, _ in candidates]
            if picked:
                await self._load_jobs({job_id for _, job_id in candidates})
                await self._load_tasks(_STILL_WAITING, {"ids": picked})
            self.state.grant(pool)

    # Reading a finishing job's outcome ------------------------------------------------------

    async def _outputs(self, job_id: str) -> tuple[dict[TaskStatus, int], list[int]]:
        """A finishing job's output tasks per status, and the indices not done (a job with no
        output tasks is judged by all its tasks)."""
        output = (_tasks.c.job_id == job_id, _tasks.c.kind.in_(self.kinds.output_kinds))
        has_output = await self.conn.scalar(select(_tasks.c.id).where(*output).limit(1))
        if has_output is None:
            output = (_tasks.c.job_id == job_id, _tasks.c.id.is_not(None))
        counts = {
            TaskStatus(r[0]): r[1]
            for r in await self.conn.execute(
                select(_tasks.c.status, func.count()).where(*output).group_by(_tasks.c.status)
            )
        }
        not_done = (
            await self.conn.scalars(
                select(_tasks.c.index)
                .where(*output, _tasks.c.status != TaskStatus.SUCCEEDED)
                .order_by(_tasks.c.index)
                .limit(SHOWN_NOT_DONE + 1)
            )
        ).all()
        return counts, list(not_done)

    # Writing --------------------------------------------------------------------------------

    async def _flush_tasks(self) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for task_id, values in self.state.updates.items():
            if values:
                groups[tuple(sorted(values))].append({"_id": task_id, **values})
        for keys, params in groups.items():
            await self.conn.execute(_update_by_id(_tasks.name, keys), params)

    async def _flush_slots(self) -> None:
        for name, pool in self.state.slots.items():
            if pool.changed:
                await self.conn.execute(_SLOTS_UPDATE, {"_name": name, "_n": pool.in_flight})

    async def _flush_budgets(self) -> None:
        for budget in self.state.budgets.values():
            if budget.changed:
                values = {f"_{f}": getattr(budget, f) for f in _BUDGET_FIELDS}
                await self.conn.execute(_BUDGET_UPDATE, {"_name": budget.name, **values})
        for model, (fresh, decay, added, samples) in _moving_averages(self.state.durations):
            # One statement per model, however many of its attempts the batch saw.
            await self.conn.execute(
                _stats_upsert(self.conn.dialect.name),
                {
                    "_model": model, "_fresh": fresh, "_samples": samples, "_decay": decay,
                    "_added": added,
                },
            )  # fmt: skip

    async def _flush_jobs(self, writes: list[JobWrite]) -> None:
        rows: list[dict[str, Any]] = []
        now = self.state.now
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for w in writes:
            if w.values:
                groups[tuple(sorted(w.values))].append({"_id": w.job_id, **w.values})
            rows += [_event_row(w.job_id, w.first_seq + i, e, now) for i, e in enumerate(w.events)]
        for keys, params in groups.items():
            await self.conn.execute(_update_by_id(_jobs.name, keys), params)
        if rows:
            await self.conn.execute(_INSERT_EVENTS, rows)
        for prefix in self.state.clear_warnings:
            await self.conn.execute(
                update(_jobs).where(_jobs.c.warning.startswith(prefix)).values(warning="")
            )


def _moving_averages(
    durations: Sequence[tuple[str, float]],
) -> list[tuple[str, tuple[float, float, float, int]]]:
    """Per model, an exponential moving average (recent attempts count most) of its attempt
    durations, folded in batch order: the mean if the model has none stored yet (the first
    duration, then the others folded in), and `(decay, added)` such that folding them into a
    stored mean `m` gives `m * decay + added`; and how many durations there were."""
    folded: dict[str, tuple[float, float, float, int]] = {}
    for model, seconds in durations:
        if model not in folded:
            folded[model] = (seconds, 1 - DURATION_WEIGHT, seconds * DURATION_WEIGHT, 1)
            continue
        fresh, decay, added, samples = folded[model]
        keep = 1 - DURATION_WEIGHT
        folded[model] = (
            fresh * keep + seconds * DURATION_WEIGHT,
            decay * keep,
            added * keep + seconds * DURATION_WEIGHT,
            samples + 1,
        )
    return list(folded.items())


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


def _upsert(conn: Connection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + IN_CHUNK] for i in range(0, len(items), IN_CHUNK)]
