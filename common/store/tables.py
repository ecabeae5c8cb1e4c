"""The schema: jobs, their tasks (segments / story plan and sets), their events, provider slots.

Times are UTC epoch seconds (float): portable between SQLite and PostgreSQL, cheap to compare.
Schema changes go through Alembic (common/store/migrations); this module is the source of truth
those migrations are written from.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can name what they alter.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT autoincrement is not an alias of ROWID on SQLite; INTEGER there, BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # The token name that started the job ("" when the service is anonymous): other owners'
    # callers do not see it.
    owner: Mapped[str] = mapped_column(String(64), default="", server_default=text("''"))
    # Provider slots the job's tasks may hold at once (0: no cap of its own).
    max_concurrency: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # When the job must be done by (epoch seconds): attempts that could not finish before are
    # not started, and its unstarted tasks end as failed with DEADLINE_EXCEEDED.
    deadline_at: Mapped[float | None] = mapped_column(Double)
    # Take an earlier identical task's result instead of calling the provider again.
    reuse_results: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    # When one of its tasks was last handed a provider slot: among jobs holding as many slots,
    # a freed one goes to the job served longest ago (round-robin).
    slot_at: Mapped[float | None] = mapped_column(Double)
    # Unique per owner: one owner's key never finds (or reveals) another's job.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the normalised request: the same idempotency key with another request is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    # What was asked (validated request fields).
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What the job learned on the way (story: title, logline, roster, outline; files written).
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    retry_history: Mapped[list[Any]] = mapped_column(JSON, default=list)
    total_tasks: Mapped[int] = mapped_column(Integer)
    # Tasks not yet in a terminal state: the job finishes when this reaches 0 (an O(1) check on
    # every task transition instead of counting thousands of rows).
    open_tasks: Mapped[int] = mapped_column(Integer)
    # Cursor of the newest event. Bumping it locks the job row, which serialises a job's event
    # writers, so cursors commit in order and a watcher reading "after N" never skips one.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    message: Mapped[str] = mapped_column(Text, default="")
    warning: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key"),
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_finished", "finished_at"),
    )


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # Attempt currently under way (1-based). A message carries the attempt it was sent for; a
    # message for another attempt is stale and dropped.
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    max_attempts: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Provider request of the current attempt: committed right after submit, before anything
    # else, so a redelivered task resumes it instead of paying again. `handle` is whatever the
    # provider's adapter needs to find the request again (fal: its status/response/cancel
    # URLs); nothing but the adapter reads it.
    request_id: Mapped[str | None] = mapped_column(String(128))
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_error: Mapped[str] = mapped_column(Text, default="")
    error_class: Mapped[str] = mapped_column(String(24), default="")
    recoverable: Mapped[bool] = mapped_column(Boolean, default=False)
    # The worker process running the current attempt's provider call (see Worker): a task
    # caught mid-call is taken over only once that worker's lease has expired.
    worker: Mapped[str | None] = mapped_column(String(64))
    # sha256 of the task's kind and provider input (model, arguments): equal hashes are the
    # same work, whose result may be reused.
    payload_hash: Mapped[str | None] = mapped_column(String(64))
    # The job's deadline, copied so a worker needs no job read to judge an attempt.
    expires_at: Mapped[float | None] = mapped_column(Double)
    # Earlier results of a regenerated task, oldest first.
    history: Mapped[list[Any] | None] = mapped_column(JSON)
    # True while this task holds one of its provider's concurrency slots.
    holds_slot: Mapped[bool] = mapped_column(Boolean, default=False)
    # Poll messages carry the chain they belong to; re-issuing a poll starts a new chain and the
    # old one dies out, so duplicates never multiply the polling.
    poll_chain: Mapped[int] = mapped_column(Integer, default=0)
    # When the sweeper should consider this task's next message lost and re-issue it. NULL for
    # finished tasks and for tasks that wait on something else (a slot, the story plan).
    deadline_at: Mapped[float | None] = mapped_column(Double)
    next_attempt_at: Mapped[float | None] = mapped_column(Double)
    # When the current attempt's provider call (the last submit, for a polled kind) started.
    started_at: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        Index("ix_tasks_deadline", "deadline_at"),
        Index("ix_tasks_waiting", "status", "priority", "id"),
        # A freed slot's candidates: each job's oldest waiting tasks (common.store.slots).
        Index("ix_tasks_grant", "status", "kind", "job_id", "id"),
        Index("ix_tasks_request", "request_id"),
        Index("ix_tasks_holding", "holds_slot", "kind"),
        Index("ix_tasks_reuse", "payload_hash", "status"),
    )


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(24))
    task_index: Mapped[int | None] = mapped_column(Integer)
    task_status: Mapped[str] = mapped_column(String(16), default="")
    job_status: Mapped[str] = mapped_column(String(24), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    error_class: Mapped[str] = mapped_column(String(24), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (UniqueConstraint("job_id", "seq"),)


class Worker(Base):
    """A worker process's lease, renewed by its heartbeat. A worker whose lease expired is
    presumed dead: its in-flight tasks may be taken over at once instead of after their
    deadline (a live worker renews long before, so two live workers never run one attempt)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    queue: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[float] = mapped_column(Double)
    lease_until: Mapped[float] = mapped_column(Double)

    __table_args__ = (Index("ix_workers_lease", "lease_until"),)


class ProviderSlots(Base):
    """In-flight generations per provider, bounded by its concurrency limit across all workers.

    `in_flight` always equals the number of that provider's tasks with holds_slot set; both change
    in the same transaction. Updating the row also serialises slot decisions between workers.
    """

    __tablename__ = "provider_slots"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    # The provider's concurrency limit, written by the workers from their settings at start, so
    # any process that frees a slot (a worker, or the gateway cancelling a job) can hand it on.
    capacity: Mapped[int] = mapped_column(Integer)


class ProviderBudget(Base):
    """A provider's (and model's) shared budgets, one row per `provider:model`: a pause every
    worker honours (after a 429), requests and tokens per minute, and the calls and retries of
    the current and previous minute (the retry budget). Changed in the same transactions as the
    task starts and failures that spend them."""

    __tablename__ = "provider_budgets"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    paused_until: Mapped[float] = mapped_column(Double, default=0.0)
    # Per minute; 0: no limit (configured, or learned from the provider's headers).
    rpm: Mapped[int] = mapped_column(Integer, default=0)
    tpm: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[float] = mapped_column(Double, default=0.0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    prev_requests: Mapped[int] = mapped_column(Integer, default=0)
    prev_retries: Mapped[int] = mapped_column(Integer, default=0)
    # Calls besides starts (status checks, results), this minute and the last: the retry budget
    # weighs retries against every call, the per-minute request budget only limits starts.
    checks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    prev_checks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the running pause began: a submit accepted after it ends the pause.
    paused_at: Mapped[float] = mapped_column(Double, default=0.0, server_default="0")
    # Pauses in a row with no call accepted since: how held starts are released.
    pause_streak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ModelStats(Base):
    """How long a model's successful attempts take (a moving average), to judge deadlines."""

    __tablename__ = "model_stats"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    mean_seconds: Mapped[float] = mapped_column(Double)
    samples: Mapped[int] = mapped_column(Integer)
