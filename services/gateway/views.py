"""A job as the gateway shows it: the row, its tasks, and figures derived from them.

Both edges (gRPC and the seed HTTP API) render the same `JobView`, so a field means the same
thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from common.domain.states import JobKind, JobStatus, TaskKind, TaskStatus
from common.domain.story import story_summary
from common.errors import NotFound
from common.store import queries
from common.store.records import TaskRecord, load_tasks
from common.store.tables import Job, Task


@dataclass(frozen=True)
class JobView:
    job: Job
    # Output tasks per status (segments / sets; not the story plan).
    counts: dict[TaskStatus, int]
    recoverable: bool
    # None when the caller asked to omit them.
    tasks: Sequence[TaskRecord] | None

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
        return [t for t in self.tasks or () if t.kind != TaskKind.STORY_PLAN]

    def story_summary(self) -> dict[str, Any]:
        """The seed's generation_summary and retry_info for a story job."""
        return story_summary(
            self.tasks or (),
            total_segments=self.total_segments,
            finished=self.status.terminal,
            retry_history=list(self.job.retry_history or []),
        )

    @property
    def is_story(self) -> bool:
        return self.job.kind == JobKind.STORY


async def load_view(session: AsyncSession, job_id: str, *, with_tasks: bool = True) -> JobView:
    job = await queries.get_job(session, job_id)
    if job is None:
        raise NotFound(f"job_id: no job {job_id!r}")
    tasks = await load_tasks(session, Task.job_id == job_id) if with_tasks else None
    counts = await queries.task_counts(session, job_id)
    recoverable = await queries.any_recoverable(session, job_id)
    return JobView(job=job, counts=counts, recoverable=recoverable, tasks=tasks)
