"""Immutable snapshots of jobs, tasks and events, and the typed parameters of each kind of job.

Code reads state as records and then records changes to it (common.domain.changes); nothing
outside the store holds a live database row. A job's `params` (what was asked) and `meta` (what
the job learned, e.g. a story's plan) are JSON in the database; `VideoParams`, `StoryParams`
and `StoryPlan` are their typed faces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    job_id: str
    index: int
    kind: str
    status: str
    priority: int
    attempt: int
    max_attempts: int
    payload: dict[str, Any]
    # The provider's request of the current attempt: its id, and whatever the adapter needs to
    # find it again (opaque to everything but the adapter).
    request_id: str | None
    handle: dict[str, Any] | None
    result: dict[str, Any] | None
    last_error: str
    error_class: str
    recoverable: bool
    # The worker process running the current attempt's provider call, while one runs.
    worker: str | None
    payload_hash: str | None
    expires_at: float | None
    history: list[Any] | None
    holds_slot: bool
    poll_chain: int
    deadline_at: float | None
    next_attempt_at: float | None
    started_at: float | None
    updated_at: float

    @classmethod
    def of(cls, row: Any) -> TaskRecord:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


@dataclass(frozen=True, slots=True, eq=False)
class EventRecord:
    """A stored event, as a job's watchers receive it. Compared (and hashed) by identity: a
    job's feed hands the same record to all its watchers, and each transport encodes it once
    (caches keyed by the record)."""

    job_id: str
    seq: int
    type: str
    task_index: int | None
    task_status: str
    job_status: str
    message: str
    error_class: str
    details: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    kind: str
    status: str
    priority: int
    owner: str
    max_concurrency: int
    deadline_at: float | None
    reuse_results: bool
    idempotency_key: str | None
    params: dict[str, Any]
    meta: dict[str, Any]
    retry_history: list[Any]
    total_tasks: int
    open_tasks: int
    last_seq: int
    cancel_requested: bool
    message: str
    warning: str
    created_at: float
    updated_at: float
    finished_at: float | None

    @classmethod
    def of(cls, row: Any) -> JobRecord:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


class _Params:
    """JSON round trip for a frozen dataclass of plain values."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def of(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class VideoParams(_Params):
    battle_arena_url: str
    model: str
    total_segments: int


@dataclass(frozen=True)
class StoryParams(_Params):
    idea: str
    total_segments: int
    segments_per_set: int
    total_sets: int
    save_to_files: bool
    output_directory: str
    model: str


@dataclass(frozen=True)
class Character:
    name: str
    role: str = ""
    description: str = ""


@dataclass(frozen=True)
class StoryPlan(_Params):
    """A story job's `meta` once its plan succeeded (empty title before)."""

    title: str = ""
    logline: str = ""
    genre: str = ""
    characters: list[dict[str, Any]] = field(default_factory=list)
    outline: list[Any] = field(default_factory=list)
    metadata_file: str = ""

    @property
    def roster(self) -> list[str]:
        return [str(c["name"]) for c in self.characters]

    @property
    def people(self) -> list[Character]:
        return [
            Character(str(c["name"]), str(c.get("role", "")), str(c.get("description", "")))
            for c in self.characters
        ]
