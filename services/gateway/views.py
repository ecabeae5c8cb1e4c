"""A job as the gateway shows it: the record, its tasks, and figures derived from them.

Both edges (gRPC and the seed HTTP API) render the same `JobView`, so a field means the same
thing everywhere. Views of many jobs are loaded together: three queries per page, whatever its
size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.kinds import KindRegistry
from common.domain.records import JobRecord, StoryParams, StoryPlan, TaskRecord, VideoParams
from common.domain.states import JobKind, JobStatus, TaskStatus
from common.domain.story import story_summary
from common.errors import NotFound
from common.store import queries
from common.store.records import load_tasks
from common.store.tables import Task


@dataclass(frozen=True)
class JobView:
    job: JobRecord
    # Output tasks per status (segments / sets; not the story plan).
    counts: dict[TaskStatus, int]
    recoverable: bool
    # None when the caller asked to omit them.
    tasks: Sequence[TaskRecord] | None
    output_kinds: frozenset[str] = frozenset()

    @property
    def status(self) -> JobStatus:
        return JobStatus(self.job.status)

    @property
    def total_tasks(self) -> int:
        return sum(self.counts.values())

    @property
    def finished_tasks(self) -> int:
        return sum(n for s, n in self.counts.items() if s.terminal)

    @property
    def succeeded(self) -> int:
        return self.counts.get(TaskStatus.SUCCEEDED, 0)

    @property
    def failed(self) -> int:
        return self.counts.get(TaskStatus.FAILED, 0)

    @property
    def total_segments(self) -> int:
        return int(self.job.params.get("total_segments", 0))

    @property
    def output_tasks(self) -> list[TaskRecord]:
        return [t for t in self.tasks or () if t.kind in self.output_kinds]

    @property
    def is_story(self) -> bool:
        return self.job.kind == JobKind.STORY

    @property
    def video(self) -> VideoParams:
        return VideoParams.of(self.job.params)

    @property
    def story(self) -> StoryParams:
        return StoryParams.of(self.job.params)

    @property
    def plan(self) -> StoryPlan:
        return StoryPlan.of(self.job.meta or {})

    def story_summary(self) -> dict[str, Any]:
        """The seed's generation_summary and retry_info for a story job."""
        return story_summary(
            self.tasks or (),
            total_segments=self.total_segments,
            finished=self.status.terminal,
            retry_history=list(self.job.retry_history or []),
        )


async def load_views(
    session: AsyncSession,
    jobs: Sequence[JobRecord],
    kinds: KindRegistry,
    *,
    with_tasks: bool = False,
) -> list[JobView]:
    """Views of `jobs` (tasks only with `with_tasks`), in three queries for them all."""
    ids = [j.id for j in jobs]
    counts = await queries.task_counts(session, ids, kinds.output_kinds)
    recoverable = await queries.recoverable_jobs(session, ids)
    tasks: dict[str, list[TaskRecord]] = {}
    if with_tasks:
        for task in await load_tasks(session, Task.job_id.in_(ids)):
            tasks.setdefault(task.job_id, []).append(task)
    output = frozenset(kinds.output_kinds)
    return [
        JobView(
            job=j,
            counts=counts[j.id],
            recoverable=j.id in recoverable,
            tasks=tasks.get(j.id, []) if with_tasks else None,
            output_kinds=output,
        )
        for j in jobs
    ]


async def load_view(
    session: AsyncSession, job_id: str, kinds: KindRegistry, *, with_tasks: bool = True
) -> JobView:
    job = await queries.get_job(session, job_id)
    if job is None:
        raise NotFound(f"job_id: no job {job_id!r}")
    (view,) = await load_views(session, [job], kinds, with_tasks=with_tasks)
    return view
